"""Reading a runner's results (``tvmlib.experiments.runner``): runs grouped by name, the step
at which a run first reaches a target, a run's summary numbers, curve plots of records, and the
image comparisons' tables and targets (where the seconds go: ``timing``; joining the files of
separate calls: ``merge``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from tvmlib.utils.paths import repo_root

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


def run_summary(rec: dict) -> dict:
    """What the ablation tables say about one run record: steps done and planned, the final loss
    (mean of the last tenth of the logged losses), the largest gradient norm, the first spike
    and divergence steps, and the last Lipschitz probes: of the velocity u (``lip_velocity``) and
    of the steepest block (``lip_blocks_max``). A diverged run has no meaningful last probe:
    its Lipschitz values are None."""
    losses = [v for v in rec["curves"]["loss"] if v is not None]
    tail = losses[-max(1, len(losses) // 10):]
    grads = [v for v in rec["curves"]["grad_norm"] if v is not None]
    probes, diverged = rec["probes"], rec.get("diverged_step")
    return {"steps_done": rec["steps_done"], "steps": rec["steps"],
            "final_loss": sum(tail) / len(tail) if tail else None,
            "max_grad": max(grads) if grads else None,
            "spike": rec["spike_step"]["first"], "diverged": diverged,
            "lip_velocity": None if diverged else probes["lip_velocity"][-1],
            "lip_blocks_max": None if diverged else max(probes["lip_blocks"][-1])}


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


def plot_sweep(ax, recs: list[dict]):
    """FM's sweep rows of ``recs`` (e.g. a run and its few-step re-run) as FD against NFE: one
    line per solver (marker) and guidance scale (w = 1 solid black, else dashed grey)."""
    rows = sorted((r for rec in recs for r in rec["sweep"]), key=lambda r: r["nfe"])
    for solver, marker in (("euler", "o"), ("heun", "s"), ("dpm++2m", "^")):
        for w in sorted({r["cfg_scale"] for r in rows if r["solver"] == solver}):
            line = [r for r in rows if r["solver"] == solver and r["cfg_scale"] == w]
            ax.plot([r["nfe"] for r in line], [r["fd"] for r in line],
                    marker + ("-" if w == 1.0 else "--"), ms=4,
                    color="k" if w == 1.0 else "grey", label=f"FM {solver}, w = {w}")
    return ax


def grid_table(runs: dict[str, dict], prefix: str, rows: list[tuple[str, str, tuple[int, ...]]],
               src: str = "../figures", width: int = 150, figures: Path | None = None) -> str:
    """Markdown table of an experiment's committed sample grids
    (``<figures>/<prefix>_<run>_samples_<k>step.png``): one row per (run, label, step counts),
    each grid with its final FD (``final.ema``, eval.final_samples) under it, "-" where the grid
    or that FD is missing. ``src`` is the grids' folder as the reader's page sees it."""
    figures = repo_root() / "figures" if figures is None else figures
    ncol = max(len(steps) for _, _, steps in rows)

    def cell(name: str, k: int) -> str:
        f = f"{prefix}_{name}_samples_{k}step.png"
        fd = runs[name]["final"].get("ema", {}).get(str(k))
        if fd is None or not (figures / f).exists():
            return "-"
        return f'<img src="{src}/{f}" width="{width}"><br>{k} NFE: FD {fd:.1f}'

    lines = ["| run |" + " |" * ncol, "|---|" + "---|" * ncol]
    for name, label, steps in rows:
        cells = [cell(name, k) for k in steps] + [""] * (ncol - len(steps))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def last_eval(rec: dict, key: str = "fd_1") -> float | None:
    """A run's ``key`` at its last evaluation during training (eval.num_samples samples)."""
    values = rec.get("evals", {}).get(key) or [None]
    return values[-1]


def seconds_axis(rec: dict) -> list[float]:
    """GPU seconds of every evaluation of a run, all stages counted: upstream + setup + train."""
    return [rec["upstream_s"] + rec["setup_s"] + s for s in rec["evals"]["train_s"]]


def best_sweep(rec: dict) -> dict:
    """The sweep row {solver, cfg_scale, steps, nfe, fd} with the lowest FD."""
    return min(rec["sweep"], key=lambda r: r["fd"])


def best_sweep_within(recs: list[dict], max_nfe: int) -> dict | None:
    """The lowest-FD sweep row with at most ``max_nfe`` NFE over the sweeps of ``recs`` (e.g. an
    FM run and its few-step re-run); None if no row is that cheap."""
    rows = [r for rec in recs for r in rec.get("sweep", []) if r["nfe"] <= max_nfe]
    return min(rows, key=lambda r: r["fd"]) if rows else None


def fewest_nfe_below(recs: list[dict], fd: float) -> dict | None:
    """The sweep row with the fewest NFE (then the lowest FD) whose FD is at or below ``fd``,
    over the sweeps of ``recs``: what a sampler needs to match a flow map's FD; None if none
    does."""
    rows = [r for rec in recs for r in rec.get("sweep", []) if r["fd"] <= fd]
    return min(rows, key=lambda r: (r["nfe"], r["fd"])) if rows else None


def seed_groups(runs: dict[str, dict]) -> dict[str, list[dict]]:
    """{base name: [records]}: a run and its training seeds, named "<base>_seed<N>", in file
    order (the base run is seed 0)."""
    groups: dict[str, list[dict]] = {}
    for name, rec in runs.items():
        groups.setdefault(re.sub(r"_seed\d+$", "", name), []).append(rec)
    return groups


def mean_sd(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value) of finite ``values``."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def ordered(fd_a: float, fd_b: float, spread: float, sigmas: float = 2.0) -> bool:
    """Whether two final FDs are ordered beyond noise: their gap exceeds ``sigmas`` times a
    training-seed standard deviation ``spread`` (one-seed runs borrow it from a run with seeds,
    e.g. TVM from scratch)."""
    return abs(fd_a - fd_b) > sigmas * spread


def mid_training_verdict(cmt_fd: float, teacher_fd: float, spread: float) -> str:
    """A sentence on whether CMT's chain (one seed) ends ahead of teacher init's (one seed) at
    one jump, called only beyond two of scratch's training-seed stds ``spread``."""
    where = "behind" if cmt_fd > teacher_fd else "ahead of"
    gap = f"at one jump ({cmt_fd:.1f} against {teacher_fd:.1f})"
    if ordered(cmt_fd, teacher_fd, spread):
        return (f"Mid-training {'did not help' if cmt_fd > teacher_fd else 'helped'} here: its "
                f"chain ends {where} teacher init's {gap}, by more than two of scratch's seed "
                f"stds ({spread:.1f}).")
    return (f"CMT's chain ends {where} teacher init's {gap}, within two of scratch's seed stds "
            f"({spread:.1f}): with one seed per chain, this does not say whether mid-training "
            "helped.")


def best_variant(groups: dict[str, list[dict]], names: tuple[str, ...],
                 key: str = "fd_1") -> str:
    """Of the variants ``names`` present in ``groups``, the one with the lowest mean ``key`` at
    its last evaluation (a method "at its best": e.g. TVM with or without folded guidance)."""
    present = [n for n in names if n in groups]
    if not present:
        raise KeyError(f"none of the runs {names} is in the results")
    return min(present, key=lambda n: mean_sd([last_eval(r, key) for r in groups[n]])[0])


def equal_time_targets(runs: dict[str, dict]) -> list[dict]:
    """The image comparison's targets (issue 14), each {"target", "value", "value_sd",
    "bound", "bound_sd", "seeds", "runs", "hit"}, at the evaluations' sample size
    (eval.num_samples, where the FM sweep lives), as means over the training seeds:

    * TVM 1-NFE FD <= 1.3 x FM's best FD at any NFE (each seed's best solver and guidance);
    * TVM 4-NFE FD <= FM's best;
    * TVM 1-NFE FD < MeanFlow 1-NFE FD;
    * CMT -> TVM reaches TVM-from-scratch's final 1-NFE FD within half of scratch's GPU
      seconds, all stages counted (value: the seconds it took, None if never; one seed), and
      teacher init -> TVM on the same axis (:func:`chain_targets`).

    TVM and MeanFlow are each taken at their best variant at the target's NFE (``tvm`` or
    ``tvm_w15``, ``meanflow`` or ``meanflow_w15``: without or with guidance folded into
    training; TVM's 1- and 4-NFE variants may differ), FM at its best sampler.
    A comparison without MeanFlow runs (or without the CMT chain) has no row for that target.
    """
    g = seed_groups(runs)
    tvm, tvm_4 = (best_variant(g, ("tvm", "tvm_w15"), k) for k in ("fd_1", "fd_4"))
    fm_best = [best_sweep(r)["fd"] for r in g["fm"]]
    tvm1, tvm4 = [last_eval(r) for r in g[tvm]], [last_eval(r, "fd_4") for r in g[tvm_4]]
    rows = [("TVM 1 NFE <= 1.3 x FM best", tvm1, [1.3 * b for b in fm_best], False, [tvm, "fm"]),
            ("TVM 4 NFE <= FM best", tvm4, fm_best, False, [tvm_4, "fm"])]
    if any(n in g for n in ("meanflow", "meanflow_w15")):
        mf = best_variant(g, ("meanflow", "meanflow_w15"))
        rows.append(("TVM 1 NFE < MeanFlow 1 NFE", tvm1, [last_eval(r) for r in g[mf]], True,
                     [tvm, mf]))
    out = []
    for target, values, bounds, strict, names in rows:
        (v, v_sd), (b, b_sd) = mean_sd(values), mean_sd(bounds)
        out.append({"target": target, "value": v, "value_sd": v_sd, "bound": b, "bound_sd": b_sd,
                    "seeds": [len(values), len(bounds)], "runs": names,
                    "hit": v < b if strict else v <= b})
    return out + chain_targets(runs)


def chain_targets(runs: dict[str, dict]) -> list[dict]:
    """CMT -> TVM and, on the same axis, teacher init -> TVM: the GPU seconds (all stages) at
    which a post-training run first reaches the final 1-NFE FD of TVM from scratch, against half
    of scratch's seconds (one seed). Chains pair with the scratch run of their guidance:
    ``cmt`` / ``teacher_init`` with ``tvm``, ``cmt_w15`` / ``teacher_init_w15`` with
    ``tvm_w15``."""
    out = []
    for suffix in ("", "_w15"):
        scratch = runs.get(f"tvm{suffix}")
        for chain, label in (("cmt", "CMT -> TVM"), ("teacher_init", "teacher init -> TVM")):
            rec = runs.get(chain + suffix)
            if scratch is None or rec is None:
                continue
            goal, half = last_eval(scratch), 0.5 * scratch["total_s"]
            reach = next((s for s, v in zip(seconds_axis(rec), rec["evals"]["fd_1"])
                          if v is not None and v <= goal), None)
            out.append({"target": f"{label} reaches scratch's final 1 NFE within 50% of its "
                        "GPU s", "value": reach, "value_sd": 0.0, "bound": half,
                        "bound_sd": 0.0, "seeds": [1, 1], "runs": [chain + suffix, f"tvm{suffix}"],
                        "hit": reach is not None and reach <= half})
    return out


def equal_time_summary(runs: dict[str, dict]) -> list[dict]:
    """One row per method (a run and its seeds): {"run", "seeds", "train_s", "total_s",
    "steps", "fd": {steps: (mean, sd)}} of the final FDs (``final.ema``, eval.final_samples)."""
    rows = []
    for base, recs in seed_groups(runs).items():
        finals = [r["final"].get("ema", {}) for r in recs]
        keys = [k for k in finals[0] if all(k in f for f in finals)]
        rows.append({"run": base, "seeds": len(recs),
                     "train_s": mean_sd([r["train_s"] for r in recs])[0],
                     "total_s": mean_sd([r["total_s"] for r in recs])[0],
                     "steps": mean_sd([r["steps_done"] for r in recs])[0],
                     "fd": {k: mean_sd([f[k] for f in finals]) for k in keys}})
    return rows


UNSETTLED = 0.1  # a target still holding more of its initialisation than this has not settled


def target_init_share(rec: dict) -> float:
    """The share of its initialisation a run's stop-gradient target (TVM's, decay d, updated
    without warm-up) still holds at the run's end: d ** steps; 0 for a run without one."""
    d = rec["config"]["loss"].get("target_decay")
    return d ** rec["steps_done"] if d else 0.0


def ablation_verdicts(runs: dict[str, dict], base: str = "base", k: str = "1",
                      sigmas: float = 2.0) -> list[dict]:
    """Each one-change run against ``base``'s training seeds at ``k`` jumps (final FD): {"run",
    "fd", "delta", "verdict"} with verdict "better" / "worse" when the run lies more than
    ``sigmas`` of base's seed standard deviations from base's mean, else "within base's spread"
    ("not resolved": base has a single seed, so there is no spread to read it against)."""
    rows = {r["run"]: r for r in equal_time_summary(runs)}
    mean, sd = rows[base]["fd"][k]
    out = []
    for name, row in rows.items():
        if name == base:
            continue
        fd = row["fd"][k][0]
        if rows[base]["seeds"] < 2:
            verdict = "not resolved"
        elif abs(fd - mean) <= sigmas * sd:
            verdict = "within base's spread"
        else:
            verdict = "better" if fd < mean else "worse"
        out.append({"run": name, "fd": fd, "delta": fd - mean, "verdict": verdict})
    return out


def compiled_pairs(plain: dict[str, dict], compiled: dict[str, dict]) -> list[dict]:
    """Each run of a compiled re-run of an equal-time comparison beside the same run of the
    uncompiled one (its seed 0; the compiled runs have one seed): {"run", "steps", "train_s",
    "setup_s", "fd": {k: (uncompiled, compiled)}} with (uncompiled, compiled) pairs of the steps
    done, the training seconds, the seconds of setup before the first step and the final FD
    (``final.ema``) at each step count both have; FM's "best" is the best row of its sweep
    (eval.num_samples)."""
    out = []
    for name, rec in compiled.items():
        if name not in plain:
            continue
        old = plain[name]
        a, b = old["final"].get("ema", {}), rec["final"].get("ema", {})
        fd = {k: (a[k], b[k]) for k in b if k in a}
        if rec.get("sweep") and old.get("sweep"):
            fd["best"] = (best_sweep(old)["fd"], best_sweep(rec)["fd"])
        out.append({"run": name, "steps": (old["steps_done"], rec["steps_done"]),
                    "train_s": (old["train_s"], rec["train_s"]),
                    "setup_s": (old.get("setup_s"), rec.get("setup_s")), "fd": fd})
    return out


def compiled_targets(plain: dict[str, dict], compiled: dict[str, dict]) -> list[dict]:
    """:func:`equal_time_targets` with every method that torch.compile can speed up taken from
    the compiled re-run (one seed each) and MeanFlow, which it cannot, from the uncompiled runs
    (all their seeds)."""
    meanflow = {n: r for n, r in plain.items() if n.startswith("meanflow")}
    return equal_time_targets({**meanflow, **compiled})


# ---- notebook 05's 2D comparison over seeds (configs/experiments/cmt_2d_seeds.yaml) ---------

CMT_STARTS = ("scratch", "teacher_init", "cmt")


def cmt_seed_summary(runs: dict[str, dict]) -> dict:
    """Runs "<stage>-s<seed>" (teacher, mid, the three post-training starts) summarised over the
    seeds: {"seeds", "floor" (W2 of data against the same reference, scored like the models:
    mean, sd over the single pairs of every seed),
    "teacher" (16-NFE W2), "mid_1" (one jump after mid-training), and per start
    {"w2_1_start", "w2_1", "w2_2": (mean, sd), "reach": [the first evaluated step at which the
    start is at most its seed's scratch final 1-jump W2, None if never, per seed]}, and
    "cmt_minus_teacher_init": (mean, sd) of the paired final 1-jump differences}."""
    stages = by_group(runs)
    seeds = list(stages["scratch"])
    floors = [stages["scratch"][s]["floor"] for s in seeds]
    out = {"seeds": len(seeds),
           "floor": mean_sd([w for f in floors for w in f.get("runs", [f["w2"]])]),
           "teacher": mean_sd([next(iter(r["final"]["ema"].values()))
                               for r in stages["teacher"].values()]),
           "mid_1": mean_sd([r["final"]["ema"]["1"] for r in stages["mid"].values()])}
    for start in CMT_STARTS:
        recs = [stages[start][s] for s in seeds]
        out[start] = {"w2_1_start": mean_sd([r["evals"]["w2_1"][0] for r in recs]),
                      **{k: mean_sd([last_eval(r, k) for r in recs]) for k in ("w2_1", "w2_2")},
                      "reach": [reach_step(r["evals"], last_eval(stages["scratch"][s], "w2_1"),
                                           "w2_1") for r, s in zip(recs, seeds)]}
    out["cmt_minus_teacher_init"] = mean_sd([
        last_eval(stages["cmt"][s], "w2_1") - last_eval(stages["teacher_init"][s], "w2_1")
        for s in seeds])
    return out


def cmt_seed_table(runs: dict[str, dict]) -> str:
    """Markdown of :func:`cmt_seed_summary`: a line naming the seeds and the paired CMT - teacher
    init difference, then per start the W2 at step 0 and at the end and the reach steps."""
    sm = cmt_seed_summary(runs)
    pm = lambda m: f"{m[0]:.3f} +- {m[1]:.3f}"  # noqa: E731
    lines = ["| start | 1 jump, step 0 | 1 jump, end | 2 jumps, end | steps to scratch's final "
             "1 jump, per seed |", "|---|---|---|---|---|"]
    for start in CMT_STARTS:
        r = sm[start]
        reach = ", ".join("never" if x is None else str(x) for x in r["reach"])
        lines.append(f"| {start} | {pm(r['w2_1_start'])} | {pm(r['w2_1'])} | {pm(r['w2_2'])} "
                     f"| {reach} |")
    head = (f"**2D checkerboard** (`configs/experiments/cmt_2d_seeds.yaml`: W2 to the data "
            f"during TVM post-training, mean +- std over {sm['seeds']} seeds; floor "
            f"{pm(sm['floor'])}, over single data-vs-data pairs; CMT minus teacher init at the "
            "end, paired by seed: "
            f"{pm(sm['cmt_minus_teacher_init'])})")
    return head + "\n\n" + "\n".join(lines)
