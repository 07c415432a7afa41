"""The README's image-comparison tables (notebook 06): FM, MeanFlow, TVM and the CMT chain at
equal GPU time on Fashion-MNIST and MNIST, TVM's ablations on images, and the glance table."""

from __future__ import annotations

import numpy as np

from tvmlib.apps import readme_format as rf
from tvmlib.experiments.results import (
    UNSETTLED,
    ablation_verdicts,
    best_sweep,
    best_sweep_within,
    best_variant,
    compiled_pairs,
    compiled_targets,
    equal_time_summary,
    equal_time_targets,
    fewest_nfe_below,
    last_eval,
    mean_sd,
    seed_groups,
    target_init_share,
)
from tvmlib.experiments.timing import checkpoint_write_fit, compile_speedups, startup_seconds
from tvmlib.training.config import load_experiment
from tvmlib.utils.paths import repo_root


def table_equal_time() -> str:
    name = "06_fashion_equal_time.json"
    d = rf.need(name, "run `python -m tvmlib.apps.experiment "
                      "configs/experiments/fashion_equal_time.yaml`")
    runs, floor = d["results"]["runs"], d["results"]["reference_fd"]["by_n"]
    rows, targets = _seed_rows(runs), _target_rows(runs)
    return (f"Class-conditional {runs['fm']['config']['model']['preset']} from scratch, the same "
            "GPU seconds per method with every stage counted; `_w15`: guidance w = 1.5 folded "
            "into training; `tvm_250s`: the seed-0 TVM run continued to 250 s. Final classifier "
            "FD of 10000 EMA samples at each step count, mean ± std over the training seeds "
            "(real training images: "
            f"{rf.fmt(floor['10000'])}):\n\n"
            + rf.table(["run", "seeds", "GPU s, all stages", "steps", "FD by steps"], rows)
            + f"\n\nTargets, at 2000 samples (floor {rf.fmt(floor['2000'])}), each method at its "
            "best variant (FM: each seed's best sampler of its sweep), mean ± std over seeds:\n\n"
            + rf.table(["target", "value", "bound", "runs", ""], targets)
            + "\n\n" + rf.source(name, d["provenance"])
            + rf.optional("06_fashion_equal_time_300s.json", _equal_time_longer))


def _equal_time_longer(runs: dict, source: str, d: dict) -> str:
    """The same comparison at three times the budget (training seeds where made), then the TVM
    ablations."""
    fm = best_sweep(runs["fm"])
    return ("\n\n**The same at 300 GPU s per method** "
            "(`configs/experiments/fashion_equal_time_300s.yaml`): FM; TVM and "
            "MeanFlow with w = 1.5 folded into training (`_w15`, their better variants at 100 s) "
            "and without (`tvm`, `meanflow`); the "
            "CMT chain inside the same seconds: an FM `teacher`, CMT mid-training (`mid`), then "
            "TVM post-training from the mid-trained weights (`cmt_w15`) or from the teacher's "
            "(`teacher_init_w15`); last, `fm_few_steps`, FM trained again with fm's settings and "
            "seed and scored at 1, 2 and 4 steps ("
            f"{_not_made('fashion_equal_time_300s', runs)}). Final FD of 10000 EMA samples, "
            "mean ± std over the training seeds where a run has more than one:\n\n"
            + rf.table(["run", "seeds", "GPU s, all stages", "steps", "FD by steps"],
                       _seed_rows(runs))
            + f"\n\nFM's best sampler with seed 0 (2000 samples): {fm['solver']}, {fm['steps']} "
            f"steps, guidance {fm['cfg_scale']}, FD {rf.fmt(fm['fd'])}. " + _few_steps(runs)
            + "Targets at 2000 samples, "
            "means over seeds (a chain's value: the GPU seconds at which it first reached "
            "scratch's final 1-jump FD, one seed):\n\n"
            + rf.table(["target", "value", "bound", "runs", ""], _target_rows(runs))
            + "\n\n" + source + rf.optional("06_fashion_tvm_ablations.json", _ablations))


def _sampler(row: dict) -> str:
    return (f"{row['solver']}, {row['steps']} step{'s' * (row['steps'] > 1)}, guidance "
            f"{row['cfg_scale']}: FD {rf.fmt(row['fd'])} at {row['nfe']} NFE")


FM_RUNS = ("fm", "fm_few_steps")  # FM and its few-step re-run, whose sweeps are read together


def _fm_runs(runs: dict[str, dict]) -> list[dict]:
    return [runs[n] for n in FM_RUNS if n in runs]


def _seeds(n: int) -> str:
    return f"{n} seed{'s' * (n > 1)}"


def _few_steps(runs: dict[str, dict]) -> str:
    """FM at few NFE against TVM's one jump (seed 0, 2000 samples), from the sweeps of ``fm``
    and of its few-step re-run ``fm_few_steps`` where there is one; "" without FM rows at 4 NFE
    or less."""
    names = [n for n in FM_RUNS if n in runs]
    fms = _fm_runs(runs)
    tvm = best_variant(seed_groups(runs), ("tvm", "tvm_w15"))  # as in the targets
    few, one = best_sweep_within(fms, 4), last_eval(runs[tvm])
    if few is None:
        return ""
    match = fewest_nfe_below(fms, one)
    sweeps = " and ".join(f"`{n}`" for n in names)
    return (f"**At equal NFE** (the sweeps of {sweeps}, 2000 samples): FM's best with at most 4 "
            "NFE is "
            f"{_sampler(few)}, against {rf.fmt(one)} for {tvm}'s one jump (seed 0); FM first "
            "matches that one jump with "
            + (_sampler(match) if match else "none of its samplers") + ". ")


def _seed_rows(runs: dict[str, dict]) -> list[list]:
    """[run, seeds, GPU s all stages, steps, "k: FD (+- sd), ..."] per method and its seeds."""
    return [[r["run"], r["seeds"], r["total_s"], round(r["steps"]),
             ", ".join(f"{k}: {rf.pm(m, sd, r['seeds'])}" for k, (m, sd) in r["fd"].items())]
            for r in equal_time_summary(runs)]


def _target_rows(runs: dict[str, dict]) -> list[list]:
    """[target, value, bound, runs, hit/miss] of issue 14's targets, means +- sd over seeds."""
    return _targets(equal_time_targets(runs))


def _targets(targets: list[dict]) -> list[list]:
    return [[t["target"], "never" if t["value"] is None else
             rf.pm(t["value"], t["value_sd"], t["seeds"][0]),
             rf.pm(t["bound"], t["bound_sd"], t["seeds"][1]), " vs ".join(t["runs"]),
             "hit" if t["hit"] else "miss"] for t in targets]


def _not_made(config: str, runs: dict) -> str:
    """A clause naming the runs of ``configs/experiments/<config>.yaml`` that ``runs`` has no
    record of."""
    path = repo_root() / "configs" / "experiments" / f"{config}.yaml"
    missing = [r.name for r in load_experiment(path)[1] if r.name not in runs]
    return ("not made yet: " + ", ".join(missing)) if missing else "every run of the config made"


def table_mnist() -> str:
    name = "06_mnist_equal_time.json"
    d = rf.need(name, "run `python -m tvmlib.apps.experiment "
                      "configs/experiments/mnist_equal_time.yaml`")
    runs, floor = d["results"]["runs"], d["results"]["reference_fd"]["by_n"]
    fm = best_sweep(runs["fm"])
    return (f"Class-conditional {runs['fm']['config']['model']['preset']} on MNIST 32x32 from "
            "scratch, the Fashion-MNIST protocol at 300 GPU s per method "
            "(`configs/experiments/mnist_equal_time.yaml`; "
            f"{_not_made('mnist_equal_time', runs)}). Final classifier FD "
            f"of 10000 EMA samples (real training images: {rf.fmt(floor['10000'])}):\n\n"
            + rf.table(["run", "seeds", "GPU s, all stages", "steps", "FD by steps"],
                       _seed_rows(runs))
            + f"\n\nFM's best sampler with seed 0 (2000 samples): {_sampler(fm)}. "
            + _few_steps(runs)
            + f"Targets at 2000 samples (floor {rf.fmt(floor['2000'])}), means over the "
            "training seeds where a run has several:\n\n"
            + rf.table(["target", "value", "bound", "runs", ""], _target_rows(runs))
            + "\n\n" + rf.source(name, d["provenance"]))


def _ablations(runs: dict, source: str, d: dict) -> str:
    """The paper's TVM ablations on Fashion-MNIST (one seed each, base with its training seeds),
    as far as they were run, each read against base's seed spread."""
    verdict = {v["run"]: v["verdict"] + (
        f" (its target still holds {target_init_share(runs[v['run']]):.0%} of its "
        "initialisation: not settled)" if target_init_share(runs[v["run"]]) > UNSETTLED else "")
        for v in ablation_verdicts(runs)}
    rate = {base: mean_sd([r["steps_per_s"] for r in recs])[0]  # a seed mean, as the steps
            for base, recs in seed_groups(runs).items()}
    rows = [row[:4] + [rate[row[0]]] + row[4:] + [verdict.get(row[0], "")]
            for row in _seed_rows(runs)]
    return ("\n\n**TVM ablations** (`configs/experiments/fashion_tvm_ablations.yaml`: the "
            "`tvm_w15` recipe with one change per run, the same GPU seconds; one seed per change "
            f"and {len(seed_groups(runs)['base'])} training seeds of `base`; "
            f"{len(runs)} of its {len(d['results']['config']['runs'])} runs made). "
            "Final FD of 10000 EMA samples; a change is called better or worse at 1 jump only "
            "when it lies more than two of base's seed standard deviations from base's mean:\n\n"
            + rf.table(["run", "seeds", "GPU s", "steps", "steps / s", "FD by jumps",
                        "1 jump vs base"], rows)
            + "\n\n" + source)


GLANCE = (("06_fashion_equal_time.json", "Fashion-MNIST, 100 GPU s"),
          ("06_fashion_equal_time_300s.json", "Fashion-MNIST, 300 GPU s"),
          ("06_mnist_equal_time.json", "MNIST, 300 GPU s"))


def table_glance() -> str:
    """One row per image comparison: TVM's jumps against FM at any NFE and at most 4 NFE, and
    MeanFlow (2000 samples, as the targets), with the count of targets hit."""
    rows, beats_few, beats_best, mf_beats_4, sweeps = [], [], [], [], []
    for name, label in GLANCE:
        d = rf.load(name)
        if d is None:
            continue
        runs = d["results"]["runs"]
        t = equal_time_targets(runs)
        few = best_sweep_within(_fm_runs(runs), 4)
        mf4_text, mf4 = _meanflow_4(runs)
        mf_beats_4.append(mf4 < t[1]["value"])
        rows.append([label, f"{rf.pm(t[0]['value'], t[0]['value_sd'], t[0]['seeds'][0])} "
                     f"({t[0]['runs'][0]}, {_seeds(t[0]['seeds'][0])})",
                     rf.pm(t[1]["value"], t[1]["value_sd"], t[1]["seeds"][0])
                     + (f" ({t[1]['runs'][0]})" if t[1]["runs"][0] != t[0]["runs"][0] else ""),
                     f"{rf.pm(t[1]['bound'], t[1]['bound_sd'], t[1]['seeds'][1])} "
                     f"({_seeds(t[1]['seeds'][1])})",
                     "not measured" if few is None
                     else f"{rf.fmt(few['fd'])} ({few['nfe']} NFE, seed 0)",
                     f"{rf.pm(t[2]['bound'], t[2]['bound_sd'], t[2]['seeds'][1])} "
                     f"({t[2]['runs'][1]}, {_seeds(t[2]['seeds'][1])})", mf4_text,
                     f"{sum(x['hit'] for x in t)} of {len(t)}"])
        beats_best.append(t[0]["value"] <= t[1]["bound"])
        sweeps += [r["sweep"] for r in seed_groups(runs)["fm"] if r.get("sweep")]
        if few is not None:
            beats_few.append(t[0]["value"] < few["fd"])
    if not rows:
        return "No image comparison is recorded yet."
    verdict = (f"TVM's one jump beats FM's best sampler with at most 4 NFE in "
               f"{sum(beats_few)} of the {len(beats_few)} comparisons that measured FM there, "
               f"and reaches the best of FM's sweep in {sum(beats_best)} of {len(beats_best)}; "
               f"MeanFlow's four jumps are below TVM's in {sum(mf_beats_4)} of "
               f"{len(mf_beats_4)}.")
    at_end = sum(min(sw, key=lambda x: x["fd"])["steps"] == max(x["steps"] for x in sw)
                 for sw in sweeps)
    rows_all = [x for sw in sweeps for x in sw]
    verdict += (f" FM's best is the best row of its sweep (up to "
                f"{max(x['steps'] for x in rows_all)} solver steps, "
                f"{max(x['nfe'] for x in rows_all)} NFE); it lies at the "
                f"sweep's largest step count in {at_end} of its {len(sweeps)} sweeps (all "
                "seeds), so more steps could lower it further, which would only widen the gaps "
                "to TVM.")
    return ("Classifier FD at 2000 samples (lower is better), mean ± std over training seeds "
            "where there are several; each flow map at its better variant among those run (at "
            "each column's number of jumps); the "
            "sections below give every run, the 10000-sample finals and each target. "
            + verdict + "\n\n"
            + rf.table(["comparison", "TVM 1 jump", "TVM 4 jumps", "FM best of its sweep",
                        "FM best, <= 4 NFE", "MeanFlow 1 jump", "MeanFlow 4 jumps", "targets hit"],
                       rows) + _compile_note(SMALL_STEP))


SMALL_STEP = "train_step_small_nvidia-h200.json"  # the equal-time runs' step, benchmarked


def _speedups(name: str = SMALL_STEP) -> tuple[dict | None, dict | None]:
    """(benchmark file, :func:`compile_speedups` of its rows), Nones without the file."""
    d = rf.load(name)
    return d, None if d is None else compile_speedups(d["results"]["rows"])


def _jvp_of(name: str) -> str:
    """How the TVM runs of a results file computed dF/ds: ``model.jvp``, or "func" for runs
    made before the key existed (torch.func.jvp was then the only way)."""
    d = rf.load(name)
    tvm = [r for r in d["results"]["runs"].values() if r["config"]["loss"]["name"] == "tvm"]
    return tvm[0]["config"]["model"].get("jvp", "func") if tvm else "none"


def _compile_note(name: str) -> str:
    """What torch.compile does to the step these comparisons ran (DiT-S/4, batch 128, CUDA
    graphs, no compile), from the benchmark file ``name``, for the dF/ds each one used."""
    d, ms = _speedups(name)
    if ms is None:
        return ""
    rows = d["results"]["rows"]
    (model, batch), = {(r["model"], r["batch"]) for r in rows}  # one step
    fm, fmc, tvm, tvmc = ms["fm"], ms["fm_compiled"], ms["tvm"], ms["tvm_compiled"]
    func = min((r["ms_per_step"] for r in rows if r["status"] == "ok" and r.get("cuda_graph")
                and r.get("loss_name", "tvm") == "tvm" and r.get("jvp") == "func"), default=None)
    by_jvp = {}
    for file, label in GLANCE:
        if rf.load(file) is not None:
            by_jvp.setdefault(_jvp_of(file), []).append(f"*{label}*")
    older = "" if func is None or "func" not in by_jvp else (
        f" The {' and '.join(by_jvp['func'])} runs predate the fused dF/ds: their TVM step ran "
        f"torch.func.jvp ({rf.fmt(func)} ms, a ratio of {rf.fmt(func / fm)} to FM), so for "
        "them compiling both would give TVM relatively more steps.")
    return ("\n\n**Not every method at its best: torch.compile.** These runs used CUDA graphs "
            f"without torch.compile. At their step ({model}, batch {batch}, one "
            f"{d['provenance']['device']}) compiling "
            f"makes FM's step {rf.fmt(fm / fmc)}x faster ({rf.fmt(fm)} -> {rf.fmt(fmc)} ms) "
            f"and TVM's {rf.fmt(tvm / tvmc)}x ({rf.fmt(tvm)} -> {rf.fmt(tvmc)} ms, from the "
            "fused dF/ds to `model.jvp=compiled`, which for FM compiles the whole network). The "
            f"TVM-to-FM step-time ratio goes from {rf.fmt(tvm / fm)} to {rf.fmt(tvmc / fmc)}, "
            f"so for the rows with the fused dF/ds ({' and '.join(by_jvp.get('fused', []))}) "
            "equal-time runs with both compiled would give FM relatively more steps than they "
            f"did.{older} MeanFlow cannot gain this way: inside its torch.func.jvp a compiled "
            "network runs eagerly. " + _rerun_state() + _checkpoint_note() + " "
            + rf.source(name, d["provenance"]))


def _flow_write_fits(runs: dict[str, dict]) -> list[tuple[float, float]]:
    """(seconds per checkpoint write, standard error) fitted for each flow-map run of a file
    whose writes were inside the clock, sorted; FM's fits are loose (few segments, similar
    write counts), so a write's cost is taken from these."""
    return sorted(f for r in runs.values() if r["config"]["loss"]["name"] != "fm"
                  and (f := checkpoint_write_fit(r)) is not None)


def _checkpoint_note() -> str:
    """The checkpoint writes the committed equal-time runs counted as training time, and their
    cost fitted from the runs' evaluated segments (``timing.checkpoint_write_fit``)."""
    d, mnist = rf.load("06_fashion_equal_time_300s.json"), rf.load("06_mnist_equal_time.json")
    if d is None:
        return ""
    runs = d["results"]["runs"]
    every = runs["fm"]["config"]["train"]["ckpt_every"]
    writes = {n: runs[n]["steps_done"] // every for n in ("fm", "tvm_w15", "meanflow_w15")}
    flow = _flow_write_fits(runs)
    fm_own = [checkpoint_write_fit(x["results"]["runs"]["fm"]) for x in (d, mnist) if x]
    tvm_own = checkpoint_write_fit(runs["tvm_w15"])
    cost = ""
    if flow and None not in fm_own and tvm_own is not None:
        med = float(np.median([w for w, _ in flow]))
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


COMPILED = (("06_fashion_equal_time_300s.json", "06_fashion_equal_time_compiled.json",
             "Fashion-MNIST"),
            ("06_mnist_equal_time.json", "06_mnist_equal_time_compiled.json", "MNIST"))


def _rerun_state() -> str:
    docs = [(label, rf.load(comp)) for _, comp, label in COMPILED]
    made = [f"{label} ({', '.join(d['results']['runs'])})" for label, d in docs if d is not None]
    return ("Compiled re-runs made so far: " + "; ".join(made)
            + " (section *Equal GPU time with torch.compile*)." if made
            else "The runs above are not repeated compiled.")


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
    ms, fits = _speedups()[1], _flow_write_fits(plain)
    bench = "" if ms is None or not fits else _fm_overhead(g[0], fm, ms,
                                                         float(np.median([w for w, _ in fits])))
    return (f"\n\nFM compiled made {rf.fmt(rate / rate0)}x the steps per second of its "
            f"uncompiled seeds ({rf.fmt(rate)} against {rf.fmt(rate0)}).{bench} Its final FD "
            f"at {k} Euler steps is {rf.fmt(fm['final']['ema'][k])} against "
            f"{rf.pm(m, sd, len(g))} over the {len(g)} uncompiled training seeds."
            + ("" if startup_seconds(fm) is None else
               f" About {rf.fmt(startup_seconds(fm))} of its {rf.fmt(fm['train_s'])} training "
               "seconds went to compiling and capturing before the steady rate (its first "
               "evaluated segment against the later ones' seconds per step; "
               f"{rf.fmt(startup_seconds(g[0]))} for the uncompiled seed 0)."))


def _fm_overhead(plain: dict, comp: dict, ms: dict, write_s: float) -> str:
    """A training step of FM uncompiled (seed 0) and compiled against the benchmark's step: the
    startup and the checkpoint writes inside the clock taken out, what the loop adds."""
    parts = []
    for rec, bench in ((plain, ms["fm"]), (comp, ms["fm_compiled"])):
        n = rec["steps_done"]
        writes = 0 if "ckpt_s" in rec else n // rec["config"]["train"]["ckpt_every"]
        start = startup_seconds(rec) or 0.0
        step = 1000 * rec["train_s"] / n
        rest = step - 1000 * (start + writes * write_s) / n
        parts.append({"step": step, "start": start, "start_ms": 1000 * start / n,
                      "writes": writes, "writes_ms": 1000 * writes * write_s / n,
                      "rest": rest, "extra": rest - bench})
    a, b = parts
    pair = lambda key: f"{rf.fmt(a[key])} -> {rf.fmt(b[key])}"  # noqa: E731
    return (f" The benchmark's step alone is {rf.fmt(ms['fm'] / ms['fm_compiled'])}x faster "
            f"compiled ({rf.fmt(ms['fm'])} -> {rf.fmt(ms['fm_compiled'])} ms), while a training "
            f"step took {pair('step')} ms (seed 0: training seconds over steps). Of that, the "
            f"startup took {pair('start_ms')} ms a step ({pair('start')} s) and the checkpoint "
            f"writes inside the clock, at {rf.fmt(write_s)} s each, {pair('writes_ms')} ms "
            f"({a['writes']} and {b['writes']} writes). What is left, {pair('rest')} ms, is "
            f"{pair('extra')} ms a step more than the benchmark's step: loop work that compiling "
            "does not shorten, not yet measured part by part (`python -m "
            "tvmlib.apps.bench.loop_profile` now splits it by part of the step).")


def table_compiled() -> str:
    """The 300-second comparisons repeated with torch.compile (FM, TVM, the CMT chain; MeanFlow
    cannot gain), each run beside its uncompiled seed 0, and the targets with the compiled runs."""
    parts = []
    for plain_name, comp_name, label in COMPILED:
        comp, plain = rf.load(comp_name), rf.load(plain_name)
        if comp is None or plain is None:
            continue
        pr, cr = plain["results"]["runs"], comp["results"]["runs"]
        rows = [[p["run"], f"{p['steps'][0]} -> {p['steps'][1]}",
                 f"{rf.fmt(p['train_s'][0])} -> {rf.fmt(p['train_s'][1])}",
                 " -> ".join("–" if x is None else rf.fmt(x) for x in p["setup_s"]),
                 ", ".join(f"{k}: {rf.fmt(a)} -> {rf.fmt(b)}" for k, (a, b) in p["fd"].items())]
                for p in compiled_pairs(pr, cr)]
        config = comp["results"]["config"]["name"]
        has_tvm = any(n in cr for n in ("tvm", "tvm_w15"))
        header = ["target", "value", "bound", "runs", ""]
        targets = (("\n\nTargets with the compiled runs (MeanFlow's uncompiled runs, all "
                    "seeds), at 2000 samples:\n\n"
                    + rf.table(header, _targets(compiled_targets(pr, cr))))
                   if has_tvm else
                   "\n\nNo TVM run is compiled yet, so the targets are not recomputed: against "
                   "a compiled FM and an uncompiled TVM they would not compare the methods at "
                   "their best.")
        inside = [n for n, r in cr.items() if "ckpt_s" not in r]
        clock = ("" if not inside else " Made with checkpoint writes inside the training "
                 "clock, as the uncompiled runs were: " + ", ".join(inside) + ".")
        parts.append(
            f"**{label}** (`configs/experiments/{config}.yaml`, {_not_made(config, cr)}; one "
            "seed each, against the uncompiled run's seed 0). Final FD of 10000 EMA samples "
            "(`best`: FM's best sampler of its sweep, 2000 samples):\n\n"
            + rf.table(["run", "steps", "train s", "setup s", "FD by steps, uncompiled -> "
                        "compiled"], rows)
            + targets + _fm_compiled_gain(pr, cr) + clock
            + "\n\n" + rf.source(comp_name, comp["provenance"]))
    if not parts:
        raise rf.Missing("*No compiled re-run yet: run `python -m tvmlib.apps.experiment "
                         "configs/experiments/fashion_equal_time_compiled.yaml` on a GPU.*")
    return ("The 300-second comparisons again with `model.jvp: compiled` (torch.compile: FM's "
            "whole network, TVM's blocks around the attention), the compile time inside the "
            "training clock; the same data, network, batch, seeds and training seconds. The "
            "setup before the first step (building the network, loss and data source; loading "
            "initial weights or a teacher; CMT's trajectory pool) is outside the training "
            "seconds, as in every comparison here; `setup s` gives it.\n\n"
            + "\n\n".join(parts))


def _meanflow_4(runs: dict[str, dict]) -> tuple[str, float]:
    """MeanFlow's 4-jump FD at its better variant there (2000 samples, mean +- sd over seeds),
    as a cell and as the mean."""
    g = seed_groups(runs)
    mf = best_variant(g, ("meanflow", "meanflow_w15"), "fd_4")
    m, sd = mean_sd([last_eval(r, "fd_4") for r in g[mf]])
    return f"{rf.pm(m, sd, len(g[mf]))} ({mf})", m
