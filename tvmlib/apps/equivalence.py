"""Is a run on N processes the run on one? N processes under torchrun against one process with N
micro-batches per step, through the train command line, in bf16 and in fp32.

    python -m tvmlib.apps.equivalence --config configs/fashion_tvm.yaml --steps 200 \\
        [--nproc 2] [--modes bf16 fp32] [--no-repeat] [--set train.cuda_graph=true] \\
        [--work runs/equivalence] [--out figures/19_multi_gpu_equivalence.json]
    python -m tvmlib.apps.equivalence --config configs/toy_tvm_smoke.yaml --steps 4 \\
        --out /tmp/equivalence_cpu.json              (a CPU check with gloo, seconds)

Every run trains the config for ``--steps`` steps with the same global batch, ``per_gpu_batch``
= global batch / N and the loss logged every step: ``p1_<mode>`` is one process with N
micro-batches, ``pN_<mode>`` N processes with one each (NCCL on GPUs, gloo on CPUs). Mode bf16
is ``train.amp=bf16``, fp32 is ``train.amp=off`` (TF32 stays off). ``p1_fp32_repeat`` repeats
``p1_fp32`` to measure the run-to-run noise of one process. On a machine with several GPUs the
one-process runs run side by side, one per GPU.

Verdicts (in the results, with the numbers they come from):
* bf16, "losses within bf16 noise": the mean and the max over steps of |loss(pN) - loss(p1)| /
  |loss(p1)| are no larger than those of bf16 against fp32 on one process (what bf16 rounding
  itself does to the loss curve);
* fp32, "same weights": for the network, the EMA, the TVM target and AdamW's moments, the
  relative L2 distance of pN to p1 is at most 10 x that of the repeat to p1 plus 1e-7 (if one
  process is deterministic, that asks for pN to match to 1e-7). ``bit_identical`` says whether
  every tensor is equal.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from tvmlib.apps import cli
from tvmlib.training.checkpoint import read_checkpoint
from tvmlib.training.config import load_config
from tvmlib.utils.atomic import atomic_write_json
from tvmlib.utils.paths import figure_path
from tvmlib.utils.provenance import provenance

AMP = {"bf16": "bf16", "fp32": "off"}
GROUPS = {"net": ("net",), "ema": ("ema", "module"), "target": ("loss", "target", "module"),
          "opt": ("opt", "state")}


def run_names(nproc: int, modes: list[str], repeat: bool) -> list[tuple[str, int, str]]:
    """(name, processes, mode) of every run, one-process runs first."""
    runs = [(f"p1_{m}", 1, m) for m in modes]
    if repeat and "fp32" in modes:
        runs.append(("p1_fp32_repeat", 1, "fp32"))
    return runs + [(f"p{nproc}_{m}", nproc, m) for m in modes]


def command(args, name: str, nproc: int, mode: str, per_gpu: int) -> list[str]:
    sets = [f"name={name}", f"out_dir={Path(args.work) / name}", f"train.steps={args.steps}",
            "train.log_every=1", "train.ckpt_every=0", f"train.per_gpu_batch={per_gpu}",
            f"train.amp='{AMP[mode]}'", *args.overrides]  # quoted: YAML reads off as false
    train = ["-m", "tvmlib.apps.train", "--config", args.config, "--fresh",
             *[a for s in sets for a in ("--set", s)]]
    if nproc == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *train]


def launch(args, runs: list[tuple[str, int, str]], per_gpu: int) -> dict[str, dict]:
    """Run ``runs`` (one-process runs side by side, one per GPU, when there are several);
    {name: {"processes", "mode", "status", "wall_s"}}; each run's output goes to its .log."""
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    width = max(1, gpus)
    singles = [r for r in runs if r[1] == 1]
    phases = [singles[i:i + width] for i in range(0, len(singles), width)]
    phases += [[r] for r in runs if r[1] > 1]
    info = {}
    Path(args.work).mkdir(parents=True, exist_ok=True)
    for phase in phases:
        procs, t0 = [], time.perf_counter()
        for i, (name, nproc, mode) in enumerate(phase):
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                   "TVMLIB_QUIET": "1"}
            if gpus and nproc == 1:
                env["CUDA_VISIBLE_DEVICES"] = str(i)
            log = open(Path(args.work) / f"{name}.log", "w")  # noqa: SIM115 (closed below)
            print(f"[equivalence] {name}: {nproc} process(es), {mode}", flush=True)
            procs.append((name, nproc, mode, log, subprocess.Popen(
                command(args, name, nproc, mode, per_gpu), stdout=log, stderr=log, env=env)))
        for name, nproc, mode, log, proc in procs:
            code = proc.wait()
            log.close()
            status = "ok" if code == 0 else f"error: exit code {code} (see {log.name})"
            info[name] = {"processes": nproc, "mode": mode, "status": status,
                          "wall_s": time.perf_counter() - t0}
            print(f"[equivalence] {name}: {status}", flush=True)
    return info


def losses(run_dir: Path) -> list[float]:
    """The loss of every step (the run logs every step)."""
    return [r["loss"] for r in json.loads((run_dir / "log.json").read_text()) if "loss" in r]


def rel_gap(a: list[float], b: list[float]) -> dict:
    """Mean and max over steps of |a - b| / |b|."""
    gaps = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True)]
    return {"mean": sum(gaps) / len(gaps), "max": max(gaps)}


def tensors(obj) -> list[torch.Tensor]:
    """Every tensor in a nested dict / list, in order."""
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in obj for t in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def distance(a: dict, b: dict) -> dict[str, dict]:
    """Per group (network, EMA, target, AdamW state): relative L2 distance of ``a`` to ``b``,
    max |a - b|, and whether every tensor is equal."""
    out = {}
    for group, path in GROUPS.items():
        ta, tb = a, b
        for key in path:
            ta, tb = ta[key], tb[key]
        ta, tb = tensors(ta), tensors(tb)
        diff = sum(float((x.double() - y.double()).square().sum()) for x, y in zip(ta, tb))
        norm = sum(float(y.double().square().sum()) for y in tb)
        out[group] = {"rel_l2": math.sqrt(diff / max(norm, 1e-300)),
                      "max_abs": max(float((x.double() - y.double()).abs().max()) for x, y in
                                     zip(ta, tb)),
                      "equal": len(ta) == len(tb) and all(torch.equal(x, y) for x, y in
                                                          zip(ta, tb))}
    return out


def bf16_verdict(loss: dict[str, list[float]], nproc: int) -> dict:
    """Losses of pN against p1 in bf16, measured against bf16's own effect (p1 bf16 vs fp32)."""
    gap = rel_gap(loss[f"p{nproc}_bf16"], loss["p1_bf16"])
    noise = rel_gap(loss["p1_bf16"], loss["p1_fp32"])
    return {"pN_vs_p1": gap, "bf16_vs_fp32": noise,
            "within_bf16_noise": gap["mean"] <= noise["mean"] and gap["max"] <= noise["max"],
            "criterion": "mean and max over steps of |loss(pN) - loss(p1)| / |loss(p1)| <= "
                         "those of loss(p1, bf16) against loss(p1, fp32)"}


def fp32_verdict(ckpt: dict[str, dict], nproc: int) -> dict:
    """Final state of pN against p1 in fp32, measured against one process's repeat."""
    two, one = ckpt[f"p{nproc}_fp32"], ckpt["p1_fp32"]
    d = distance(two, one)
    rep = distance(ckpt["p1_fp32_repeat"], one) if "p1_fp32_repeat" in ckpt else None
    same = all(d[g]["rel_l2"] <= 10 * (rep[g]["rel_l2"] if rep else 0.0) + 1e-7 for g in d)
    return {"pN_vs_p1": d, "repeat_vs_p1": rep, "same_weights": same,
            "bit_identical": all(g["equal"] for g in d.values()),
            "criterion": "per group, rel. L2 distance(pN, p1) <= 10 x distance(repeat, p1) + "
                         "1e-7"}


def parser() -> cli.Parser:
    ap = cli.Parser(prog="python -m tvmlib.apps.equivalence", description=__doc__)
    ap.add_argument("--config", required=True, help="a run config (configs/*.yaml)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--nproc", type=int, default=2, help="processes of the multi-process runs")
    ap.add_argument("--modes", nargs="+", default=["bf16", "fp32"], choices=list(AMP))
    ap.add_argument("--no-repeat", action="store_true", help="skip p1_fp32_repeat")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="a config override for every run")
    ap.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available")
    ap.add_argument("--work", default="runs/equivalence", help="the runs' folders")
    ap.add_argument("--out", help="default figures/19_multi_gpu_equivalence.json")
    return ap


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = parser()
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)  # fails here, before any run
    if args.steps < 1 or args.nproc < 2 or cfg.train.global_batch % args.nproc:
        ap.error(f"need --steps >= 1, --nproc >= 2 dividing train.global_batch "
                 f"({cfg.train.global_batch}); got {args.steps}, {args.nproc}")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and args.nproc > torch.cuda.device_count():
        ap.error(f"--nproc {args.nproc} but {torch.cuda.device_count()} GPU(s) here")
    if args.device == "cpu":
        args.overrides = [*args.overrides, "device=cpu"]
    runs = run_names(args.nproc, args.modes, not args.no_repeat)
    info = launch(args, runs, cfg.train.global_batch // args.nproc)
    loss, ckpt = {}, {}
    for name, row in info.items():
        if row["status"] == "ok":
            loss[name] = row["loss"] = losses(Path(args.work) / name)
            ckpt[name] = read_checkpoint(Path(args.work) / name / "checkpoint.pt")
            row["train_seconds"] = ckpt[name]["train_seconds"]
    n = args.nproc
    results = {"config": args.config, "overrides": args.overrides, "steps": args.steps,
               "processes": n, "global_batch": cfg.train.global_batch,
               "per_process_batch": cfg.train.global_batch // n, "device": args.device,
               "runs": info,
               "bf16": bf16_verdict(loss, n) if {"p1_bf16", f"p{n}_bf16", "p1_fp32"} <= set(loss)
               else None,
               "fp32": fp32_verdict(ckpt, n) if {"p1_fp32", f"p{n}_fp32"} <= set(ckpt) else None}
    prov = provenance(command="python -m tvmlib.apps.equivalence " + " ".join(argv),
                      seed=cfg.train.seed, gpus=torch.cuda.device_count())
    out = Path(args.out) if args.out else figure_path("19_multi_gpu_equivalence.json")
    atomic_write_json({"provenance": prov, "results": results}, out)
    print(summary(results), flush=True)
    print(f"[equivalence] {prov['device']}: results written to {out}", flush=True)
    failed = [name for name, row in info.items() if row["status"] != "ok"]
    if failed:
        raise RuntimeError(f"run(s) {', '.join(failed)} failed (logs in {args.work}); the "
                           f"results of the others are in {out}")
    return results


def summary(results: dict) -> str:
    lines = [f"{name}: {row['status']}" + (f", final loss {row['loss'][-1]:.6g}"
                                           if row.get("loss") else "")
             for name, row in results["runs"].items()]
    if results["bf16"]:
        b = results["bf16"]
        gap, noise = b["pN_vs_p1"], b["bf16_vs_fp32"]
        lines.append(f"bf16: loss gap pN vs p1 mean {gap['mean']:.3g} max {gap['max']:.3g}; "
                     f"bf16 vs fp32 mean {noise['mean']:.3g} max {noise['max']:.3g}: within "
                     f"bf16 noise {b['within_bf16_noise']}")
    if results["fp32"]:
        f = results["fp32"]
        lines.append("fp32: rel. L2 pN vs p1 " + ", ".join(
            f"{g} {v['rel_l2']:.3g}" for g, v in f["pN_vs_p1"].items())
            + f"; same weights {f['same_weights']}, bit-identical {f['bit_identical']}")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run(main)
