"""Data-parallel scaling of the TVM training step: images/s per GPU on 1 and on N GPUs, eager and
with the CUDA graph, the gradient all-reduce time per step, and the scaling efficiency.

    python -m tvmlib.apps.bench.scaling [--gpus 1 2] [--model DiT-XL/2-18h] [--backends triton]
        [--batch 32] [--graph off on] [--steps 10] [--warmup 3] [--target 0.9]
        [--out figures/19_multi_gpu_scaling_<gpu>.json]
    python -m tvmlib.apps.bench.scaling --device cpu --model DiT-T/2 --input-size 8 --batch 2 \\
        --backends math --graph off --steps 2 --warmup 1 --out /tmp/scaling_cpu.json
                                        (a CPU check: 1 and 2 gloo processes, seconds)

For each process count it starts ``torchrun --standalone --nproc_per_node=N`` on this module
with ``--worker``. Each process builds the model of ``tvmlib.apps.bench.train_step`` (the paper's
TVM step on random ImageNet-256 latents, bf16 autocast) with the same seed and times the training
loop's own step (``tvmlib.training.step.optimizer_step``: loss, JVP and backward, one gradient
all-reduce, clipping, AdamW, the EMAs) on ``--batch`` images per GPU (weak scaling): the median
over ``--steps`` steps after ``--warmup``. "allreduce_ms" is the gradient synchronisation of a
step as the step sees it (flattening, the all-reduce, waiting for the slower process, the
average and the copy back), between CUDA events on the compute stream. Scaling efficiency =
images/s per GPU on N GPUs / images/s on 1 GPU; the target (``--target``) is reported as hit or
miss. Rows that fail (out of memory, a backend unavailable) say so in ``status``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tvmlib.apps import cli
from tvmlib.apps.bench.train_step import device_slug, step_config, time_steps
from tvmlib.training.build import build_loss, build_model
from tvmlib.training.distributed import init_distributed, shutdown, world
from tvmlib.training.step import TrainConfig, optimizer_step
from tvmlib.utils.atomic import atomic_write_json
from tvmlib.utils.paths import figures_dir
from tvmlib.utils.provenance import provenance


def timed_sync(step, device: torch.device) -> list:
    """Wrap ``step.sync`` so that every call records its duration; returns the list it fills
    (CUDA: (start, end) event pairs; CPU: milliseconds)."""
    sync, marks = step.sync, []

    def timed(*args):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            sync(*args)
            end.record()
            marks.append((start, end))
        else:
            t = time.perf_counter()
            sync(*args)
            marks.append(1e3 * (time.perf_counter() - t))

    step.sync = timed
    return marks


def measure(args, backend: str, graph: bool, device: torch.device) -> dict:
    """One row on this process: step and all-reduce times of ``args.model`` with ``backend``."""
    rank, n = world()
    cfg = step_config(args.model, backend, args.batch, args.input_size, not args.no_amp,
                      cuda_graph=graph)
    with torch.device(device):
        net = build_model(cfg)
    loop = TrainConfig(lr=cfg.train.lr, betas=tuple(cfg.train.betas), grad_clip=None,
                       ema_decay=0.9999, amp=cfg.train.amp, cuda_graph=graph, seed=0)
    step = optimizer_step(net, build_loss(cfg, net), loop)
    marks = timed_sync(step, device)
    g = torch.Generator().manual_seed(0)  # the same global batch on every process
    size = args.input_size
    batch = (torch.randn(args.batch * n, 4, size, size, generator=g),
             torch.randint(0, 1000, (args.batch * n,), generator=g))
    times, loss = time_steps(lambda: torch.tensor(step(batch)["loss"]), device, args.steps,
                             args.warmup)
    sync_ms = [m if isinstance(m, float) else m[0].elapsed_time(m[1])
               for m in marks[args.warmup:]]
    return {"rank": rank, "ms_per_step": statistics.median(times), "ms_all": times,
            "allreduce_ms": statistics.median(sync_ms) if sync_ms else 0.0,
            "allreduce_ms_all": sync_ms, "loss": loss,
            "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9
            if device.type == "cuda" else None}


def row_status(args, backend: str, graph: bool, device: torch.device) -> dict:
    """:func:`measure`, or the reason it could not run (never raises)."""
    if device.type != "cuda" and (graph or backend == "triton"):
        what = "a CUDA graph" if graph else "the triton backend"
        return {"rank": world()[0], "status": f"unavailable: {what} needs a CUDA device"}
    try:
        gc.collect()  # the last row's model, graph and optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        return {**measure(args, backend, graph, device), "status": "ok"}
    except torch.OutOfMemoryError:
        return {"rank": world()[0], "status": "oom"}
    except Exception as err:  # a failing row is recorded; the others still run
        return {"rank": world()[0], "status": f"error: {type(err).__name__}: {err}"[:300]}


def worker(args) -> None:
    """Under torchrun: every row on every process; rank 0 writes them to ``args.worker``."""
    rank, n, device = init_distributed(args.dist_timeout_s, "--dist-timeout-s")
    device = torch.device(args.device) if args.device == "cpu" else device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # TVM trains with TF32 off
    rows = []
    for backend in args.backends:
        for graph in args.graph:
            per_rank = [None] * n
            mine = row_status(args, backend, graph == "on", device)
            if n > 1:
                torch.distributed.all_gather_object(per_rank, mine)
            else:
                per_rank = [mine]
            rows.append({"gpus": n, "backend": backend, "graph": graph, "ranks": per_rank})
    if rank == 0:
        atomic_write_json({"rows": rows}, args.worker)
    shutdown()


def summarize(row: dict, batch: int) -> dict:
    """One table row from the per-process results: throughput from the slowest process."""
    ranks, out = row["ranks"], {k: row[k] for k in ("gpus", "backend", "graph")}
    bad = [r["status"] for r in ranks if r["status"] != "ok"]
    out["status"] = bad[0] if bad else "ok"
    if not bad:
        ms = max(r["ms_per_step"] for r in ranks)
        out.update(ms_per_step=ms, images_per_s=batch * row["gpus"] / (ms / 1e3),
                   images_per_s_per_gpu=batch / (ms / 1e3),
                   allreduce_ms=min(r["allreduce_ms"] for r in ranks),  # the collective itself
                   allreduce_ms_max=max(r["allreduce_ms"] for r in ranks),  # + waiting
                   peak_mem_gb=ranks[0]["peak_mem_gb"])
    return {**out, "ranks": ranks}


def efficiency(rows: list[dict], target: float) -> list[dict]:
    """Images/s per GPU on N GPUs over that on 1 GPU, per backend and graph mode."""
    one = {(r["backend"], r["graph"]): r for r in rows if r["gpus"] == 1 and r["status"] == "ok"}
    out = []
    for r in rows:
        base = one.get((r["backend"], r["graph"]))
        if r["gpus"] > 1 and r["status"] == "ok" and base is not None:
            eff = r["images_per_s_per_gpu"] / base["images_per_s_per_gpu"]
            out.append({"backend": r["backend"], "graph": r["graph"], "gpus": r["gpus"],
                        "efficiency": eff, "target": target,
                        "result": "hit" if eff >= target else "miss"})
    return out


def launch(n: int, argv: list[str], path: Path) -> list[dict]:
    """This module's worker under torchrun with ``n`` processes; its rows."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={n}", "-m", "tvmlib.apps.bench.scaling", *argv, "--worker",
           str(path)]
    print("[scaling] " + " ".join(cmd[2:]), flush=True)
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS":
                                    os.environ.get("OMP_NUM_THREADS", "1")})
    if done.returncode != 0 or not path.exists():
        return [{"gpus": n, "status": f"error: torchrun exited with {done.returncode}",
                 "ranks": []}]
    return json.loads(path.read_text())["rows"]


def format_table(rows: list[dict], scaling: list[dict]) -> str:
    lines = [f"{'gpus':>4} {'backend':<8} {'graph':<5} {'ms/step':>8} {'img/s/GPU':>9} "
             f"{'all-reduce ms':>13}  status"]
    for r in rows:
        ms, ips, ar = (format(r[k], ".1f") if r.get(k) is not None else "-"
                       for k in ("ms_per_step", "images_per_s_per_gpu", "allreduce_ms"))
        lines.append(f"{r['gpus']:>4} {r.get('backend', '-'):<8} {r.get('graph', '-'):<5} "
                     f"{ms:>8} {ips:>9} {ar:>13}  {r['status']}")
    lines += [f"scaling {s['backend']} graph {s['graph']} x{s['gpus']}: efficiency "
              f"{s['efficiency']:.3f} (target {s['target']}: {s['result']})" for s in scaling]
    return "\n".join(lines)


def parser() -> cli.Parser:
    ap = cli.Parser(prog="python -m tvmlib.apps.bench.scaling", description=__doc__)
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="process counts")
    ap.add_argument("--model", default="DiT-XL/2-18h", help="DiT preset (TVM's XL/2)")
    ap.add_argument("--backends", nargs="+", default=["triton"],
                    choices=["math", "sdpa", "triton"], help="attention backends")
    ap.add_argument("--batch", type=int, default=32, help="images per GPU and step")
    ap.add_argument("--graph", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=32, help="latent side (32 = 256 px)")
    ap.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast")
    ap.add_argument("--target", type=float, default=0.9, help="scaling efficiency target")
    ap.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available")
    ap.add_argument("--dist-timeout-s", type=float, default=300.0)
    ap.add_argument("--out", help="default figures/19_multi_gpu_scaling_<gpu>.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # under torchrun: rows to this file
    return ap


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    if args.worker:
        return worker(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and max(args.gpus) > torch.cuda.device_count():
        raise ValueError(f"--gpus {max(args.gpus)} but {torch.cuda.device_count()} GPU(s) here")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.gpus:
            rows += launch(n, argv, Path(tmp) / f"rows_{n}.json")
    rows = [summarize(r, args.batch) if r.get("ranks") else r for r in rows]
    scaling = efficiency(rows, args.target)
    results = {"model": args.model, "batch_per_gpu": args.batch, "input_size": args.input_size,
               "amp": "off" if args.no_amp else "bf16", "steps": args.steps,
               "warmup": args.warmup, "rows": rows, "scaling": scaling}
    slug = device_slug(device)
    prov = provenance(command="python -m tvmlib.apps.bench.scaling " + " ".join(argv),
                      seed=0, gpu=slug, gpus=torch.cuda.device_count())
    out = Path(args.out) if args.out else figures_dir() / f"19_multi_gpu_scaling_{slug}.json"
    atomic_write_json({"provenance": prov, "results": results}, out)
    print(format_table(rows, scaling))
    print(f"[scaling] {prov['device']}: results written to {out}", flush=True)
    return results


if __name__ == "__main__":
    cli.run(main)
