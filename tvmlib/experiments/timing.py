"""Where a run's GPU seconds go: the training-step benchmark's rows
(``tvmlib.apps.bench.train_step``) summarised per model and per compile mode, and a run's
startup (compilation, autotuning, a CUDA graph's capture) and checkpoint writes estimated from
the training seconds between its evaluations."""

from __future__ import annotations

import math

import numpy as np


def step_summary(rows: list[dict]) -> list[dict]:
    """Per model of a benchmark file: the fastest FM and TVM steps (any graph mode and backend),
    the fastest TVM step per ``jvp`` and the TVM-to-FM time ratio, each {"model", "fm_ms",
    "tvm_ms", "tvm_row", "by_jvp": {jvp: ms}, "ratio"}; models without an FM row are left out."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == model and r["status"] == "ok"]
        fm = [r for r in ok if r.get("loss_name") == "fm"]
        tvm = [r for r in ok if r.get("loss_name", "tvm") == "tvm"]
        if not fm or not tvm:
            continue
        best = min(tvm, key=lambda r: r["ms_per_step"])
        fm_ms = min(r["ms_per_step"] for r in fm)
        by_jvp = {j: min(r["ms_per_step"] for r in tvm if r.get("jvp") == j)
                  for j in dict.fromkeys(r.get("jvp") for r in tvm)}
        out.append({"model": model, "fm_ms": fm_ms, "tvm_ms": best["ms_per_step"],
                    "tvm_row": best, "by_jvp": by_jvp, "ratio": best["ms_per_step"] / fm_ms})
    return out


def compile_speedups(rows: list[dict]) -> dict | None:
    """What torch.compile does to the CUDA-graph steps of a benchmark file: the fastest ms of
    FM (eager forward and compiled) and of TVM (fused and compiled dF/ds), {"fm", "fm_compiled",
    "tvm", "tvm_compiled"}, with "tvm_func" (dF/ds through torch.func.jvp) where measured; None
    unless the first four were measured."""
    ms: dict[str, float] = {}
    names = {("fm", None): "fm", ("fm", "compiled"): "fm_compiled", ("tvm", "fused"): "tvm",
             ("tvm", "compiled"): "tvm_compiled", ("tvm", "func"): "tvm_func"}
    for r in rows:
        key = names.get((r.get("loss_name", "tvm"), r.get("jvp")))
        if key and r["status"] == "ok" and r.get("cuda_graph"):
            ms[key] = min(ms.get(key, math.inf), r["ms_per_step"])
    return ms if {"fm", "fm_compiled", "tvm", "tvm_compiled"} <= set(ms) else None


def _segments(rec: dict) -> list[tuple[int, int, float]]:
    """(first step, end step, training seconds) of each evaluated segment of a run after the
    first (which holds the startup: compilation, autotuning, a CUDA graph's capture)."""
    steps, secs = rec["evals"].get("step", []), rec["evals"].get("train_s", [])
    if not steps or steps[0] != 0:
        return []
    return [(a, b, t1 - t0) for a, b, t0, t1 in zip(steps[1:-1], steps[2:], secs[1:-1], secs[2:])]


def startup_seconds(rec: dict) -> float | None:
    """Training seconds a run spent before its steady rate (compilation, autotuning, a CUDA
    graph's capture), estimated from its evaluations: the first evaluated segment's seconds
    less its steps at the median seconds per step of the later segments. None with fewer than
    two segments after the first."""
    later = _segments(rec)
    if len(later) < 2:
        return None
    per_step = float(np.median([t / (b - a) for a, b, t in later]))
    steps, secs = rec["evals"]["step"], rec["evals"]["train_s"]
    return secs[1] - steps[1] * per_step


def checkpoint_write_fit(rec: dict) -> tuple[float, float] | None:
    """(seconds per checkpoint write inside a run's training clock, its standard error), for
    runs made before the writes left the clock: least squares over the run's evaluated segments
    after the first, seconds = steps x s_step + writes x s_write, a write at step k falling in
    the segment [a, b) that holds k (it follows step k's evaluation). None with fewer than four
    segments or the same number of writes in each."""
    every = rec["config"]["train"]["ckpt_every"]
    if not every:
        return None
    rows = [[b - a, len(range(-(-a // every) * every, b, every)), t] for a, b, t in _segments(rec)]
    if len(rows) < 4 or len({r[1] for r in rows}) < 2:
        return None
    m = np.asarray(rows, dtype=float)
    x, y = m[:, :2], m[:, 2]
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    resid = y - x @ coef
    var = resid @ resid / (len(y) - 2) * np.linalg.inv(x.T @ x)[1, 1]
    return float(coef[1]), float(np.sqrt(var))


def detach_effects(rows: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per way of computing dF/ds in an operator count (``tvmlib.apps.bench.op_count --detach
    off on``): {jvp: {"kernels", "saved_mb", "cpu_ms": (kept, detached)}}, the TVM step with the
    gradient through dF/ds and without it; a jvp without both rows is left out."""
    out = {}
    for jvp in dict.fromkeys(r["jvp"] for r in rows):
        pair = {r.get("detach_jvp", False): r for r in rows if r["jvp"] == jvp}
        if set(pair) == {False, True}:
            out[jvp] = {k: (pair[False][src], pair[True][src]) for k, src in
                        (("kernels", "kernels"), ("saved_mb", "saved_mb"),
                         ("cpu_ms", "cpu_ms_median")) if src in pair[False]}
    return out


def writes_in_clock(rec: dict) -> int:
    """Checkpoint writes a run counted as training time: one every ``train.ckpt_every`` steps
    for runs made before the writes left the clock (no ``ckpt_s``), else none."""
    every = rec["config"]["train"]["ckpt_every"]
    return 0 if "ckpt_s" in rec or not every else rec["steps_done"] // every


def write_seconds(rec: dict) -> float | None:
    """Seconds per checkpoint write a run recorded outside its training clock (``ckpt_s`` over
    the writes every ``train.ckpt_every`` steps); None for runs made before it was recorded."""
    every = rec["config"]["train"]["ckpt_every"]
    writes = rec["steps_done"] // every if every else 0
    return rec["ckpt_s"] / writes if "ckpt_s" in rec and writes else None


def warm_starts(runs: dict[str, dict]) -> list[dict]:
    """Runs whose first step (compiling, a CUDA graph's capture) took less than half the first
    step of the slowest run with the same loss and the same ``model.jvp`` (compiled or eager)
    in the same file: they found their kernels in a warm compile cache, e.g. one run after
    another on the same machine. Each {"run", "first_s", "like", "like_first_s", "head_s"},
    ``head_s`` the training seconds that gave it over a cold start (the two first steps'
    difference)."""
    kind = lambda r: (r["config"]["loss"]["name"], r["config"]["model"].get("jvp"))  # noqa: E731
    out = []
    for name, rec in runs.items():
        same = {n: r["first_step_s"][0] for n, r in runs.items() if r.get("first_step_s")
                and kind(r) == kind(rec)}
        if name not in same:
            continue
        like = max(same, key=same.get)
        if same[name] < 0.5 * same[like]:
            out.append({"run": name, "first_s": same[name], "like": like,
                        "like_first_s": same[like], "head_s": same[like] - same[name]})
    return out


def cut_at(rec: dict, seconds: float) -> dict:
    """A copy of a run whose evaluations stop at ``seconds`` of training (``train_s``): the run
    as far as a shorter budget would have taken it (its final 10000-sample scores dropped)."""
    keep = sum(s <= seconds for s in rec["evals"]["train_s"])
    evals = {k: v[:keep] for k, v in rec["evals"].items()}
    return {**rec, "evals": evals, "final": {}, "train_s": rec["evals"]["train_s"][keep - 1]}


def cold_equivalent(runs: dict[str, dict]) -> dict[str, dict]:
    """``runs`` with each :func:`warm_starts` run cut (:func:`cut_at`) where a cold start's
    longer first step would have left it: its training seconds less ``head_s``."""
    cut = {w["run"]: cut_at(runs[w["run"]], runs[w["run"]]["train_s"] - w["head_s"])
           for w in warm_starts(runs)}
    return {**runs, **cut}
