"""The sampling explorer on the committed 2D models: how many steps (NFE) each method needs.

All logic is in plain functions that return a matplotlib Figure and a dict of values, so a
headless run (papermill, nbval, pytest) computes exactly what the widgets show:

* ``explore_2d(method, steps, seed, ...)``: one setting; samples over the data, trajectories,
  and W2 / NFE;
* ``compare_grid(dataset, ...)``: methods side by side at 1, 2, 4, 8 steps, W2 in the titles;
* ``make_explorer()``: ipywidgets controls (data set, method, steps, seed, class, guidance) wired
  to ``explore_2d``. Widget callbacks never fire headless; ``Explorer.update()`` renders once.

Models come from ``tvmlib.evaluation.pretrained.load_2d`` (sha256-checked files under
``data/checkpoints/``) and are sampled with ``tvmlib.core.solvers.sample``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from tvmlib.core.solvers import sample
from tvmlib.data.toy2d import num_classes, sample_toy2d
from tvmlib.evaluation.metrics import w2
from tvmlib.evaluation.pretrained import (
    MODELS_2D,
    TVM_GUIDANCE_RANGE,
    checkpoint_path_2d,
    class_matched_data,
    default_guidance,
    load_2d,
    sampler_2d,
)
from tvmlib.utils import viz

MAX_STEPS = {"fm": 128, "meanflow": 16, "tvm": 16}  # ODE steps for FM, jumps for flow maps
LABELS = {"fm": "FM (Euler)", "meanflow": "MeanFlow", "tvm": "TVM"}
REF_SEED = 12_345  # the reference data do not change with the sampling seed

_CACHE: dict[tuple[str, float], nn.Module] = {}


def cached_load(cache: dict, path: Path, load: Callable[[], nn.Module]) -> nn.Module:
    """``load()`` once per (file path, modification time)."""
    key = (str(path), path.stat().st_mtime if path.exists() else -1.0)
    if key not in cache:
        cache[key] = load()
    return cache[key]


def methods_for(dataset: str) -> list[str]:
    """Methods with a committed model on ``dataset``."""
    found = [m for m, d in MODELS_2D if d == dataset]
    if not found:
        raise ValueError(f"no committed 2D models on {dataset!r}; data sets: "
                         f"{', '.join(sorted({d for _, d in MODELS_2D}))}")
    return found


def get_model(method: str, dataset: str, folder: str | Path | None = None) -> nn.Module:
    """``load_2d`` with an in-memory cache keyed by file path and modification time."""
    return cached_load(_CACHE, checkpoint_path_2d(method, dataset, folder),
                       lambda: load_2d(method, dataset, folder))


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


def data_floor_runs(dataset: str, n: int, seed: int = 0, label: int | None = None,
                    pairs: int = 4) -> list[float]:
    """W2 between the reference of ``setting_data`` and ``pairs`` second, independent data sets
    with the same labels: computed like a model's W2 (same n, reference and labels), what a
    perfect model scores."""
    _, y, ref = setting_data(dataset, n, seed, label)
    runs = []
    for i in range(pairs):
        g = torch.Generator().manual_seed(REF_SEED - 1 - i)
        other = sample_toy2d(dataset, n, g)[0] if y is None else class_matched_data(dataset, y, g)
        runs.append(w2(ref, other))
    return runs


def data_floor(dataset: str, n: int, seed: int = 0, label: int | None = None,
               pairs: int = 4) -> float:
    """The mean of ``data_floor_runs``: the value the metric does not go below on average at
    this n (finite-sample floor)."""
    runs = data_floor_runs(dataset, n, seed, label, pairs)
    return sum(runs) / len(runs)


def explore_2d(method: str, steps: int, seed: int = 0, dataset: str = "checkerboard",
               label: int | None = None, guidance: float | None = None, n: int = 1000,
               n_traj: int = 60, folder: str | Path | None = None) -> tuple[Figure, dict]:
    """Sample ``n`` points with ``steps`` steps of the committed ``method`` model on ``dataset``.

    Returns a Figure with two axes (samples over the reference data; the first ``n_traj``
    trajectories) and a dict with ``w2`` (exact W2 to the reference),
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
    out = sample(net, noise, steps, y=y, return_trajectory=True, **sampler_2d(method, guidance))
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
                 folder: str | Path | None = None, show_data: bool = True
                 ) -> tuple[Figure, dict]:
    """Methods (rows) side by side at each number of steps (columns), from the same noise.

    With ``show_data`` the first column shows the reference data, else every panel shows it in
    light grey under the samples. Returns the Figure, with len(methods) x (len(steps) + 1) axes
    (len(steps) without ``show_data``), and {method: {str(steps): {"nfe", "w2"}}}.
    """
    methods = methods or methods_for(dataset)
    fig, axes = viz.grid(len(methods), len(steps) + int(show_data), size=2.0)
    results: dict[str, dict] = {}
    colours = setting_data(dataset, n, seed)[1]  # labels (n,) on class-conditional data
    for r, method in enumerate(methods):
        results[method] = {}
        for c, k in enumerate(steps, start=int(show_data)):
            single, v = explore_2d(method, k, seed, dataset, n=n, folder=folder, n_traj=0)
            plt.close(single)
            results[method][str(k)] = {"nfe": v["nfe"], "w2": v["w2"]}
            if not show_data:
                viz.scatter(axes[r, c], v["reference"], color="0.85")
            viz.scatter(axes[r, c], v["samples"], c=colours,
                        title=f"{LABELS[method]} {k} step{'s' * (k > 1)}\n"
                              f"{v['nfe']} NFE, W2 {v['w2']:.3f}")
        if show_data:
            viz.scatter(axes[r, 0], v["reference"], color="0.4",
                        title=f"{dataset} data" if r == 0 else None)
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
        "dataset": W.Dropdown(options=sorted({d for _, d in MODELS_2D}), value=dataset,
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
