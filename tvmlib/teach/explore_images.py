"""The sampling explorer on the committed Fashion-MNIST DiT-T/2 models (the CMT run's FM
teacher, TVM from scratch and CMT -> TVM), with the classifier Frechet distance to the test
split as the quality measure:

* ``explore_images(method, steps, seed, label, n)``: ``n`` samples of one model, a grid of them
  (one row per class) and their FD / NFE;
* ``compare_images(settings, ...)``: the FM teacher at 16 NFE next to TVM from scratch and
  CMT -> TVM at 1 and 2 jumps, from the same noise, one row per class;
* ``make_image_explorer()``: controls (model, steps, seed, class) wired to ``explore_images``.

Models come from ``tvmlib.evaluation.pretrained.load_fashion`` and are sampled with
``tvmlib.core.solvers.sample``.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from tvmlib.core.solvers import Samples, sample
from tvmlib.data.images import FASHION_CLASSES, load_mnist
from tvmlib.evaluation import pretrained as P
from tvmlib.evaluation.classifier import classifier_fd, classifier_features, real_stats
from tvmlib.evaluation.metrics import feature_stats
from tvmlib.teach.explore2d import cached_load

IMAGE_LABELS = {"fm_teacher": "FM teacher", "tvm_scratch": "TVM from scratch",
                "tvm_cmt": "CMT -> TVM"}
# The default comparison: the teacher with its CMT sampler (16 NFE) against 1 and 2 jumps.
IMAGE_COMPARISON = (("fm_teacher", 16), ("tvm_scratch", 1), ("tvm_scratch", 2),
                    ("tvm_cmt", 1), ("tvm_cmt", 2))
IMAGE_N = 200  # samples per live FD: about 5 s per NFE on 2 CPU cores (DiT-T/2, fp32)
FD_DATASET = P.FASHION

_IMAGE_MODELS: dict[tuple[str, float], nn.Module] = {}
_IMAGE_SAMPLES: dict[tuple, Samples] = {}  # one entry per setting: revisits are free
_MAX_CACHED_SETTINGS = 64  # the oldest goes first (about 0.8 MB per 200 images)
_CLASS_STATS: dict[int, tuple] = {}


def get_image_model(method: str, folder: str | Path | None = None) -> nn.Module:
    """``load_fashion`` with an in-memory cache keyed by file path and modification time."""
    return cached_load(_IMAGE_MODELS, _path(method, folder),
                       lambda: P.load_fashion(method, folder))


def _path(method: str, folder: str | Path | None) -> Path:
    return Path(folder or P.checkpoints_dir()) / P.fashion_model(method).file


def _check_image_setting(method: str, steps: int, label: int | None, n: int) -> None:
    P.check_steps(method, steps)  # also rejects an unknown name, listing the valid ones
    if label is not None and not 0 <= label < P.FASHION_CLASSES_K:
        raise ValueError(f"label must be in 0..{P.FASHION_CLASSES_K - 1} or None (all classes), "
                         f"got {label}")
    if n < 2:
        raise ValueError(f"n must be >= 2 (a Frechet distance needs a covariance), got {n}")


def image_setting(n: int, seed: int, label: int | None = None) -> tuple[Tensor, Tensor]:
    """Noise (n, 1, 32, 32) from ``seed`` and labels (n,): all ``label``, or balanced
    (0, 1, ..., 9, 0, 1, ...) when ``label`` is None. The same for every model."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 32, 32, generator=g)
    y = (torch.arange(n) % P.FASHION_CLASSES_K if label is None
         else torch.full((n,), label, dtype=torch.long))
    return noise, y


def sample_images(method: str, steps: int, seed: int = 0, label: int | None = None,
                  n: int = IMAGE_N, folder: str | Path | None = None) -> Samples:
    """``n`` samples (clamped to [-1, 1]) of the committed ``method`` with ``steps`` steps from
    ``image_setting(n, seed, label)``, cached per setting (a copy is returned)."""
    _check_image_setting(method, steps, label, n)
    path = _path(method, folder)
    key = (str(path), path.stat().st_mtime if path.exists() else -1.0, method, steps, seed,
           label, n)
    if key not in _IMAGE_SAMPLES:
        noise, y = image_setting(n, seed, label)
        spec = P.FASHION_SAMPLERS[P.fashion_model(method).kind]
        out = sample(get_image_model(method, folder), noise, steps, y=y, batch_size=250, **spec)
        _IMAGE_SAMPLES[key] = Samples(out.x.clamp(-1, 1), out.nfe, out.times)
        while len(_IMAGE_SAMPLES) > _MAX_CACHED_SETTINGS:
            del _IMAGE_SAMPLES[next(iter(_IMAGE_SAMPLES))]
    out = _IMAGE_SAMPLES[key]
    return Samples(out.x.clone(), out.nfe, out.times)


def image_reference(label: int | None = None) -> tuple:
    """(mu, sigma) of the classifier features of the Fashion-MNIST test split: all 10k images,
    or only those of class ``label`` (1000), cached."""
    if label is None:
        return real_stats(FD_DATASET, "test")
    if label not in _CLASS_STATS:
        x, y = load_mnist(FD_DATASET, "test")
        _CLASS_STATS[label] = feature_stats(classifier_features(x[y == label], FD_DATASET))
    return _CLASS_STATS[label]


def image_fd(x: Tensor, label: int | None = None) -> float:
    """Classifier Frechet distance (``tvmlib.evaluation.classifier.classifier_fd``) of images
    (N, 1, 32, 32) to the test split, or to its class ``label``. Biased upwards at small N:
    compare values at the same N (and see ``image_fd_floor``)."""
    return classifier_fd(x, image_reference(label), FD_DATASET)


def image_fd_floor(n: int, seed: int = 0, label: int | None = None
                   ) -> tuple[float, Tensor, Tensor]:
    """(FD, images, labels) of ``n`` real *training* images with the labels of
    ``image_setting(n, seed, label)`` (a seeded random choice per class) against the same
    reference as ``image_fd``: what a perfect sampler scores at this n (the finite-sample
    floor)."""
    x, y_all = load_mnist(FD_DATASET, "train")
    _, y = image_setting(n, seed, label)
    g = torch.Generator().manual_seed(seed)
    idx = torch.empty(n, dtype=torch.long)
    for c in y.unique().tolist():
        where = (y == c).nonzero().squeeze(1)
        pool = (y_all == c).nonzero().squeeze(1)
        idx[where] = pool[torch.randperm(len(pool), generator=g)[:len(where)]]
    return image_fd(x[idx], label), x[idx], y


def class_rows(x: Tensor, y: Tensor, per_row: int) -> tuple[Tensor, list[str]]:
    """Arrange images (N, 1, 32, 32) with labels (N,) in rows of ``per_row``: one row per class
    (its first images) when there are several classes, else up to 10 rows of the one class.
    Returns the grid (H, W) in [-1, 1] with white separators, and the row names."""
    classes = y.unique().tolist()
    if len(classes) > 1:
        per_row = min(per_row, *(int((y == c).sum()) for c in classes))
        rows = torch.cat([x[y == c][:per_row] for c in classes])
        names = [FASHION_CLASSES[c] for c in classes]
    else:
        per_row = min(per_row, len(x))
        rows = x[:min(len(x), 10 * per_row) // per_row * per_row]
        names = [FASHION_CLASSES[classes[0]]] * (len(rows) // per_row)
    tiles = torch.nn.functional.pad(rows[:, 0], (1, 1, 1, 1), value=1.0)  # (R * C, 34, 34)
    grid = tiles.reshape(len(names), per_row, 34, 34).permute(0, 2, 1, 3)  # (R, 34, C, 34)
    return grid.reshape(34 * len(names), 34 * per_row), names


def _show_rows(ax, x: Tensor, y: Tensor, per_row: int, title: str, row_names: bool) -> None:
    grid, names = class_rows(x, y, per_row)
    ax.imshow(grid.numpy(), cmap="gray", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([34 * i + 17 for i in range(len(names))] if row_names else [])
    if row_names:
        ax.set_yticklabels(names, fontsize=8)


def _image_title(method: str, steps: int, nfe: int, fd: float) -> str:
    what = "step" if P.fashion_model(method).kind == "fm" else "jump"
    return f"{IMAGE_LABELS[method]}\n{steps} {what}{'s' * (steps > 1)}, {nfe} NFE\nFD {fd:.1f}"


def explore_images(method: str, steps: int, seed: int = 0, label: int | None = None,
                   n: int = IMAGE_N, per_row: int = 10, folder: str | Path | None = None
                   ) -> tuple[Figure, dict]:
    """``n`` samples of the committed Fashion-MNIST model ``method`` ("fm_teacher": 1-128
    DPM-Solver++(2M) steps; "tvm_scratch", "tvm_cmt": 1-16 flow-map jumps) for class ``label``
    (None: balanced over all classes), from ``image_setting(n, seed, label)``.

    Returns a Figure (one panel: a row of ``per_row`` samples per class, or up to 10 rows of
    the one class) and a dict with ``fd`` (``image_fd(samples, label)``: to the test split, or
    to its class ``label``), ``nfe``, the setting, ``samples`` (n, 1, 32, 32) and ``labels``.
    """
    out = sample_images(method, steps, seed, label, n, folder)
    _, y = image_setting(n, seed, label)
    fd = image_fd(out.x, label)
    values = {"method": method, "steps": steps, "seed": seed, "label": label, "n": n,
              "nfe": out.nfe, "fd": fd, "samples": out.x, "labels": y}
    rows = len(class_rows(out.x, y, per_row)[1])
    fig, ax = plt.subplots(figsize=(0.42 * min(per_row, n) + 1.6, 0.42 * rows + 1.0))
    title = _image_title(method, steps, out.nfe, fd).replace("\nFD", ": FD")
    reference = "test split" if label is None else f"test {FASHION_CLASSES[label]}"
    _show_rows(ax, out.x, y, per_row, f"{title} (n={n} vs {reference})", True)
    fig.tight_layout()
    return fig, values


def compare_images(settings: tuple[tuple[str, int], ...] = IMAGE_COMPARISON, seed: int = 0,
                   n: int = IMAGE_N, per_class: int = 4, show_data: bool = True,
                   folder: str | Path | None = None) -> tuple[Figure, dict]:
    """Models side by side (one panel per (method, steps) in ``settings``), from the same noise
    and labels, one row of ``per_class`` samples per class; FD of all ``n`` samples (balanced
    classes) to the test split in the titles. With ``show_data`` the first panel holds real
    training images and their FD (``image_fd_floor``). Returns the Figure and
    {method: {str(steps): {"nfe", "fd"}}} (plus "data": {"fd"} with ``show_data``)."""
    panels = len(settings) + int(show_data)
    width = max(0.42 * per_class, 1.9)
    fig, axes = plt.subplots(1, panels, figsize=(width * panels + 1.2, 0.42 * 10 + 1.4),
                             squeeze=False)
    axes = list(axes[0])
    results: dict[str, dict] = {}
    if show_data:
        fd, x, y = image_fd_floor(n, seed)
        results["data"] = {"fd": fd}
        _show_rows(axes.pop(0), x, y, per_class, f"data\n(training images)\nFD {fd:.1f}", True)
    for i, (method, steps) in enumerate(settings):
        single, v = explore_images(method, steps, seed, n=n, per_row=per_class, folder=folder)
        plt.close(single)
        results.setdefault(method, {})[str(steps)] = {"nfe": v["nfe"], "fd": v["fd"]}
        _show_rows(axes[i], v["samples"], v["labels"], per_class,
                   _image_title(method, steps, v["nfe"], v["fd"]), i == 0 and not show_data)
    fig.suptitle(f"Fashion-MNIST, same noise in every panel; FD of {n} samples to the test "
                 "split", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))  # leave room for the suptitle
    return fig, results


def figure_jpeg(fig: Figure, dpi: int = 100, quality: int = 85) -> bytes:
    """``fig`` as JPEG bytes: photo-like sample grids take about a third of a PNG's bytes,
    which keeps notebooks with stored outputs small."""
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=dpi, bbox_inches="tight", pil_kwargs={"quality": quality})
    return buf.getvalue()


@dataclass
class ImageExplorer:
    """The image explorer's widgets; ``update()`` re-renders from the controls' current values.
    Displayed, it is the widget plus, for viewers without a widget frontend, a JPEG of the last
    rendering (a frontend that renders widgets shows the widget instead)."""

    controls: dict
    output: object
    widget: object
    n: int = IMAGE_N
    folder: str | Path | None = None
    last: dict = field(default_factory=dict)
    jpeg: bytes = b""
    status: object = None  # a text widget: the FD and NFE of the current view

    def status_text(self) -> str:
        """What ``status`` shows for the current view, e.g.
        "CMT -> TVM, 2 jumps: NFE 2, FD 87.3 (200 samples vs the test split)"."""
        v = self.last
        what = "step" if P.fashion_model(v["method"]).kind == "fm" else "jump"
        against = "the test split" if v["label"] is None else \
            f"test {FASHION_CLASSES[v['label']]}"
        return (f"{IMAGE_LABELS[v['method']]}, {v['steps']} {what}{'s' * (v['steps'] > 1)}: "
                f"NFE {v['nfe']}, FD {v['fd']:.1f} ({v['n']} samples vs {against})")

    def setting(self) -> dict:
        c = self.controls
        return {"method": c["method"].value, "steps": c["steps"].value,
                "seed": c["seed"].value,
                "label": c["label"].value if c["label"].value >= 0 else None}

    def update(self) -> dict:
        from IPython.display import Image, display

        fig, values = explore_images(**self.setting(), n=self.n, folder=self.folder)
        self.last, self.jpeg = values, figure_jpeg(fig)
        plt.close(fig)
        if self.status is not None:
            self.status.value = self.status_text()
        self.output.clear_output(wait=True)
        with self.output:
            display(Image(data=self.jpeg, format="jpeg"))
        return values

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
        if self.jpeg:
            bundle = {**bundle, "image/jpeg": base64.b64encode(self.jpeg).decode()}
        return bundle


def make_image_explorer(method: str = "tvm_cmt", steps: int = 1, seed: int = 0,
                        label: int | None = None, n: int = IMAGE_N,
                        folder: str | Path | None = None, render: bool = True) -> ImageExplorer:
    """Controls wired to ``explore_images``: model, steps (1-128 DPM-Solver++(2M) steps for the
    FM teacher, 1-16 jumps for the TVM models), seed and class. Each change samples ``n``
    images once (about 5 s per NFE for 200 images on 2 CPU cores); the steps slider updates on
    release only."""
    import ipywidgets as W

    c = {
        "method": W.Dropdown(options=[(IMAGE_LABELS[m], m) for m in P.FASHION_MODELS],
                             value=method, description="model"),
        "steps": W.IntSlider(value=steps, min=1, max=P.fashion_model(method).max_steps,
                             description="steps",
                             continuous_update=False),
        "seed": W.IntText(value=seed, description="seed"),
        "label": W.Dropdown(options=[("all", -1)] + [(name, k) for k, name in
                                                     enumerate(FASHION_CLASSES)],
                            value=-1 if label is None else label, description="class"),
    }
    output, status = W.Output(), W.Label()
    status.add_class("tvmlib-explorer-status")  # how a browser test finds it
    box = W.VBox([W.HBox([c["method"], c["steps"]]), W.HBox([c["seed"], c["label"]]), status,
                  output])
    ex = ImageExplorer(c, output, box, n, folder, status=status)
    busy = {"on": False}  # one render per user change, not one per linked control update

    def on_change(_=None) -> None:
        if busy["on"]:
            return
        busy["on"] = True
        try:
            c["steps"].max = P.fashion_model(c["method"].value).max_steps
        finally:
            busy["on"] = False
        ex.update()

    for w in c.values():
        w.observe(on_change, names="value")
    if render:
        ex.update()
    return ex
