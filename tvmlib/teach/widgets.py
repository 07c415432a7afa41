"""The sampling explorer: how many steps (NFE) each method needs, on the committed 2D models
and on the committed Fashion-MNIST DiT-T/2 models.

All logic is in plain functions that return a matplotlib Figure and a dict of values, so a
headless run (papermill, nbval, pytest) computes exactly what the widgets show:

* ``explore_2d(method, steps, seed, ...)``: one setting; samples over the data, trajectories,
  and W2 / NFE;
* ``compare_grid(dataset, ...)``: methods side by side at 1, 2, 4, 8 steps, W2 in the titles;
* ``make_explorer()``: ipywidgets controls (data set, method, steps, seed, class, guidance) wired
  to ``explore_2d``. Widget callbacks never fire headless; ``Explorer.update()`` renders once.

Images (Fashion-MNIST, 32x32, quality as the classifier Frechet distance to the test split):

* ``explore_images(method, steps, seed, label, n)``: ``n`` samples of one model, a grid of them
  (one row per class) and their FD / NFE;
* ``compare_images(settings, ...)``: the FM teacher at 16 NFE next to TVM from scratch and
  CMT -> TVM at 1 and 2 jumps, from the same noise, one row per class;
* ``make_image_explorer()``: controls (model, steps, seed, class) wired to ``explore_images``.

Models come from ``tvmlib.checkpoints2d.load_2d`` and ``tvmlib.checkpoints_fashion.load_fashion``
(sha256-checked files under ``data/checkpoints/``).
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

from tvmlib import checkpoints_fashion as ckf
from tvmlib.utils import viz
from tvmlib.checkpoints2d import (
    MODELS,
    TVM_GUIDANCE_RANGE,
    checkpoint_path,
    class_matched_data,
    default_guidance,
    load_2d,
    sample_2d,
)
from tvmlib.data.images import FASHION_CLASSES, load_mnist
from tvmlib.data.toy2d import num_classes, sample_toy2d
from tvmlib.metrics import classifier_fd, classifier_features, feature_stats, real_stats, w2
from tvmlib.core.solvers import Samples

MAX_STEPS = {"fm": 128, "meanflow": 16, "tvm": 16}  # ODE steps for FM, jumps for flow maps
LABELS = {"fm": "FM (Euler)", "meanflow": "MeanFlow", "tvm": "TVM"}
REF_SEED = 12_345  # the reference data do not change with the sampling seed

_CACHE: dict[tuple[str, float], nn.Module] = {}


def methods_for(dataset: str) -> list[str]:
    """Methods with a committed model on ``dataset``."""
    found = [m for m, d in MODELS if d == dataset]
    if not found:
        raise ValueError(f"no committed 2D models on {dataset!r}; data sets: "
                         f"{', '.join(sorted({d for _, d in MODELS}))}")
    return found


def get_model(method: str, dataset: str, folder: str | Path | None = None) -> nn.Module:
    """``load_2d`` with an in-memory cache keyed by file path and modification time."""
    path = checkpoint_path(method, dataset, folder)
    key = (str(path), path.stat().st_mtime if path.exists() else -1.0)
    if key not in _CACHE:
        _CACHE[key] = load_2d(method, dataset, folder)
    return _CACHE[key]


def _check_setting(method: str, dataset: str, steps: int, label: int | None,
                   guidance: float | None) -> None:
    if method not in methods_for(dataset):
        raise ValueError(f"no {method!r} model on {dataset!r}; valid: "
                         f"{', '.join(methods_for(dataset))}")
    if not 1 <= steps <= MAX_STEPS[method]:
        raise ValueError(f"steps for {method} must be in 1..{MAX_STEPS[method]}, got {steps}")
    K = num_classes(dataset)
    if not K and (label is not None or guidance is not None):
        raise ValueError(f"{dataset} is unconditional: give label=None and guidance=None")
    if label is not None and not 0 <= label < K:
        raise ValueError(f"label must be in 0..{K - 1} or None (all classes), got {label}")
    if guidance is not None and method == "tvm":
        lo, hi = TVM_GUIDANCE_RANGE
        if not lo <= guidance <= hi:
            raise ValueError(f"the TVM model was trained for guidance w in [{lo}, {hi}], "
                             f"got {guidance}")
    if guidance is not None and guidance <= 0:
        raise ValueError(f"guidance must be > 0, got {guidance}")


def setting_data(dataset: str, n: int, seed: int, label: int | None = None
                 ) -> tuple[Tensor, Tensor | None, Tensor]:
    """(noise (n, 2) from ``seed``, labels (n,) or None, reference data (n, 2)).

    Labels: all equal to ``label``, or uniform when ``label`` is None. The reference is fresh
    data (class-matched to the labels) from a fixed seed, so W2 changes only with the samples.
    """
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 2, generator=g)
    K = num_classes(dataset)
    g_ref = torch.Generator().manual_seed(REF_SEED + (0 if label is None else label + 1))
    if not K:
        return noise, None, sample_toy2d(dataset, n, g_ref)[0]
    y = (torch.full((n,), label) if label is not None
         else torch.randint(0, K, (n,), generator=g))
    return noise, y, class_matched_data(dataset, y, g_ref)


def data_floor(dataset: str, n: int, seed: int = 0, label: int | None = None) -> float:
    """W2 between the reference of ``setting_data`` and a second, independent data set with
    the same labels: the value the metric cannot go below at this n (finite-sample floor)."""
    _, y, ref = setting_data(dataset, n, seed, label)
    g = torch.Generator().manual_seed(REF_SEED - 1)
    other = sample_toy2d(dataset, n, g)[0] if y is None else class_matched_data(dataset, y, g)
    return w2(ref, other)


def explore_2d(method: str, steps: int, seed: int = 0, dataset: str = "checkerboard",
               label: int | None = None, guidance: float | None = None, n: int = 1000,
               n_traj: int = 60, folder: str | Path | None = None) -> tuple[Figure, dict]:
    """Sample ``n`` points with ``steps`` steps of the committed ``method`` model on ``dataset``.

    Returns a Figure with two axes (samples over the reference data; the first ``n_traj``
    trajectories) and a dict with ``w2`` (exact W2 to the reference, ``tvmlib.metrics.w2``),
    ``nfe`` (network evaluations: ``steps``, or 2 ``steps`` for FM with CFG), the setting,
    and the ``samples`` and ``reference`` tensors (n, 2). ``guidance`` None means the
    default (1.5) on class-conditional data.
    """
    K = num_classes(dataset)
    if guidance is None and K:
        guidance = default_guidance(method, dataset)
    _check_setting(method, dataset, steps, label, guidance)
    net = get_model(method, dataset, folder)
    noise, y, ref = setting_data(dataset, n, seed, label)
    out = sample_2d(method, net, noise, steps, y, guidance, return_trajectory=True)
    values = {"method": method, "dataset": dataset, "steps": steps, "seed": seed,
              "label": label, "guidance": guidance, "n": n, "nfe": out.nfe,
              "w2": w2(out.x, ref), "samples": out.x, "reference": ref}

    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.8))
    viz.scatter(axes[0], ref, color="0.8", s=2.0)
    viz.scatter(axes[0], out.x, c=y if label is None else None, s=2.0,
                title=f"{LABELS[method]}, {steps} step{'s' * (steps > 1)}, {out.nfe} NFE: "
                      f"W2 {values['w2']:.3f}")
    viz.scatter(axes[1], ref, color="0.85", s=2.0)
    viz.trajectories(axes[1], out.trajectory, n=n_traj,
                     title="trajectories" + (f" (class {label}, w = {guidance})"
                                             if K and label is not None else ""))
    fig.tight_layout()
    return fig, values


def compare_grid(dataset: str, methods: list[str] | None = None,
                 steps: tuple[int, ...] = (1, 2, 4, 8), seed: int = 0, n: int = 1000,
                 folder: str | Path | None = None) -> tuple[Figure, dict]:
    """Methods (rows) side by side at each number of steps (columns), from the same noise.

    The first column shows the reference data. Returns the Figure, with
    len(methods) x (len(steps) + 1) axes, and {method: {str(steps): {"nfe", "w2"}}}.
    """
    methods = methods or methods_for(dataset)
    fig, axes = viz.grid(len(methods), len(steps) + 1, size=2.0)
    results: dict[str, dict] = {}
    colours = setting_data(dataset, n, seed)[1]  # labels (n,) on class-conditional data
    for r, method in enumerate(methods):
        results[method] = {}
        for c, k in enumerate(steps, start=1):
            single, v = explore_2d(method, k, seed, dataset, n=n, folder=folder, n_traj=0)
            plt.close(single)
            results[method][str(k)] = {"nfe": v["nfe"], "w2": v["w2"]}
            viz.scatter(axes[r, c], v["samples"], c=colours,
                        title=f"{LABELS[method]} {k} step{'s' * (k > 1)}\n"
                              f"{v['nfe']} NFE, W2 {v['w2']:.3f}")
            if c == 1:
                ref = v["reference"]
        viz.scatter(axes[r, 0], ref, color="0.4", title=f"{dataset} data" if r == 0 else None)
        axes[r, 0].set_ylabel(LABELS[method], fontsize=9)
    fig.tight_layout()
    return fig, results


# ---- the widget front end ----------------------------------------------------------------------

@dataclass
class Explorer:
    """The explorer's widgets. Display ``explorer.widget`` (or the Explorer itself) in Jupyter;
    ``update()`` re-renders from the controls' current values (callbacks call it too)."""

    controls: dict
    output: object
    widget: object
    n: int = 1000
    folder: str | Path | None = None
    last: dict = field(default_factory=dict)

    def setting(self) -> dict:
        c = self.controls
        dataset = c["dataset"].value
        conditional = num_classes(dataset) > 0
        return {"method": c["method"].value, "steps": c["steps"].value,
                "seed": c["seed"].value, "dataset": dataset,
                "label": (c["label"].value if c["label"].value >= 0 else None)
                if conditional else None,
                "guidance": c["guidance"].value if conditional else None}

    def update(self) -> dict:
        from IPython.display import display

        fig, values = explore_2d(**self.setting(), n=self.n, folder=self.folder)
        self.last = values
        self.output.clear_output(wait=True)
        with self.output:
            display(fig)
        plt.close(fig)
        return values

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def make_explorer(dataset: str = "checkerboard", method: str = "tvm", steps: int = 1,
                  seed: int = 0, n: int = 1000, folder: str | Path | None = None,
                  render: bool = True) -> Explorer:
    """Controls wired to ``explore_2d``: data set, method, steps (1-16 jumps for flow maps,
    1-128 Euler steps for FM), seed, class and guidance scale (class-conditional data only)."""
    import ipywidgets as W

    c = {
        "dataset": W.Dropdown(options=sorted({d for _, d in MODELS}), value=dataset,
                              description="data"),
        "method": W.Dropdown(options=methods_for(dataset), value=method, description="method"),
        "steps": W.IntSlider(value=steps, min=1, max=MAX_STEPS[method], description="steps"),
        "seed": W.IntText(value=seed, description="seed"),
        "label": W.Dropdown(options=[("all", -1)] + [(str(k), k) for k in range(8)], value=-1,
                            description="class"),
        "guidance": W.FloatSlider(value=1.5, min=TVM_GUIDANCE_RANGE[0],
                                  max=TVM_GUIDANCE_RANGE[1], step=0.1, description="guidance"),
    }
    output = W.Output()
    box = W.VBox([W.HBox([c["dataset"], c["method"], c["steps"]]),
                  W.HBox([c["seed"], c["label"], c["guidance"]]), output])
    ex = Explorer(c, output, box, n, folder)
    busy = {"on": False}  # one render per user change, not one per linked control update

    def sync_controls() -> None:
        ds = c["dataset"].value
        if list(c["method"].options) != methods_for(ds):
            keep = c["method"].value
            c["method"].options = methods_for(ds)
            c["method"].value = keep if keep in methods_for(ds) else methods_for(ds)[0]
        c["steps"].max = MAX_STEPS[c["method"].value]
        K = num_classes(ds)
        c["label"].disabled = c["guidance"].disabled = K == 0
        labels = [("all", -1)] + [(str(k), k) for k in range(K)]
        if list(c["label"].options) != labels:
            c["label"].options = labels

    def on_change(_=None) -> None:
        if busy["on"]:
            return
        busy["on"] = True
        try:
            sync_controls()
        finally:
            busy["on"] = False
        ex.update()

    for w in c.values():
        w.observe(on_change, names="value")
    sync_controls()
    if render:
        ex.update()
    return ex


# ---- images: the committed Fashion-MNIST models -------------------------------------------------

IMAGE_LABELS = {"fm_teacher": "FM teacher", "tvm_scratch": "TVM from scratch",
                "tvm_cmt": "CMT -> TVM"}
# The default comparison: the teacher with its CMT sampler (16 NFE) against 1 and 2 jumps.
IMAGE_COMPARISON = (("fm_teacher", 16), ("tvm_scratch", 1), ("tvm_scratch", 2),
                    ("tvm_cmt", 1), ("tvm_cmt", 2))
IMAGE_N = 200  # samples per live FD: about 5 s per NFE on 2 CPU cores (DiT-T/2, fp32)
FD_DATASET = ckf.DATASET

_IMAGE_MODELS: dict[tuple[str, float], nn.Module] = {}
_IMAGE_SAMPLES: dict[tuple, Samples] = {}  # one entry per setting: revisits are free
_MAX_CACHED_SETTINGS = 64  # the oldest goes first (about 0.8 MB per 200 images)
_CLASS_STATS: dict[int, tuple] = {}


def get_image_model(method: str, folder: str | Path | None = None) -> nn.Module:
    """``load_fashion`` with an in-memory cache keyed by file path and modification time."""
    path = ckf.checkpoint_path(method, folder)
    key = (str(path), path.stat().st_mtime if path.exists() else -1.0)
    if key not in _IMAGE_MODELS:
        _IMAGE_MODELS[key] = ckf.load_fashion(method, folder)
    return _IMAGE_MODELS[key]


def _check_image_setting(method: str, steps: int, label: int | None, n: int) -> None:
    ckf.check_steps(method, steps)  # also rejects an unknown name, listing the valid ones
    if label is not None and not 0 <= label < ckf.NUM_CLASSES:
        raise ValueError(f"label must be in 0..{ckf.NUM_CLASSES - 1} or None (all classes), "
                         f"got {label}")
    if n < 2:
        raise ValueError(f"n must be >= 2 (a Frechet distance needs a covariance), got {n}")


def image_setting(n: int, seed: int, label: int | None = None) -> tuple[Tensor, Tensor]:
    """Noise (n, 1, 32, 32) from ``seed`` and labels (n,): all ``label``, or balanced
    (0, 1, ..., 9, 0, 1, ...) when ``label`` is None. The same for every model."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 32, 32, generator=g)
    y = (torch.arange(n) % ckf.NUM_CLASSES if label is None
         else torch.full((n,), label, dtype=torch.long))
    return noise, y


def sample_images(method: str, steps: int, seed: int = 0, label: int | None = None,
                  n: int = IMAGE_N, folder: str | Path | None = None) -> Samples:
    """``n`` samples (clamped to [-1, 1]) of the committed ``method`` with ``steps`` steps from
    ``image_setting(n, seed, label)``, cached per setting (a copy is returned)."""
    _check_image_setting(method, steps, label, n)
    path = ckf.checkpoint_path(method, folder)
    key = (str(path), path.stat().st_mtime if path.exists() else -1.0, method, steps, seed,
           label, n)
    if key not in _IMAGE_SAMPLES:
        noise, y = image_setting(n, seed, label)
        _IMAGE_SAMPLES[key] = ckf.sample_fashion(method, get_image_model(method, folder), noise,
                                                 steps, y)
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
    """Classifier Frechet distance (``tvmlib.metrics.classifier_fd``) of images
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
    what = "step" if ckf.model_info(method).kind == "fm" else "jump"
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


def figure_jpeg(fig: Figure, dpi: int = 72, quality: int = 85) -> bytes:
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

    kind = ckf.model_info(method).kind
    c = {
        "method": W.Dropdown(options=[(IMAGE_LABELS[m], m) for m in ckf.MODELS], value=method,
                             description="model"),
        "steps": W.IntSlider(value=steps, min=1, max=ckf.MAX_STEPS[kind], description="steps",
                             continuous_update=False),
        "seed": W.IntText(value=seed, description="seed"),
        "label": W.Dropdown(options=[("all", -1)] + [(name, k) for k, name in
                                                     enumerate(FASHION_CLASSES)],
                            value=-1 if label is None else label, description="class"),
    }
    output = W.Output()
    box = W.VBox([W.HBox([c["method"], c["steps"]]), W.HBox([c["seed"], c["label"]]), output])
    ex = ImageExplorer(c, output, box, n, folder)
    busy = {"on": False}  # one render per user change, not one per linked control update

    def on_change(_=None) -> None:
        if busy["on"]:
            return
        busy["on"] = True
        try:
            c["steps"].max = ckf.MAX_STEPS[ckf.model_info(c["method"].value).kind]
        finally:
            busy["on"] = False
        ex.update()

    for w in c.values():
        w.observe(on_change, names="value")
    if render:
        ex.update()
    return ex
