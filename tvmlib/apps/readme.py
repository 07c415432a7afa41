"""Results tables for the README, generated from the committed JSON under ``figures/``.

    python -m tvmlib.apps.readme          # rewrite the block between the README's result markers
    python -m tvmlib.apps.readme --check  # exit 1 if the README is out of date with the JSON

No number in the README is typed by hand: every table is rendered here from a results file,
and each table names the file and the device that produced it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tvmlib.apps import cli
from tvmlib.experiments.results import (
    ablation_verdicts,
    best_sweep,
    best_sweep_within,
    best_variant,
    by_group,
    cmt_seed_table,
    equal_time_summary,
    equal_time_targets,
    fewest_nfe_below,
    last_eval,
    mean_sd,
    reach_step,
    seed_groups,
    step_summary,
)
from tvmlib.experiments.toy_results import toy_groups, toy_table, toy_targets
from tvmlib.training.config import load_experiment
from tvmlib.utils.paths import repo_root
from tvmlib.utils.provenance import commits

START, END = "<!-- results:start -->", "<!-- results:end -->"


class _Missing(Exception):
    """A results file a table needs is not there; the message says how to make it."""


def _load(name: str) -> dict | None:
    path = repo_root() / "figures" / name
    return json.loads(path.read_text()) if path.exists() else None


def _need(name: str, how: str) -> dict:
    d = _load(name)
    if d is None:
        raise _Missing(f"*`figures/{name}` is missing: {how}.*")
    return d


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _source(name: str, prov: dict) -> str:
    shas = ", ".join(f"`{c}`" for c in commits(prov))
    return (f"*From `figures/{name}` ({prov.get('device', '?')}, torch {prov.get('torch', '?')}, "
            f"commit{'s' if ',' in shas else ''} {shas}).*")


def table_2d() -> str:
    name = "02_equal_compute.json"
    d = _need(name, "run the experiment in the header of "
                    "`configs/experiments/toy2d_equal_compute.yaml`")
    groups = toy_groups(d["results"]["runs"])
    out = [toy_table(dataset, m) for dataset, m in groups.items()]
    out.append("Targets (issue 15): " + "; ".join(
        f"{t['dataset']}, {t['target']}: {_fmt(t['value'])} vs {_fmt(t['bound'])}, "
        f"**{'hit' if t['hit'] else 'miss'}**" for t in toy_targets(groups)) + ".")
    return "\n\n".join(out) + "\n\n" + _source(name, d["provenance"])


def table_lipschitz() -> str:
    name = "03_lipschitz_ablation.json"
    d = _need(name, "run `python -m tvmlib.apps.experiment "
                    "configs/experiments/lipschitz_ablation.yaml`")
    res = d["results"]
    rows = []
    for setting, variants in by_group(res["runs"]).items():
        for variant, r in variants.items():
            fd = r["final"].get("ema", {})
            rows.append([setting, r["config"]["train"]["lr"], variant,
                         f"{r['steps_done']}/{r['steps']}", r["spike_step"]["first"],
                         r.get("diverged_step"), fd.get("1"), fd.get("2")])
    c = next(iter(res["runs"].values()))["config"]
    floor = res.get("reference_fd") or {}
    head = (f"TVM on Fashion-MNIST 32x32, {c['model']['preset']}, batch "
            f"{c['train']['global_batch']}, {c['model']['attn_backend']} attention; FD: "
            f"classifier Frechet distance of {c['eval']['num_samples']} EMA samples (real train "
            f"vs test images: {_fmt(floor.get('train_vs_test'))}).")
    return (head + "\n\n" + _table(["setting", "lr", "variant", "steps", "first spike",
                                     "diverged at", "FD 1 step", "FD 2 steps"], rows)
            + "\n\n" + _source(name, d["provenance"]))


def table_kernel() -> str:
    out = []
    for path, d in _bench_files("jvp_attention_*.json", "python -m tvmlib.apps.bench.attention"):
        h200 = "H200" in d["provenance"].get("device", "")  # the TFLOP/s target's GPU
        out.append(_kernel_rows(d["rows"], h200) + "\n\n" + _source(path.name, d["provenance"]))
    out.append("Forward + JVP + backward through both outputs, bf16. *SDPA flash is forward + "
               "backward without any JVP (the speed-of-light reference). Issue 17's targets: "
               "ours at least 520 TFLOP/s at 2 x 16 x 4096 x 64 (65% of the H200's measured "
               "matmul peak), the torch.func path within 10% of ours at every shape. Under "
               "torch.func the output and its tangent are two autograd nodes, each with its own "
               "forward and backward pass over P; `attention_with_jvp` shares one of each.")
    return "\n\n".join(out + [_text(_first_call)])


def _kernel_rows(bench_rows: list[dict], h200: bool) -> str:
    cells: dict[tuple, dict] = {}
    for r in bench_rows:
        shape = (r["B"], r["H"], r["N"], r["d"])
        key = {("triton", "fwd_jvp_bwd"): "triton", ("triton_func", "fwd_jvp_bwd"): "func",
               ("math", "fwd_jvp_bwd"): "math", ("sdpa_flash", "fwd_bwd"): "sdpa"}.get(
                   (r["impl"], r["pass"]))
        if key:
            cells.setdefault(shape, {})[key] = r
    rows = []
    for shape, c in cells.items():
        ms = {k: (v["ms"] if not v.get("error") else None) for k, v in c.items()}
        mem = {k: v["peak_mem_mb"] for k, v in c.items()}
        rows.append(["x".join(map(str, shape)), ms.get("triton"), ms.get("func"),
                     _ratio(ms.get("func"), ms.get("triton")), ms.get("math"), ms.get("sdpa"),
                     _ratio(ms.get("math"), ms.get("triton")),
                     c["triton"]["tflops"] if "triton" in c else None,
                     mem.get("triton"), mem.get("math")])
    big = next((r[7] for r in rows if r[0] == "2x16x4096x64"), None)
    slow = [r[0] for r in rows if r[3] is None or r[3] > 1.1]
    notes = [f"At 2x16x4096x64: {_fmt(big)} TFLOP/s against 520: "
             f"{'hit' if big >= 520 else 'miss'}."] if big is not None and h200 else []
    notes.append("torch.func within 10% of ours: "
                 + (f"miss at {', '.join(slow)}." if slow else "hit."))
    return (_table(["B x H x N x d", "ours ms", "via torch.func ms", "torch.func / ours",
                    "math ms", "SDPA flash ms*", "speed-up vs math", "ours TFLOP/s", "ours MB",
                    "math MB"], rows) + "\n\n" + " ".join(notes))


def _first_call() -> str:
    """First-call (compile) seconds of the attention for a new shape, against 10 s."""
    out = []
    for path, d in _bench_files("first_call_*.json", "python -m tvmlib.apps.bench.first_call"):
        rows = [[r["impl"], f"{r['B']}x{r['H']}x{r['N']}x{r['d']}", r["dtype"],
                 "yes" if r["causal"] else "no", r["first_call_s"], r["cached_call_s"],
                 r["warm_ms"], "hit" if r["first_call_s"] <= 10 else "miss"] for r in d["rows"]]
        out.append("First call for a new shape (a fresh process, empty Triton cache: the kernels "
                   "compile), the same in a new process once the cache holds them, and a warm "
                   "call; forward + JVP + backward. Target: 10 s or less. fp32 (and fp64) "
                   "kernels use 16x16 tiles with 8 warps (`jvp_attention.IEEE_TILES`): their "
                   "IEEE dots unroll into long FMA loops, which compile faster at that size. One "
                   "measurement per case; the seconds vary between machines (an earlier lease "
                   "measured the same bf16 kernels slower: this file's git history). "
                   + "Measured " + ("with" if all(r.get("compile_ahead") for r in d["rows"])
                                    else "before") + " a call's kernels compiled in parallel "
                   "(`tvmlib.kernels.ahead`).\n\n"
                   + _table(["path", "B x H x N x d", "dtype", "causal", "first call s",
                             "cached s", "warm ms", "<= 10 s"], rows)
                   + "\n\n" + _source(path.name, d["provenance"]))
    return "\n\n".join(out)


def _bench_files(pattern: str, command: str) -> list[tuple[Path, dict]]:
    """(path, document) of every ``figures/<pattern>`` (one per GPU), or _Missing naming the
    command that makes them."""
    files = sorted((repo_root() / "figures").glob(pattern))
    if not files:
        raise _Missing(f"*No `figures/{pattern}`: run `{command}`.*")
    return [(path, json.loads(path.read_text())) for path in files]


def table_train_step() -> str:
    out = []
    for path, d in _bench_files("train_step_*.json", "python -m tvmlib.apps.bench.train_step"):
        rows = [[r["model"], (r.get("loss_name") or "tvm").upper(), r["backend"],
                 "on" if r.get("cuda_graph") else "off",
                 r["jvp"] if "jvp" in r else "func",  # files from before model.jvp: torch.func
                 r["batch"], r["ms_per_step"], r["images_per_s"], r["peak_mem_gb"], r["status"]]
                for r in d["results"]["rows"]]
        out.append(_table(["model", "loss", "attention", "CUDA graph", "dF/ds", "batch",
                           "ms / step", "images / s", "peak GB", "status"], rows)
                   + "\n\n" + _source(path.name, d["provenance"]))
        summary = step_summary(d["results"]["rows"])
        if summary:
            out.append("Fastest step of each (any graph mode); the fused dF/ds against "
                       "`torch.func.jvp`, and the TVM-to-FM time ratio against the FLOP ratio "
                       "of 4.2 (issue 17's target):\n\n" + _table(
                           ["model", "FM ms", "TVM ms, fused", "TVM ms, torch.func",
                            "fused speed-up", "TVM / FM", "<= 4.2"],
                           [[r["model"], r["fm_ms"], r["by_jvp"].get("fused"),
                             r["by_jvp"].get("func"),
                             _ratio(r["by_jvp"].get("func"), r["by_jvp"].get("fused")),
                             r["ratio"], "hit" if r["ratio"] <= 4.2 else "miss"]
                            for r in summary]))
    return "\n\n".join(out) + _optional("jvp_fused_loss_curve_fashion.json", _loss_curves)


def _loss_curves(runs: dict, source: str, d: dict) -> str:
    """Issue 17's "same loss curve within bf16 noise": |loss difference| of fused vs torch.func
    against the noise reference (torch.func with math attention vs with Triton attention)."""
    rows = []
    for a, b in (("fused", "func"), ("func_math", "func")):
        ca, cb = runs[a]["curves"], runs[b]["curves"]
        gap = [abs(x - y) for x, y in zip(ca["loss"], cb["loss"])]
        first = next((s for s, g in zip(ca["step"], gap) if g > 0.01), None)
        rows.append([f"{a} vs {b}", first, max(gap), ca["step"][gap.index(max(gap))], gap[-1]])
    steps = runs["fused"]["curves"]["step"][-1]
    return (f"\n\nDoes the fused dF/ds change training? {steps}-step Fashion-MNIST TVM runs "
            "(DiT-S/4, bf16, CUDA graph, same seed and data), training loss every "
            f"{runs['fused']['config']['train']['log_every']} steps; the second row is the bf16 "
            "noise reference: the same torch.func step with the attention written out (math) "
            "instead of the Triton kernel, i.e. the same function rounded differently:\n\n"
            + _table(["runs", "first step with a loss gap > 0.01", "largest gap",
                      "at step", "gap at the end"], rows) + "\n\n" + source)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def table_sampling() -> str:
    out = []
    for path, d in _bench_files("sampling_*.json", "python -m tvmlib.apps.bench.sampling"):
        rows = [[r["model"], r["batch"], r["jumps"], r["ms"], r["images_per_s"], r["peak_mem_gb"]]
                for r in d["results"]["rows"]]
        out.append("k-jump flow-map sampling of an (untrained) network, "
                   f"{d['results']['amp']} with {d['results']['attention']} attention, "
                   "VAE decoding not included:\n\n"
                   + _table(["model", "batch", "jumps = NFE", "ms / batch", "images / s",
                             "peak GB"], rows) + "\n\n" + _source(path.name, d["provenance"]))
    return "\n\n".join(out)


def _pm(mean: float | None, sd: float, n: int) -> str:
    """"m +- sd" over n seeds, the value alone for one."""
    return _fmt(mean) if n < 2 or mean is None else f"{_fmt(mean)} ± {_fmt(sd, 2)}"


def table_equal_time() -> str:
    name = "06_fashion_equal_time.json"
    d = _need(name, "run `python -m tvmlib.apps.experiment "
                    "configs/experiments/fashion_equal_time.yaml`")
    runs, floor = d["results"]["runs"], d["results"]["reference_fd"]["by_n"]
    rows, targets = _seed_rows(runs), _target_rows(runs)
    return (f"Class-conditional {runs['fm']['config']['model']['preset']} from scratch, the same "
            "GPU seconds per method with every stage counted; `_w15`: guidance w = 1.5 folded "
            "into training; `tvm_250s`: the seed-0 TVM run continued to 250 s. Final classifier "
            "FD of 10000 EMA samples at each step count, mean ± std over the training seeds "
            "(real training images: "
            f"{_fmt(floor['10000'])}):\n\n"
            + _table(["run", "seeds", "GPU s, all stages", "steps", "FD by steps"], rows)
            + f"\n\nTargets, at 2000 samples (floor {_fmt(floor['2000'])}), each method at its "
            "best variant (FM: each seed's best sampler of its sweep), mean ± std over seeds:\n\n"
            + _table(["target", "value", "bound", "runs", ""], targets)
            + "\n\n" + _source(name, d["provenance"])
            + _optional("06_fashion_equal_time_300s.json", _equal_time_longer))


def _optional(name: str, render) -> str:
    """``render(runs, source line, document)`` of ``figures/<name>``; "" without the file."""
    d = _load(name)
    return "" if d is None else render(d["results"]["runs"], _source(name, d["provenance"]), d)


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
            "seed and scored at 1, 2 and 4 steps (in the config, not made yet: "
            f"{_not_made('fashion_equal_time_300s', runs)}). Final FD of 10000 EMA samples, "
            "mean ± std over the training seeds where a run has more than one:\n\n"
            + _table(["run", "seeds", "GPU s, all stages", "steps", "FD by steps"],
                     _seed_rows(runs))
            + f"\n\nFM's best sampler with seed 0 (2000 samples): {fm['solver']}, {fm['steps']} "
            f"steps, guidance {fm['cfg_scale']}, FD {_fmt(fm['fd'])}. " + _few_steps(runs)
            + "Targets at 2000 samples, "
            "means over seeds (a chain's value: the GPU seconds at which it first reached "
            "scratch's final 1-jump FD, one seed):\n\n"
            + _table(["target", "value", "bound", "runs", ""], _target_rows(runs))
            + "\n\n" + source + _optional("06_fashion_tvm_ablations.json", _ablations))


def _sampler(row: dict) -> str:
    return (f"{row['solver']}, {row['steps']} step{'s' * (row['steps'] > 1)}, guidance "
            f"{row['cfg_scale']}: FD {_fmt(row['fd'])} at {row['nfe']} NFE")


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
            f"{_sampler(few)}, against {_fmt(one)} for {tvm}'s one jump (seed 0); FM first "
            "matches that one jump with "
            + (_sampler(match) if match else "none of its samplers") + ". ")


def _seed_rows(runs: dict[str, dict]) -> list[list]:
    """[run, seeds, GPU s all stages, steps, "k: FD (+- sd), ..."] per method and its seeds."""
    return [[r["run"], r["seeds"], r["total_s"], round(r["steps"]),
             ", ".join(f"{k}: {_pm(m, sd, r['seeds'])}" for k, (m, sd) in r["fd"].items())]
            for r in equal_time_summary(runs)]


def _target_rows(runs: dict[str, dict]) -> list[list]:
    """[target, value, bound, runs, hit/miss] of issue 14's targets, means +- sd over seeds."""
    return [[t["target"], "never" if t["value"] is None else
             _pm(t["value"], t["value_sd"], t["seeds"][0]),
             _pm(t["bound"], t["bound_sd"], t["seeds"][1]), " vs ".join(t["runs"]),
             "hit" if t["hit"] else "miss"] for t in equal_time_targets(runs)]


def _not_made(config: str, runs: dict) -> str:
    """The runs of ``configs/experiments/<config>.yaml`` that ``runs`` has no record of."""
    path = repo_root() / "configs" / "experiments" / f"{config}.yaml"
    return ", ".join(r.name for r in load_experiment(path)[1] if r.name not in runs) or "none"


def table_mnist() -> str:
    name = "06_mnist_equal_time.json"
    d = _need(name, "run `python -m tvmlib.apps.experiment "
                    "configs/experiments/mnist_equal_time.yaml`")
    runs, floor = d["results"]["runs"], d["results"]["reference_fd"]["by_n"]
    fm = best_sweep(runs["fm"])
    return (f"Class-conditional {runs['fm']['config']['model']['preset']} on MNIST 32x32 from "
            "scratch, the Fashion-MNIST protocol at 300 GPU s per method "
            "(`configs/experiments/mnist_equal_time.yaml`; not made yet: "
            f"{_not_made('mnist_equal_time', runs)}). Final classifier FD "
            f"of 10000 EMA samples (real training images: {_fmt(floor['10000'])}):\n\n"
            + _table(["run", "seeds", "GPU s, all stages", "steps", "FD by steps"],
                     _seed_rows(runs))
            + f"\n\nFM's best sampler with seed 0 (2000 samples): {_sampler(fm)}. "
            + _few_steps(runs)
            + f"Targets at 2000 samples (floor {_fmt(floor['2000'])}), means over the "
            "training seeds where a run has several:\n\n"
            + _table(["target", "value", "bound", "runs", ""], _target_rows(runs))
            + "\n\n" + _source(name, d["provenance"]))


def _ablations(runs: dict, source: str, d: dict) -> str:
    """The paper's TVM ablations on Fashion-MNIST (one seed each, base with its training seeds),
    as far as they were run, each read against base's seed spread."""
    verdict = {v["run"]: v["verdict"] for v in ablation_verdicts(runs)}
    rows = [row[:4] + [runs[row[0]]["steps_per_s"]] + row[4:] + [verdict.get(row[0], "")]
            for row in _seed_rows(runs)]
    return ("\n\n**TVM ablations** (`configs/experiments/fashion_tvm_ablations.yaml`: the "
            "`tvm_w15` recipe with one change per run, the same GPU seconds; one seed per change "
            f"and {len(seed_groups(runs)['base'])} training seeds of `base`; "
            f"{len(runs)} of its {len(d['results']['config']['runs'])} runs made). "
            "Final FD of 10000 EMA samples; a change is called better or worse at 1 jump only "
            "when it lies more than two of base's seed standard deviations from base's mean:\n\n"
            + _table(["run", "seeds", "GPU s", "steps", "steps / s", "FD by jumps",
                      "1 jump vs base"], rows)
            + "\n\n" + source)


def table_cmt() -> str:
    out = []
    d = _load("05_cmt_2d_seeds.json")
    if d is not None:
        out.append(cmt_seed_table(d["results"]["runs"]) + "\n\n"
                   + _source("05_cmt_2d_seeds.json", d["provenance"]))
    gpu = _load("05_cmt.json")
    if gpu is None:
        out.append("*Fashion-MNIST on a GPU: `figures/05_cmt.json` is not produced yet "
                   "(`python -m tvmlib.apps.experiment configs/experiments/cmt_fashion.yaml`).*")
        return "\n\n".join(out)
    runs = gpu["results"]["runs"]
    target = runs["scratch"]["evals"]["fd_1"][-1]
    rows = [[n, r["evals"]["fd_1"][0], r["evals"]["step"][-1], r["evals"]["fd_1"][-1],
             r["evals"]["fd_2"][-1], reach_step(r["evals"], target), r["train_s"], r["total_s"]]
            for n, r in runs.items() if r["evals"]]
    t, m = runs["teacher"], runs["mid"]
    fd_t = next(iter(t["final"]["ema"].items()))
    out.append(f"**Fashion-MNIST** (class-conditional "
               f"{t['config']['model']['preset']}, TVM post-training from three "
               f"starts; teacher: {_fmt(t['total_s'])} GPU s, FD {_fmt(fd_t[1])} at {fd_t[0]} "
               f"NFE; CMT mid-training: {_fmt(m['train_s'])} GPU s)\n\n"
               + _table(["start", "FD 1 step at step 0", "steps", "FD 1 step", "FD 2 steps",
                         "steps to scratch's final FD 1", "post GPU s", "GPU s, all stages"],
                        rows)
               + "\n\n" + _source("05_cmt.json", gpu["provenance"]))
    return "\n\n".join(out)


GLANCE = (("06_fashion_equal_time.json", "Fashion-MNIST, 100 GPU s"),
          ("06_fashion_equal_time_300s.json", "Fashion-MNIST, 300 GPU s"),
          ("06_mnist_equal_time.json", "MNIST, 300 GPU s"))


def table_glance() -> str:
    """One row per image comparison: TVM's jumps against FM at any NFE and at most 4 NFE, and
    MeanFlow (2000 samples, as the targets), with the count of targets hit."""
    rows, beats_few, beats_best, mf_beats_4 = [], [], [], []
    for name, label in GLANCE:
        d = _load(name)
        if d is None:
            continue
        runs = d["results"]["runs"]
        t = equal_time_targets(runs)
        few = best_sweep_within(_fm_runs(runs), 4)
        mf4_text, mf4 = _meanflow_4(runs)
        mf_beats_4.append(mf4 < t[1]["value"])
        rows.append([label, f"{_pm(t[0]['value'], t[0]['value_sd'], t[0]['seeds'][0])} "
                     f"({t[0]['runs'][0]}, {_seeds(t[0]['seeds'][0])})",
                     _pm(t[1]["value"], t[1]["value_sd"], t[1]["seeds"][0])
                     + (f" ({t[1]['runs'][0]})" if t[1]["runs"][0] != t[0]["runs"][0] else ""),
                     f"{_pm(t[1]['bound'], t[1]['bound_sd'], t[1]['seeds'][1])} "
                     f"({_seeds(t[1]['seeds'][1])})",
                     "not measured" if few is None
                     else f"{_fmt(few['fd'])} ({few['nfe']} NFE, seed 0)",
                     f"{_pm(t[2]['bound'], t[2]['bound_sd'], t[2]['seeds'][1])} "
                     f"({t[2]['runs'][1]}, {_seeds(t[2]['seeds'][1])})", mf4_text,
                     f"{sum(x['hit'] for x in t)} of {len(t)}"])
        beats_best.append(t[0]["value"] <= t[1]["bound"])
        if few is not None:
            beats_few.append(t[0]["value"] < few["fd"])
    if not rows:
        return "No image comparison is recorded yet."
    verdict = (f"TVM's one jump beats FM's best sampler with at most 4 NFE in "
               f"{sum(beats_few)} of the {len(beats_few)} comparisons that measured FM there, "
               f"and reaches FM's best at any NFE in {sum(beats_best)} of {len(beats_best)}; "
               f"MeanFlow's four jumps are below TVM's in {sum(mf_beats_4)} of "
               f"{len(mf_beats_4)}.")
    return ("Classifier FD at 2000 samples (lower is better), mean ± std over training seeds "
            "where there are several; each flow map at its better variant among those run (at "
            "each column's number of jumps); the "
            "sections below give every run, the 10000-sample finals and each target. "
            + verdict + "\n\n"
            + _table(["comparison", "TVM 1 jump", "TVM 4 jumps", "FM best, any NFE",
                      "FM best, <= 4 NFE", "MeanFlow 1 jump", "MeanFlow 4 jumps", "targets hit"],
                     rows))


def _meanflow_4(runs: dict[str, dict]) -> tuple[str, float]:
    """MeanFlow's 4-jump FD at its better variant there (2000 samples, mean +- sd over seeds),
    as a cell and as the mean."""
    g = seed_groups(runs)
    mf = best_variant(g, ("meanflow", "meanflow_w15"), "fd_4")
    m, sd = mean_sd([last_eval(r, "fd_4") for r in g[mf]])
    return f"{_pm(m, sd, len(g[mf]))} ({mf})", m


def _text(table) -> str:
    try:
        return table()
    except _Missing as missing:
        return str(missing)


def render() -> str:
    sections = [
        ("Images at a glance: one jump against FM and MeanFlow (notebook 06)", table_glance),
        ("2D at equal compute: W2 vs NFE (notebook 02)", table_2d),
        ("Lipschitz ablation on Fashion-MNIST (notebook 03)", table_lipschitz),
        ("JVP attention kernel (notebook 04)", table_kernel),
        ("TVM training step, ImageNet-256 latents (notebook 06)", table_train_step),
        ("Sampling, ImageNet-256 latents (notebook 06)", table_sampling),
        ("One-step images at equal GPU time, Fashion-MNIST (notebook 06)", table_equal_time),
        ("One-step images at equal GPU time, MNIST (notebook 06)", table_mnist),
        ("CMT -> TVM (notebook 05)", table_cmt),
    ]
    body = "\n\n".join(f"### {title}\n\n{_text(table)}" for title, table in sections)
    note = "<!-- generated by `make readme` (python -m tvmlib.apps.readme): do not edit -->"
    return f"{START}\n{note}\n\n{body}\n\n{END}"


def update(readme: Path, check: bool = False) -> bool:
    """Rewrite the marked block; return True if the file was (or would be) unchanged."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + render() + tail
    if not check and new != text:
        readme.write_text(new)
    return new == text


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser(prog="python -m tvmlib.apps.readme", description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if the README is out of date")
    args = ap.parse_args(argv)
    same = update(repo_root() / "README.md", check=args.check)
    if args.check and not same:
        print("README results are out of date with figures/*.json: run `make readme`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main)
