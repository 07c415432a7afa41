"""The README's section on the equal-time comparisons repeated with torch.compile
(``tvmlib.apps.readme``): each compiled run beside its uncompiled seed 0, the GPUs, the targets,
equal NFE, warm compile caches and FM's compile gain on one GPU."""

from __future__ import annotations

from tvmlib.apps import readme_format as rf
from tvmlib.apps.readme_clock import (
    COMPILED,
    flow_write_fits,
    rate,
    ratios,
    speedups,
    write_cost,
)
from tvmlib.experiments.results import (
    compiled_pairs,
    compiled_targets,
    fewest_nfe_below,
    last_eval,
    mean_sd,
    seed_groups,
)
from tvmlib.experiments.timing import (
    checkpoint_write_fit,
    cold_equivalent,
    startup_seconds,
    warm_starts,
    write_seconds,
    writes_in_clock,
)


def _fm_compiled_gain(plain: dict, comp: dict) -> str:
    """FM's compiled run against its uncompiled training seeds: steps per second (beside the
    benchmark's step times) and the final FD at its most Euler steps (10000 samples)."""
    if "fm" not in comp or "fm" not in plain:
        return ""
    g, fm = seed_groups(plain)["fm"], comp["fm"]
    k = max(fm["final"]["ema"], key=int)
    m, sd = mean_sd([r["final"]["ema"][k] for r in g])
    rate = fm["steps_done"] / fm["train_s"]
    rate0 = mean_sd([r["steps_done"] / r["train_s"] for r in g])[0]
    ms, w, own = speedups()[1], write_cost(plain), checkpoint_write_fit(g[0])
    bench = "" if ms is None or w is None else _fm_overhead(
        g[0], fm, ms, w, None if own is None else own[0])
    return (f"\n\nFM compiled made {rf.fmt(rate / rate0)}x the steps per second of its "
            f"uncompiled seeds ({rf.fmt(rate)} against {rf.fmt(rate0)}).{bench} Its final FD "
            f"at {k} Euler steps is {rf.fmt(fm['final']['ema'][k])} against "
            f"{rf.pm(m, sd, len(g))} over the {len(g)} uncompiled training seeds (one compiled "
            "seed)."
            + ("" if startup_seconds(fm) is None else
               f" About {rf.fmt(startup_seconds(fm))} of its {rf.fmt(fm['train_s'])} training "
               "seconds went to compiling and capturing before the steady rate (its first "
               "evaluated segment against the later ones' seconds per step; "
               f"{rf.fmt(startup_seconds(g[0]))} for the uncompiled seed 0)."))


def _loop_parts(plain: dict, comp: dict, ms: dict, write_s: float) -> tuple[dict, dict]:
    """A training step of FM uncompiled and compiled split into startup, checkpoint writes
    inside the clock (at ``write_s`` each) and the rest, against the benchmark's step."""
    parts = []
    for rec, bench in ((plain, ms["fm"]), (comp, ms["fm_compiled"])):
        n = rec["steps_done"]
        writes = writes_in_clock(rec)
        start = startup_seconds(rec) or 0.0
        step = 1000 * rec["train_s"] / n
        rest = step - 1000 * (start + writes * write_s) / n
        parts.append({"step": step, "start": start, "start_ms": 1000 * start / n,
                      "writes": writes, "writes_ms": 1000 * writes * write_s / n,
                      "rest": rest, "extra": rest - bench})
    return parts[0], parts[1]


def _fm_overhead(plain: dict, comp: dict, ms: dict, write_s: float,
                 own_s: float | None) -> str:
    """A training step of FM uncompiled (seed 0) and compiled against the benchmark's step: the
    startup and the checkpoint writes inside the clock taken out, what the loop adds; also at
    FM's own fitted write cost ``own_s``."""
    a, b = _loop_parts(plain, comp, ms, write_s)
    pair = lambda key: f"{rf.fmt(a[key])} -> {rf.fmt(b[key])}"  # noqa: E731
    alt = "" if own_s is None else (
        " ({} -> {} ms at FM's own fitted {} s a write)".format(
            *(rf.fmt(x["extra"]) for x in _loop_parts(plain, comp, ms, own_s)), rf.fmt(own_s)))
    return (f" The benchmark's step alone is {rf.fmt(ms['fm'] / ms['fm_compiled'])}x faster "
            f"compiled ({rf.fmt(ms['fm'])} -> {rf.fmt(ms['fm_compiled'])} ms), while a training "
            f"step took {pair('step')} ms (seed 0: training seconds over steps). Of that, the "
            f"startup took {pair('start_ms')} ms a step ({pair('start')} s) and the checkpoint "
            f"writes inside the clock, at {rf.fmt(write_s)} s each, {pair('writes_ms')} ms "
            f"({a['writes']} and {b['writes']} writes). What is left, {pair('rest')} ms, is "
            f"{pair('extra')} ms a step more than the benchmark's step{alt}: loop work that "
            "compiling does not shorten, not yet measured part by part (`python -m "
            "tvmlib.apps.bench.loop_profile` now splits it by part of the step).")


def _devices(plain: dict, comp: dict, same_gpu_fm: dict | None) -> str:
    """Which GPU each side of a compiled comparison ran on, and FM compiled on both where a
    compiled FM run exists on the uncompiled runs' GPU (its writes inside the clock taken out
    at the flow-map runs' fitted cost)."""
    a, b = plain["provenance"]["device"], comp["provenance"]["device"]
    if a == b:
        return ""
    out = (f"\n\nThe compiled runs ran on an {b}, the uncompiled ones on an {a} (no {a} was "
           f"lent in that session; FM was re-run on the {b} so that every compiled run shares "
           "one GPU): across the arrows steps and FD change with the GPU and with the checkpoint "
           "writes leaving the clock as well as with compiling, so compare the compiled runs "
           "with each other.")
    w = write_cost(plain["results"]["runs"])
    fm = comp["results"]["runs"].get("fm")
    other = (same_gpu_fm or {"results": {"runs": {}}})["results"]["runs"].get("fm")
    if fm is None or other is None or w is None or not writes_in_clock(other):
        return out
    return out + (f" FM compiled made {rf.fmt(rate(fm, w))} steps a training second on the {b} "
                  f"and {rf.fmt(rate(other, 0.0))} on the {a}, or {rf.fmt(rate(other, w))} with "
                  f"its {writes_in_clock(other)} checkpoint writes taken out at {rf.fmt(w)} s "
                  "each.")


def _step_ratios(plain: dict, comp: dict) -> str:
    """:func:`readme_clock.ratios` against the benchmark's step-time ratios."""
    ms, got = speedups()[1], ratios(plain, comp)
    if ms is None or got is None:
        return ""
    said, verdict, w = got
    return (" FM's steps per TVM step, per training second with the checkpoint writes out of "
            f"both clocks (the uncompiled runs' at {rf.fmt(w)} s each), uncompiled (seed 0) -> "
            "compiled: " + ", ".join(said) + f": it {verdict}, where the benchmark's step "
            f"times suggested {rf.fmt(ms['tvm'] / ms['fm'])} -> "
            f"{rf.fmt(ms['tvm_compiled'] / ms['fm_compiled'])} (one H200, the step without the "
            "loop).")


def _equal_nfe(comp: dict) -> str:
    """The fewest NFE at which the compiled FM run's sweep matches each compiled TVM run's one
    and four jumps (2000 samples); a warm-started run also as cut back to a cold start."""
    if "fm" not in comp or not comp["fm"].get("sweep"):
        return ""
    cut, said = cold_equivalent(comp), []
    for n in ("tvm_w15", "tvm"):
        for runs, how in ((comp, ""), (cut, ", cut back to a cold start")):
            if n not in runs or (how and runs[n] is comp[n]):
                continue
            for k in ("fd_1", "fd_4"):
                fd = last_eval(runs[n], k)
                match = fewest_nfe_below([comp["fm"]], fd)
                said.append(f"{n}{how}, {k[3:]} jump{'s' * (k != 'fd_1')} ({rf.fmt(fd)}): "
                            + (rf.sampler(match) if match else "none of its samplers"))
    start = min(r["nfe"] for r in comp["fm"]["sweep"])
    return ("\n\n**At equal NFE** (compiled runs, 2000 samples; FM's sweep starts at "
            f"{start} NFE, so a match there may come with fewer): FM first matches "
            + "; ".join(said) + ".")


def _warm(plain: dict, comp: dict) -> str:
    """Runs that started with a warm compile cache, and the targets with each cut back to a cold
    start's training seconds (``timing.cold_equivalent``)."""
    warm = warm_starts(comp)
    if not warm:
        return ""
    said = [f"{w['run']}'s first step (compiling and capturing) took {rf.fmt(w['first_s'])} s "
            f"against {rf.fmt(w['like_first_s'])} s for {w['like']}" for w in warm]
    cut = cold_equivalent(comp)
    same = [a["hit"] == b["hit"] for a, b in zip(compiled_targets(plain, comp),
                                                 compiled_targets(plain, cut))]
    at = "; ".join(f"{w['run']} at {rf.fmt(cut[w['run']]['train_s'])} s: 1 jump "
                   f"{rf.fmt(last_eval(cut[w['run']]))}, 4 jumps "
                   f"{rf.fmt(last_eval(cut[w['run']], 'fd_4'))}" for w in warm)
    return ("\n\n**A warm compile cache.** " + "; ".join(said) + ": it ran after the other "
            "on the same machine (the file's provenance note) and found its compiled kernels "
            f"there, a head start of {', '.join(rf.fmt(w['head_s']) for w in warm)} s of "
            "steady training that a cold start would not have had. Cut back to that "
            f"(its last evaluation within a cold start's seconds; {at}), "
            + (f"every target keeps its verdict ({len(same)} of {len(same)})." if all(same) else
               f"{same.count(False)} of {len(same)} targets change their verdict.")
            + " Runs of different losses compile different graphs, and eager runs compile "
            "nothing; neither is compared this way (first steps: " + ", ".join(
                f"{n} {rf.fmt(r['first_step_s'][0])} s" for n, r in comp.items()
                if r.get("first_step_s") and n not in {w["run"] for w in warm})
            + "), so a kernel shared between them would go unnoticed."
            + " The compiled configs now set `cold_compile: true`: each run in a fresh process "
            "with empty compile caches (`tvmlib.experiments.isolate`)." + _plain_startups(plain))


def _plain_startups(plain: dict) -> str:
    """The range of the uncompiled runs' startups (``timing.startup_seconds``): how much a warm
    cache could have moved there."""
    got = [x for r in plain.values() if (x := startup_seconds(r)) is not None]
    if not got:
        return ""
    return (f" Without compiling there is little to cache: the uncompiled runs' startups, "
            f"estimated from their evaluated segments, lie between {rf.fmt(min(got))} and "
            f"{rf.fmt(max(got))} s ({len(got)} runs"
            + ("; a negative value is the estimate's noise" if min(got) < 0 else "") + "), "
            "so a warm cache could have moved them by seconds, not tens of seconds.")


def _writes_recorded(comp: dict, plain: dict) -> str:
    """The write cost runs record outside the clock beside the one fitted to the older runs."""
    got = {n: w for n, r in comp.items() if (w := write_seconds(r)) is not None}
    fits = flow_write_fits(plain)
    if not got or not fits:
        return ""
    return (" Recorded outside the clock, a checkpoint write took "
            + ", ".join(f"{rf.fmt(w)} s ({n})" for n, w in got.items())
            + f", against {rf.fmt(write_cost(plain))} s fitted to the "
            f"uncompiled runs' segments ({rf.fmt(fits[0][0])} to {rf.fmt(fits[-1][0])}).")


def _pair_rows(pr: dict, cr: dict) -> list[list[str]]:
    """[run, steps, train s, setup s, first step s, FD by steps], uncompiled -> compiled; a
    run the compiled config leaves eager (CMT's teacher and mid-training) is marked."""
    first = lambda r: r["first_step_s"][0] if r.get("first_step_s") else None  # noqa: E731
    warm = {w["run"] for w in warm_starts(cr)}
    eager = {n for n, r in cr.items() if r["config"]["model"].get("jvp") != "compiled"}
    return [[p["run"] + (" (warm cache)" if p["run"] in warm else "")
             + (" (eager in both)" if p["run"] in eager else ""),
             f"{p['steps'][0]} -> {p['steps'][1]}",
             f"{rf.fmt(p['train_s'][0])} -> {rf.fmt(p['train_s'][1])}",
             " -> ".join("–" if x is None else rf.fmt(x) for x in p["setup_s"]),
             " -> ".join("–" if x is None else rf.fmt(x)
                         for x in (first(pr[p["run"]]), first(cr[p["run"]]))),
             ", ".join(f"{k}: {rf.fmt(a)} -> {rf.fmt(b)}" for k, (a, b) in p["fd"].items())]
            for p in compiled_pairs(pr, cr)]


def table_compiled() -> str:
    """The 300-second comparisons repeated with torch.compile (FM, TVM, the CMT chain; MeanFlow
    cannot gain), each run beside its uncompiled seed 0, and the targets with the compiled runs."""
    parts = []
    for plain_name, comp_name, label, fm_name in COMPILED:
        comp, plain = rf.load(comp_name), rf.load(plain_name)
        if comp is None or plain is None:
            continue
        pr, cr = plain["results"]["runs"], comp["results"]["runs"]
        rows = _pair_rows(pr, cr)
        config = comp["results"]["config"]["name"]
        has_tvm = any(n in cr for n in ("tvm", "tvm_w15"))
        header = ["target", "value", "bound", "runs", ""]
        other = ("" if plain["provenance"]["device"] == comp["provenance"]["device"] else
                 f", on the {plain['provenance']['device']}")
        targets = (("\n\nTargets with the compiled runs (MeanFlow's uncompiled runs, all "
                    f"seeds{other}), at 2000 samples:\n\n"
                    + rf.table(header, rf.targets(compiled_targets(pr, cr))))
                   if has_tvm else
                   "\n\nNo TVM run is compiled yet, so the targets are not recomputed: against "
                   "a compiled FM and an uncompiled TVM they would not compare the methods at "
                   "their best.")
        inside = [n for n, r in cr.items() if "ckpt_s" not in r]
        clock = ("" if not inside else " Made with checkpoint writes inside the training "
                 "clock, as the uncompiled runs were: " + ", ".join(inside) + ".")
        same_gpu = rf.load(fm_name) if fm_name else None
        gain = (_fm_compiled_gain(pr, cr) if same_gpu is None else
                f"\n\n**On the {same_gpu['provenance']['device']} alone**, from an earlier "
                f"FM-only compiled run (`figures/{fm_name}`, writes inside the clock): "
                + _fm_compiled_gain(pr, same_gpu["results"]["runs"]).lstrip())
        parts.append(
            f"**{label}** (`configs/experiments/{config}.yaml`, {rf.not_made(config, cr)}; one "
            "seed each, against the uncompiled run's seed 0). Final FD of 10000 EMA samples "
            "(`best`: FM's best sampler of its sweep, 2000 samples):\n\n"
            + rf.table(["run", "steps", "train s", "setup s", "first step s",
                        "FD by steps, uncompiled -> compiled"], rows)
            + _devices(plain, comp, same_gpu) + _step_ratios(pr, cr)
            + _writes_recorded(cr, pr) + targets + _equal_nfe(cr)
            + _warm(pr, cr) + gain + clock
            + "\n\n" + rf.source(comp_name, comp["provenance"]))
    if not parts:
        raise rf.Missing("*No compiled re-run yet: run `python -m tvmlib.apps.experiment "
                         "configs/experiments/fashion_equal_time_compiled.yaml` on a GPU.*")
    return ("The 300-second comparisons again with `model.jvp: compiled` (torch.compile: FM's "
            "whole network, TVM's blocks around the attention), the compiling inside the "
            "training clock (it happens in the first step), the checkpoint writes outside it "
            "(the uncompiled runs counted them inside); the same data, network, batch, seeds "
            "and training seconds. The "
            "setup before the first step (building the network, loss and data source; loading "
            "initial weights or a teacher; CMT's trajectory pool) is outside the training "
            "seconds, as in every comparison here; `setup s` gives it.\n\n"
            + "\n\n".join(parts))
