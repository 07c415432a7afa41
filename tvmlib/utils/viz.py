"""Plot helpers for the notebooks: samples, densities, trajectories, W2-vs-NFE; PNGs to figures/."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tvmlib.utils.paths import figure_path

LIM = 3.0  # the toys live in about [-2.5, 2.5]^2


def _np(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if torch.is_tensor(x) else np.asarray(x)


def scatter(ax: Axes, x, title: str | None = None, c=None, lim: float = LIM, s: float = 1.0,
            **kw) -> Axes:
    """Scatter of 2D samples (n, 2), optionally coloured by ``c`` (e.g. class labels)."""
    x = _np(x)
    ax.scatter(x[:, 0], x[:, 1], s=s, c=None if c is None else _np(c),
               cmap="tab10" if c is not None else None, alpha=0.6, linewidths=0, **kw)
    return _square(ax, title, lim)


def trajectories(ax: Axes, traj, n: int = 200, title: str | None = None,
                 lim: float = LIM, alpha: float = 0.5, lw: float = 0.8) -> Axes:
    """Paths of the first ``n`` particles of a trajectory (K+1, B, 2): noise grey, samples red."""
    traj = _np(traj)[:, :n]
    ax.plot(traj[:, :, 0], traj[:, :, 1], color="tab:blue", alpha=alpha, lw=lw)
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=3, color="grey", label="t = 1 (noise)")
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=3, color="tab:red", label="t = 0 (sample)")
    return _square(ax, title, lim)


def w2_vs_nfe(ax: Axes, curves: dict[str, dict], title: str = "W2 vs NFE",
              reference: float | None = None, ref_label: str = "data vs data",
              errors: dict[str, dict] | None = None, reference_std: float | None = None) -> Axes:
    """One line per method: curves = {label: {nfe: w2}} with log-2 NFE on the x axis; optional
    error bars errors = {label: {nfe: std}} and a band of +- ``reference_std`` round the
    reference line."""
    for label, points in curves.items():
        nfe = sorted(int(k) for k in points)
        y = [_at(points, k) for k in nfe]
        err = [_at(errors[label], k) for k in nfe] if errors and label in errors else None
        ax.errorbar(nfe, y, yerr=err, fmt="o-", capsize=2, label=label)
    if reference is not None:
        ax.axhline(reference, color="k", ls=":", label=ref_label)
        if reference_std:
            ax.axhspan(reference - reference_std, reference + reference_std, color="k",
                       alpha=0.1, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel("W2 to data")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax


def _at(points: dict, k: int):
    return points[k] if k in points else points[str(k)]


MIN_DPI = 100  # a saved figure is read at notebook width: below this, 9-point labels blur
MAX_PANELS = 8  # more panels than this shrink each one below readable size at notebook width


def panels(fig: Figure) -> int:
    """The figure's panels: its visible axes, colorbars not counted."""
    return sum(1 for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>")


def save(fig: Figure, name: str, dpi: int = MIN_DPI) -> str:
    """Save ``fig`` as ``figures/<name>`` (or ``$TVMLIB_FIGURES``) and return the path.

    Figures must be readable at notebook width: ``dpi`` at least ``MIN_DPI`` and at most
    ``MAX_PANELS`` panels (split a larger grid into several figures); otherwise ``ValueError``
    names the figure and nothing is written.
    """
    if dpi < MIN_DPI:
        raise ValueError(f"figure {name!r}: dpi {dpi} is below {MIN_DPI}; figures are read at "
                         f"notebook width, save them at dpi >= {MIN_DPI}")
    n = panels(fig)
    if n > MAX_PANELS:
        raise ValueError(f"figure {name!r} has {n} panels; at most {MAX_PANELS} stay readable "
                         "at notebook width: split it into several figures")
    path = figure_path(name)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return str(path)


def grid(n_rows: int, n_cols: int, size: float = 2.6) -> tuple[Figure, np.ndarray]:
    """A figure of square panels, axes always a 2D array."""
    return plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)


def _square(ax: Axes, title: str | None, lim: float) -> Axes:
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax
