"""Results tables for the README, generated from the committed JSON under ``figures/``.

    python -m tvmlib.apps.readme          # rewrite the block between the README's result markers
    python -m tvmlib.apps.readme --check  # exit 1 if the README is out of date with the JSON

No number in the README is typed by hand: every table is rendered from a results file, here
or in ``readme_images`` (the image comparisons; shared formatting in ``readme_format``), and
each table names the file and the device that produced it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tvmlib.apps import cli
from tvmlib.apps import readme_format as rf
from tvmlib.apps.readme_compiled import table_compiled
from tvmlib.apps.readme_images import table_equal_time, table_glance, table_mnist
from tvmlib.experiments.results import by_group, cmt_seed_table, reach_step
from tvmlib.experiments.timing import step_summary
from tvmlib.experiments.toy_results import toy_groups, toy_table, toy_targets, verdict
from tvmlib.utils.paths import repo_root

START, END = "<!-- results:start -->", "<!-- results:end -->"


def table_2d() -> str:
    name = "02_equal_compute.json"
    d = rf.need(name, "run the experiment in the header of "
                      "`configs/experiments/toy2d_equal_compute.yaml`")
    groups = toy_groups(d["results"]["runs"])
    out = [toy_table(dataset, m) for dataset, m in groups.items()]
    out.append("Targets (issue 15): " + "; ".join(
        f"{t['dataset']}, {t['target']}: {rf.fmt(t['value'])} +- {rf.fmt(t['value_sd'])} vs "
        f"{rf.fmt(t['bound'])}, {verdict(t)}" for t in toy_targets(groups)) + ".")
    return "\n\n".join(out) + "\n\n" + rf.source(name, d["provenance"])


def table_lipschitz() -> str:
    name = "03_lipschitz_ablation.json"
    d = rf.need(name, "run `python -m tvmlib.apps.experiment "
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
            f"vs test images: {rf.fmt(floor.get('train_vs_test'))}).")
    return (head + "\n\n" + rf.table(["setting", "lr", "variant", "steps", "first spike",
                                     "diverged at", "FD 1 step", "FD 2 steps"], rows)
            + "\n\n" + rf.source(name, d["provenance"]))


def table_kernel() -> str:
    out = []
    for path, d in _bench_files("jvp_attention_*.json", "python -m tvmlib.apps.bench.attention"):
        h200 = "H200" in d["provenance"].get("device", "")  # the TFLOP/s target's GPU
        out.append(_kernel_rows(d["rows"], h200) + "\n\n" + rf.source(path.name, d["provenance"]))
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
    notes = [f"At 2x16x4096x64: {rf.fmt(big)} TFLOP/s against 520: "
             f"{'hit' if big >= 520 else 'miss'}."] if big is not None and h200 else []
    notes.append("torch.func within 10% of ours: "
                 + (f"miss at {', '.join(slow)}." if slow else "hit."))
    return (rf.table(["B x H x N x d", "ours ms", "via torch.func ms", "torch.func / ours",
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
                   + rf.table(["path", "B x H x N x d", "dtype", "causal", "first call s",
                               "cached s", "warm ms", "<= 10 s"], rows)
                   + "\n\n" + rf.source(path.name, d["provenance"]))
    return "\n\n".join(out)


def _bench_files(pattern: str, command: str) -> list[tuple[Path, dict]]:
    """(path, document) of every ``figures/<pattern>`` (one per GPU), or raises Missing naming the
    command that makes them."""
    files = sorted((repo_root() / "figures").glob(pattern))
    if not files:
        raise rf.Missing(f"*No `figures/{pattern}`: run `{command}`.*")
    return [(path, json.loads(path.read_text())) for path in files]


def table_train_step() -> str:
    out = []
    for path, d in _bench_files("train_step_*.json", "python -m tvmlib.apps.bench.train_step"):
        adamw = any(r.get("fused_adamw") for r in d["results"]["rows"])  # a column if measured
        rows = [[r["model"], (r.get("loss_name") or "tvm").upper(), r["backend"],
                 "on" if r.get("cuda_graph") else "off",
                 r["jvp"] if "jvp" in r else "func"]  # files from before model.jvp: torch.func
                + [("fused" if r.get("fused_adamw") else "foreach")] * adamw
                + [r["batch"], r["ms_per_step"], r["images_per_s"], r["peak_mem_gb"], r["status"]]
                for r in d["results"]["rows"]]
        out.append(rf.table(["model", "loss", "attention", "CUDA graph", "dF/ds"]
                            + ["AdamW"] * adamw
                            + ["batch", "ms / step", "images / s", "peak GB", "status"], rows)
                   + "\n\n" + rf.source(path.name, d["provenance"]))
        summary = step_summary(d["results"]["rows"])
        if summary:
            compiled = any("compiled" in r["by_jvp"] for r in summary)  # a column if measured
            out.append("Fastest step of each (any graph mode); the fused dF/ds against "
                       "`torch.func.jvp`, and the TVM-to-FM time ratio against the FLOP ratio "
                       "of 4.2 (issue 17's target):\n\n" + rf.table(
                           ["model", "FM ms", "TVM ms, fused"] + ["TVM ms, compiled"] * compiled
                           + ["TVM ms, torch.func", "fused speed-up", "TVM / FM", "<= 4.2"],
                           [[r["model"], r["fm_ms"], r["by_jvp"].get("fused")]
                            + [r["by_jvp"].get("compiled")] * compiled
                            + [r["by_jvp"].get("func"),
                               _ratio(r["by_jvp"].get("func"), r["by_jvp"].get("fused")),
                               r["ratio"], "hit" if r["ratio"] <= 4.2 else "miss"]
                            for r in summary]) + _xl_targets(summary))
    return ("\n\n".join(out) + rf.optional("jvp_fused_loss_curve_fashion.json", _loss_curves)
            + _saved_memory("jvp_saved_DiT-S-2.json"))


def _xl_targets(summary: list[dict]) -> str:
    """Issue 17's DiT-XL/2 targets at batch 32: at least 100 images/s, at most 48 GB."""
    xl = [r["tvm_row"] for r in summary
          if r["model"].startswith("DiT-XL/2") and r["tvm_row"]["batch"] == 32]
    if not xl:
        return ""
    r = xl[0]
    how = r["jvp"] + (", fused AdamW" if r.get("fused_adamw") else "")
    return (f"\n\nThe fastest DiT-XL/2 TVM step at batch 32 ({how}): "
            f"{rf.fmt(r['images_per_s'])} images/s against 100 "
            f"({'hit' if r['images_per_s'] >= 100 else 'miss'}), peak "
            f"{rf.fmt(r['peak_mem_gb'])} GB against 48 "
            f"({'hit' if r['peak_mem_gb'] <= 48 else 'miss'}).")


def _saved_memory(name: str) -> str:
    """Activation memory per way of computing dF/ds (``bench.op_count``'s saved_mb, CPU)."""
    d = rf.load(name)
    if d is None:
        return ""
    res = d["results"]
    fused = next(r["saved_mb"] for r in res["rows"] if r["jvp"] == "fused")
    rows = [[r["jvp"], r["saved_mb"], r["saved_mb"] / fused,
             "not seen (inside compiled code)" if r["kernels"] is None else r["kernels"]]
            for r in res["rows"]]
    return (f"\n\nWhere a step's memory goes: what autograd saves for the backward in one TVM "
            f"step of {res['preset']} (TVM's DiT) at batch {res['batch']}, measured on the CPU in "
            f"{'bf16 autocast' if res.get('amp') == 'bf16' else 'fp32'} with "
            f"{res['attn_backend']} attention (parameters excluded; it scales with the "
            "batch), per way of computing dF/ds, and the operators that reach the device:\n\n"
            + rf.table(["dF/ds", "MB saved for the backward", "vs fused",
                        "operators (dispatch level)"], rows) + "\n\n"
            + rf.source(name, d["provenance"]) + _peak_order())


def _peak_order() -> str:
    """Whether the H200's peak memory orders the fused and torch.func steps as saved bytes do."""
    d = rf.load("train_step_nvidia-h200.json")
    if d is None:
        return ""
    peaks = {}  # (model, jvp) -> the lowest peak GB of its TVM rows
    for r in d["results"]["rows"]:
        if r.get("loss_name", "tvm") == "tvm" and r["status"] == "ok" and r.get("jvp"):
            key = (r["model"], r["jvp"])
            peaks[key] = min(peaks.get(key, float("inf")), r["peak_mem_gb"])
    models = sorted({m for m, _ in peaks if (m, "fused") in peaks and (m, "func") in peaks})
    higher = [m for m in models if peaks[(m, "fused")] > peaks[(m, "func")]]
    return (f"\n\nThese are saved activations, not a GPU's peak: on the H200 (the training-step "
            f"table above) the fused step's peak memory is above torch.func's for {len(higher)} "
            f"of {len(models)} DiT sizes, with the Triton attention there.")


def _loss_curves(runs: dict, source: str, d: dict) -> str:
    """Issue 17's "same loss curve within bf16 noise": |loss difference| of fused vs torch.func
    against the noise reference (torch.func with math attention vs with Triton attention)."""
    rows = []
    pairs = [("fused", "func"), ("func_math", "func")]
    pairs += [("compiled", "func")] * ("compiled" in runs)  # a row once it is made
    for a, b in pairs:
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
            + rf.table(["runs", "first step with a loss gap > 0.01", "largest gap",
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
                   + rf.table(["model", "batch", "jumps = NFE", "ms / batch", "images / s",
                               "peak GB"], rows) + "\n\n" + rf.source(path.name, d["provenance"]))
    return "\n\n".join(out)


def table_cmt() -> str:
    out = []
    d = rf.load("05_cmt_2d_seeds.json")
    if d is not None:
        out.append(cmt_seed_table(d["results"]["runs"]) + "\n\n"
                   + rf.source("05_cmt_2d_seeds.json", d["provenance"]))
    gpu = rf.load("05_cmt.json")
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
               f"starts; teacher: {rf.fmt(t['total_s'])} GPU s, FD {rf.fmt(fd_t[1])} at {fd_t[0]} "
               f"NFE; CMT mid-training: {rf.fmt(m['train_s'])} GPU s)\n\n"
               + rf.table(["start", "FD 1 step at step 0", "steps", "FD 1 step", "FD 2 steps",
                           "steps to scratch's final FD 1", "post GPU s", "GPU s, all stages"],
                          rows)
               + "\n\n" + rf.source("05_cmt.json", gpu["provenance"]))
    return "\n\n".join(out)


def _text(table) -> str:
    try:
        return table()
    except rf.Missing as missing:
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
        ("Equal GPU time with torch.compile (notebook 06)", table_compiled),
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
