"""The README's image-comparison tables (notebook 06): FM, MeanFlow, TVM and the CMT chain at
equal GPU time on Fashion-MNIST and MNIST, TVM's ablations on images, and the glance table."""

from __future__ import annotations

from tvmlib.apps import readme_format as rf
from tvmlib.apps.readme_clock import SMALL_STEP, compile_note
from tvmlib.experiments.results import (
    UNSETTLED,
    ablation_verdicts,
    best_sweep,
    best_sweep_within,
    best_variant,
    equal_time_summary,
    equal_time_targets,
    fewest_nfe_below,
    last_eval,
    mean_sd,
    seed_groups,
    target_init_share,
)
from tvmlib.experiments.timing import cold_equivalent, detach_effects, warm_starts


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
            f"{rf.not_made('fashion_equal_time_300s', runs)}). Final FD of 10000 EMA samples, "
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
            f"{rf.sampler(few)}, against {rf.fmt(one)} for {tvm}'s one jump (seed 0); FM first "
            "matches that one jump with "
            + (rf.sampler(match) if match else "none of its samplers") + ". ")


def _seed_rows(runs: dict[str, dict]) -> list[list]:
    """[run, seeds, GPU s all stages, steps, "k: FD (+- sd), ..."] per method and its seeds."""
    return [[r["run"], r["seeds"], r["total_s"], round(r["steps"]),
             ", ".join(f"{k}: {rf.pm(m, sd, r['seeds'])}" for k, (m, sd) in r["fd"].items())]
            for r in equal_time_summary(runs)]


def _target_rows(runs: dict[str, dict]) -> list[list]:
    """[target, value, bound, runs, hit/miss] of issue 14's targets, means +- sd over seeds."""
    return rf.targets(equal_time_targets(runs))


def table_mnist() -> str:
    name = "06_mnist_equal_time.json"
    d = rf.need(name, "run `python -m tvmlib.apps.experiment "
                      "configs/experiments/mnist_equal_time.yaml`")
    runs, floor = d["results"]["runs"], d["results"]["reference_fd"]["by_n"]
    fm = best_sweep(runs["fm"])
    return (f"Class-conditional {runs['fm']['config']['model']['preset']} on MNIST 32x32 from "
            "scratch, the Fashion-MNIST protocol at 300 GPU s per method "
            "(`configs/experiments/mnist_equal_time.yaml`; "
            f"{rf.not_made('mnist_equal_time', runs)}). Final classifier FD "
            f"of 10000 EMA samples (real training images: {rf.fmt(floor['10000'])}):\n\n"
            + rf.table(["run", "seeds", "GPU s, all stages", "steps", "FD by steps"],
                       _seed_rows(runs))
            + f"\n\nFM's best sampler with seed 0 (2000 samples): {rf.sampler(fm)}. "
            + _few_steps(runs)
            + f"Targets at 2000 samples (floor {rf.fmt(floor['2000'])}), means over the "
            "training seeds where a run has several:\n\n"
            + rf.table(["target", "value", "bound", "runs", ""], _target_rows(runs))
            + "\n\n" + rf.source(name, d["provenance"]))


def _ablations(runs: dict, source: str, d: dict) -> str:
    """The paper's TVM ablations on Fashion-MNIST (one seed each, base with its training seeds),
    as far as they were run, each read against base's seed spread."""
    share = {n: target_init_share(r) for n, r in runs.items()}
    verdict = {v["run"]: v["verdict"] + (
        f" (its target still holds {share[v['run']]:.0%} of its initialisation: not settled)"
        if share[v["run"]] > UNSETTLED else "") for v in ablation_verdicts(runs)}
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
            + "\n\n" + source + _detach_note())


DETACH = "op_count_detach_DiT-S-4.json"  # one TVM step with and without the gradient via dF/ds


def _detach_note() -> str:
    """Why ``detach_jvp`` barely changes the fused step's rate: counted operators (CPU)."""
    d = rf.load(DETACH)
    if d is None:
        return ""
    r, fx = d["results"], detach_effects(d["results"]["rows"])
    if not {"fused", "func"} <= set(fx):
        return ""
    change = {j: {k: 100 * (b / a - 1) for k, (a, b) in v.items()} for j, v in fx.items()}
    fu, fc = fx["fused"], change["func"]
    return ("\n\n**Why detaching dF/ds changes little here.** One TVM step of the ablation's "
            f"network, counted on a CPU ({r['preset']}, batch {r['batch']}, "
            f"{r['attn_backend']} attention): with the fused dF/ds these runs train with, F "
            "and dF/ds come out of the same operators (primal and tangent rows share each "
            "matrix product), so detaching dF/ds leaves the step as it was: "
            f"{fu['kernels'][0]} -> {fu['kernels'][1]} kernels, {rf.fmt(fu['saved_mb'][0])} "
            f"-> {rf.fmt(fu['saved_mb'][1])} MB saved for the backward, CPU time "
            f"{change['fused']['cpu_ms']:+.0f}%. Through torch.func.jvp, as the paper's code "
            f"gets dF/ds, detaching removes {-fc['kernels']:.0f}% of the kernels, "
            f"{-fc['saved_mb']:.0f}% of the saved memory and {-fc['cpu_ms']:.0f}% of the CPU "
            "time, near the about 27% faster step docs/tvm.md quotes from the paper. "
            + rf.source(DETACH, d["provenance"]))


# (results file, label, the uncompiled file whose MeanFlow runs join a compiled comparison)
GLANCE = (("06_fashion_equal_time.json", "Fashion-MNIST, 100 GPU s", None),
          ("06_fashion_equal_time_300s.json", "Fashion-MNIST, 300 GPU s", None),
          ("06_mnist_equal_time.json", "MNIST, 300 GPU s", None),
          ("06_fashion_equal_time_compiled.json", "Fashion-MNIST, 300 GPU s, FM and TVM "
           "compiled (one H100; MeanFlow as above, H200)", "06_fashion_equal_time_300s.json"))


def _warm(runs: dict[str, dict], target: dict) -> str:
    """A note for a glance cell whose TVM run started with a warm compile cache: its value cut
    back to a cold start's seconds (``timing.cold_equivalent``)."""
    name = target["runs"][0]
    if name not in {w["run"] for w in warm_starts(runs)}:
        return ""
    key = "fd_4" if target["target"].startswith("TVM 4") else "fd_1"
    return (f"; warm compile cache: {rf.fmt(last_eval(cold_equivalent(runs)[name], key))} cut "
            "to a cold start")


def table_glance() -> str:
    """One row per image comparison: TVM's jumps against FM at any NFE and at most 4 NFE, and
    MeanFlow (2000 samples, as the targets), with the count of targets hit."""
    rows, beats_few, beats_best, mf_beats_4, sweeps = [], [], [], [], []
    for name, label, plain in GLANCE:
        d, p = rf.load(name), rf.load(plain) if plain else None
        if d is None or (plain and p is None):
            continue
        runs = d["results"]["runs"]
        if p is not None:  # MeanFlow cannot gain from compiling: its uncompiled runs join
            runs = {**{n: r for n, r in p["results"]["runs"].items()
                       if n.startswith("meanflow")}, **runs}
        t = equal_time_targets(runs)
        few = best_sweep_within(_fm_runs(runs), 4)
        mf4_text, mf4 = _meanflow_4(runs)
        mf_beats_4.append(mf4 < t[1]["value"])
        rows.append([label, f"{rf.pm(t[0]['value'], t[0]['value_sd'], t[0]['seeds'][0])} "
                     f"({t[0]['runs'][0]}, {_seeds(t[0]['seeds'][0])})" + _warm(runs, t[0]),
                     rf.pm(t[1]["value"], t[1]["value_sd"], t[1]["seeds"][0])
                     + (f" ({t[1]['runs'][0]})" if t[1]["runs"][0] != t[0]["runs"][0] else "")
                     + _warm(runs, t[1]),
                     f"{rf.pm(t[1]['bound'], t[1]['bound_sd'], t[1]['seeds'][1])} "
                     f"({_seeds(t[1]['seeds'][1])})",
                     "not measured" if few is None
                     else f"{rf.fmt(few['fd'])} ({few['nfe']} NFE, seed 0)",
                     f"{rf.pm(t[2]['bound'], t[2]['bound_sd'], t[2]['seeds'][1])} "
                     f"({t[2]['runs'][1]}, {_seeds(t[2]['seeds'][1])})", mf4_text,
                     f"{sum(x['hit'] for x in t)} of {len(t)}"
                     + ("" if len(t) > 3 else " (no CMT chain)")])
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
                       rows) + compile_note(SMALL_STEP, GLANCE))


def _meanflow_4(runs: dict[str, dict]) -> tuple[str, float]:
    """MeanFlow's 4-jump FD at its better variant there (2000 samples, mean +- sd over seeds),
    as a cell and as the mean."""
    g = seed_groups(runs)
    mf = best_variant(g, ("meanflow", "meanflow_w15"), "fd_4")
    m, sd = mean_sd([last_eval(r, "fd_4") for r in g[mf]])
    return f"{rf.pm(m, sd, len(g[mf]))} ({mf})", m
