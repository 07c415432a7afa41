"""Reading a runner's results (``tvmlib.experiments.runner``): runs grouped by name, the step
at which a run first reaches a target, and curve plots of records."""

from __future__ import annotations

import math

import numpy as np

SWITCHES = ("rmsnorm", "qk_norm", "mod_norm", "spectral_init")  # TVM's Lipschitz changes
# The Lipschitz ablation's variants, in plotting order: all off, each change alone, all on.
VARIANTS = ("off", *SWITCHES, "on")


def lipschitz_flags(variant: str) -> dict[str, bool]:
    """The ``model.lipschitz`` section of a variant: "off", "on", or one change alone."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return {k: variant == "on" or variant == k for k in SWITCHES}


def by_group(runs: dict[str, dict], sep: str = "-") -> dict[str, dict[str, dict]]:
    """{group: {variant: record}} for runs named "<group>-<variant>" (e.g. "base-off")."""
    out: dict[str, dict[str, dict]] = {}
    for name, rec in runs.items():
        group, _, variant = name.partition(sep)
        out.setdefault(group, {})[variant or group] = rec
    return out


def reach_step(evals: dict[str, list], target: float, key: str = "fd_1") -> int | None:
    """The first evaluated step whose ``key`` is at most ``target`` (None: never); ``evals`` is
    a record's column dict {"step": [...], key: [...]}."""
    return next((s for s, v in zip(evals["step"], evals[key]) if v is not None and v <= target),
                None)


def smooth(values: list, window: int) -> list[float]:
    """Running median over ``window`` points (None -> NaN); keeps spikes out of the trend."""
    v = np.array([np.nan if a is None else a for a in values], dtype=float)
    if window <= 1 or len(v) == 0:
        return v.tolist()
    return [float(np.nanmedian(v[max(0, i - window + 1):i + 1])) for i in range(len(v))]


VARIANT_COLORS = {name: f"C{i}" for i, name in enumerate(VARIANTS)}  # one colour per variant


def plot_runs(ax, runs: dict, key: str, probes: bool = False, logy: bool = True,
              smooth_window: int = 1, title: str | None = None):
    """One line per variant of ``runs`` ({variant: record}) for a curve or probe ``key``;
    spike steps marked with x (curves only). On a log axis values <= 0 (e.g. the zero output
    of the adaLN-zero init at step 0) are left out."""
    for variant, rec in runs.items():
        src = rec["probes"] if probes else rec["curves"]
        steps, vals = src["step"], src[key]
        color = VARIANT_COLORS.get(variant)
        ys = smooth(vals, smooth_window)
        if logy:
            ys = [y if y is not None and y > 0 else math.nan for y in ys]
        ax.plot(steps, ys, color=color, lw=1.0 if not probes else 1.5,
                marker="o" if probes else None, ms=3, label=variant)
        spike = rec["spike_step"].get(key) if not probes else None
        if spike is not None:
            j = steps.index(spike)
            ax.plot([spike], [vals[j]], "x", color=color, ms=9, mew=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title or key)
    ax.grid(alpha=0.3)
    return ax
