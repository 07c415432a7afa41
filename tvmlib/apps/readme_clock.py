"""The README's notes on where the equal-time runs' seconds went (``tvmlib.apps.readme``):
what torch.compile does to their step (the note under the glance table), the checkpoint writes
the older runs counted as training time, and FM's steps per TVM step with the writes out of the
clock, which the compiled re-runs' section (``readme_compiled``) shares."""

from __future__ import annotations

import numpy as np

from tvmlib.apps import readme_format as rf
from tvmlib.experiments.timing import (
    checkpoint_write_fit,
    compile_speedups,
    warm_starts,
    writes_in_clock,
)

SMALL_STEP = "train_step_small_nvidia-h200.json"  # the equal-time runs' step, benchmarked


def speedups(name: str = SMALL_STEP) -> tuple[dict | None, dict | None]:
    """(benchmark file, :func:`compile_speedups` of its rows), Nones without the file."""
    d = rf.load(name)
    return d, None if d is None else compile_speedups(d["results"]["rows"])


def _jvp_of(name: str) -> str:
    """How the TVM runs of a results file computed dF/ds: ``model.jvp``, or "func" for runs
    made before the key existed (torch.func.jvp was then the only way)."""
    d = rf.load(name)
    tvm = [r for r in d["results"]["runs"].values() if r["config"]["loss"]["name"] == "tvm"]
    return tvm[0]["config"]["model"].get("jvp", "func") if tvm else "none"


def compile_note(name: str, comparisons: tuple[tuple[str, str, str | None], ...]) -> str:
    """What torch.compile does to the step the image comparisons ran (DiT-S/4, batch 128, CUDA
    graphs, no compile), from the benchmark file ``name``, for the dF/ds each of
    ``comparisons`` ((results file, label, None for uncompiled runs), ...) used."""
    d, ms = speedups(name)
    if ms is None:
        return ""
    rows = d["results"]["rows"]
    (model, batch), = {(r["model"], r["batch"]) for r in rows}  # one step
    fm, fmc, tvm, tvmc = ms["fm"], ms["fm_compiled"], ms["tvm"], ms["tvm_compiled"]
    func = ms.get("tvm_func")
    by_jvp = {}
    for file, label, plain in comparisons:
        if rf.load(file) is not None and plain is None:
            by_jvp.setdefault(_jvp_of(file), []).append(f"*{label}*")
    older = "" if func is None or "func" not in by_jvp else (
        f" The {' and '.join(by_jvp['func'])} runs predate the fused dF/ds: their TVM step ran "
        f"torch.func.jvp ({rf.fmt(func)} ms, a ratio of {rf.fmt(func / fm)} to FM), so for "
        "them compiling both would give TVM relatively more steps.")
    return ("\n\n**Not every method at its best: torch.compile.** The uncompiled rows used "
            "CUDA graphs without torch.compile. At their step "
            f"({model}, batch {batch}, one {d['provenance']['device']}) compiling "
            f"makes FM's step {rf.fmt(fm / fmc)}x faster ({rf.fmt(fm)} -> {rf.fmt(fmc)} ms) "
            f"and TVM's {rf.fmt(tvm / tvmc)}x ({rf.fmt(tvm)} -> {rf.fmt(tvmc)} ms, from the "
            "fused dF/ds to `model.jvp=compiled`, which for FM compiles the whole network). The "
            f"TVM-to-FM step-time ratio goes from {rf.fmt(tvm / fm)} to {rf.fmt(tvmc / fmc)}, "
            f"so for the rows with the fused dF/ds ({' and '.join(by_jvp.get('fused', []))}) "
            "the step times suggest that equal-time runs with both compiled would give FM "
            f"relatively more steps than they did.{_measured()}{older} MeanFlow cannot gain this "
            "way: inside its torch.func.jvp a compiled network runs eagerly. " + _rerun_state()
            + _checkpoint_note() + " " + rf.source(name, d["provenance"]))


def _measured() -> str:
    """What the compiled re-runs measured of that prediction (:func:`ratios`)."""
    out = []
    for plain_name, comp_name, label, _ in COMPILED:
        plain, comp = rf.load(plain_name), rf.load(comp_name)
        got = None if plain is None or comp is None else ratios(plain["results"]["runs"],
                                                                 comp["results"]["runs"])
        if got:
            out.append(f" In the compiled {label} re-runs ({comp['provenance']['device']}) FM's "
                       f"steps per TVM step {got[1]} ({', '.join(got[0])}; section *Equal GPU "
                       "time with torch.compile*)"
                       + ("." if got[1] == "rose for every run" else
                          ": the step times' suggestion did not hold there."))
    return "".join(out)


def flow_write_fits(runs: dict[str, dict]) -> list[tuple[float, float]]:
    """(seconds per checkpoint write, standard error) fitted for each flow-map run of a file
    whose writes were inside the clock, sorted; FM's fits are loose (few segments, similar
    write counts), so a write's cost is taken from these."""
    return sorted(f for r in runs.values() if r["config"]["loss"]["name"] != "fm"
                  and (f := checkpoint_write_fit(r)) is not None)


def write_cost(runs: dict[str, dict]) -> float | None:
    """Seconds per checkpoint write inside the clock for a file's runs: the median of its
    flow-map runs' fits (:func:`flow_write_fits`); None without a fit."""
    fits = flow_write_fits(runs)
    return float(np.median([w for w, _ in fits])) if fits else None


def _checkpoint_note() -> str:
    """The checkpoint writes the committed equal-time runs counted as training time, and their
    cost fitted from the runs' evaluated segments (``timing.checkpoint_write_fit``)."""
    d, mnist = rf.load("06_fashion_equal_time_300s.json"), rf.load("06_mnist_equal_time.json")
    if d is None:
        return ""
    runs = d["results"]["runs"]
    every = runs["fm"]["config"]["train"]["ckpt_every"]
    writes = {n: runs[n]["steps_done"] // every for n in ("fm", "tvm_w15", "meanflow_w15")}
    flow = flow_write_fits(runs)
    fm_own = [checkpoint_write_fit(x["results"]["runs"]["fm"]) for x in (d, mnist) if x]
    tvm_own = checkpoint_write_fit(runs["tvm_w15"])
    cost = ""
    if flow and None not in fm_own and tvm_own is not None:
        med = write_cost(runs)
        ses = sorted(se for _, se in flow)
        own = " and ".join(f"{rf.fmt(w)} ± {rf.fmt(se)} s" for w, se in fm_own)
        cost = (" Fitting each run's evaluated segments (seconds = steps x a + writes x b) "
                f"gives {rf.fmt(med)} s per write for the flow-map runs (median of {len(flow)}, "
                f"{rf.fmt(min(flow)[0])} to {rf.fmt(max(flow)[0])}, standard errors "
                f"{rf.fmt(ses[0])} to {rf.fmt(ses[-1])}). FM's own fit is loose, {own} (Fashion-"
                "MNIST" + (" and MNIST" if len(fm_own) > 1 else "") + "), and "
                + ("agrees with theirs within two standard errors"
                   if all(abs(w - med) <= 2 * se for w, se in fm_own)
                   else "differs from theirs by more than two standard errors")
                + f". FM's writes took about {rf.fmt(writes['fm'] * med)} of its "
                f"{rf.fmt(runs['fm']['train_s'])} s at the flow-map median "
                f"({rf.fmt(writes['fm'] * fm_own[0][0])} at its own fit); TVM's about "
                f"{rf.fmt(writes['tvm_w15'] * tvm_own[0])} at its own.")
    return (f" **Checkpoint writes inside the clock.** These runs also counted their checkpoint "
            f"writes (every {every} steps) as training time, so the methods with more steps "
            "paid for more of them: in the 300-second Fashion-MNIST runs (seed 0) FM wrote "
            f"{writes['fm']}, MeanFlow {writes['meanflow_w15']} and TVM {writes['tvm_w15']} "
            f"(`_w15`).{cost} Runs made since leave the writes out of the training clock and "
            "record their seconds (`ckpt_s`).")


# (uncompiled file, compiled file, label, a compiled FM run on the uncompiled runs' GPU or None)
COMPILED = (("06_fashion_equal_time_300s.json", "06_fashion_equal_time_compiled.json",
             "Fashion-MNIST", "06_fashion_fm_compiled_h200.json"),
            ("06_mnist_equal_time.json", "06_mnist_equal_time_compiled.json", "MNIST", None))


def _rerun_state() -> str:
    docs = [(label, rf.load(comp)) for _, comp, label, _ in COMPILED]
    made = [f"{label} ({', '.join(d['results']['runs'])})" for label, d in docs if d is not None]
    return ("Compiled re-runs made so far: " + "; ".join(made)
            + " (section *Equal GPU time with torch.compile*)." if made
            else "The runs above are not repeated compiled.")


def rate(rec: dict, write_s: float) -> float:
    """Steps per training second with checkpoint writes out of the clock: a run that counted
    them inside (no ``ckpt_s``) has its writes taken out at ``write_s`` each."""
    return rec["steps_done"] / (rec["train_s"] - writes_in_clock(rec) * write_s)


def ratios(plain: dict, comp: dict) -> tuple[list[str], str, float] | None:
    """FM's steps per TVM step (per training second, writes out of both clocks) uncompiled ->
    compiled per TVM run, a warm-started run at the steps a cold start would have made (its
    head start at its steady rate after the first evaluation): (["run a -> b", ...], whether the
    ratio rose or fell, the write cost used); None without both sides."""
    w = write_cost(plain)
    if "fm" not in comp or "fm" not in plain or w is None:
        return None
    head = {x["run"]: x["head_s"] for x in warm_starts(comp)}
    said, moves = [], []
    for n in [n for n in ("tvm_w15", "tvm") if n in comp and n in plain]:
        r, e = comp[n], comp[n]["evals"]
        before = rate(plain["fm"], w) / rate(plain[n], w)
        after = rate(comp["fm"], w) / rate(r, w)
        if n in head:
            steady = (r["steps_done"] - e["step"][1]) / (r["train_s"] - e["train_s"][1])
            after = comp["fm"]["steps_done"] / (r["steps_done"] - head[n] * steady)
        moves.append(after > before)
        said.append(f"{n} {rf.fmt(before)} -> {rf.fmt(after)}"
                    + (" (from a cold start)" if n in head else ""))
    verdict = ("rose for every run" if all(moves) else "fell for every run" if not any(moves)
               else "rose for some runs and fell for others")
    return said, verdict, w
