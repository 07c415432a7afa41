"""Benchmark of TVM sampling: the k-jump flow map of a DiT on ImageNet-256-sized latents, latency
at batch 1 and throughput at large batches.

    python -m tvmlib.apps.bench.sampling [--models DiT-XL/2-18h] [--batches 1 256]
        [--jumps 1 2 4] [--steps 20] [--warmup 3] [--out figures/sampling_<gpu>.json]
    python -m tvmlib.apps.bench.sampling --device cpu --models DiT-T/2 --batches 1 2 \\
        --input-size 4 --steps 2 --warmup 1 --out /tmp/sampling_cpu.json   (a CPU check)

One call is what evaluation does per batch: ``tvmlib.core.solvers.sample`` with the flow-map
solver, ``jumps`` uniform jumps from t = 1 to 0, the guidance input w = 2 times the output (the
scaled parameterization, 1 NFE per jump), under bf16 autocast with PyTorch's fused SDPA
attention (no JVP is needed to sample), random noise (B, 4, 32, 32) and random labels of 1000
classes; the VAE decoder is not included. The network is untrained: the time does not depend on
the weights. The time is the median over ``--steps`` calls (CUDA events) after ``--warmup``;
peak memory is ``torch.cuda.max_memory_allocated``. Results: ``{"provenance", "results":
{"rows": [...]}}``, one row per (model, batch, jumps).
"""

from __future__ import annotations

import itertools
import statistics
import sys
from pathlib import Path

import torch

from tvmlib.apps import cli
from tvmlib.apps.bench.train_step import device_slug, step_config, time_steps
from tvmlib.core.solvers import sample
from tvmlib.training.build import build_model
from tvmlib.training.step import autocast
from tvmlib.utils.atomic import atomic_write_json
from tvmlib.utils.paths import figures_dir
from tvmlib.utils.provenance import provenance


def time_sampling(net: torch.nn.Module, batch: int, jumps: int, device: torch.device,
                  input_size: int, steps: int, warmup: int, amp: bool = True) -> dict:
    """One row: median milliseconds per call of ``jumps``-jump sampling of ``batch`` images."""
    noise = torch.randn(batch, 4, input_size, input_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def call() -> torch.Tensor:  # 1.0 when every sample is finite (what time_steps returns)
        with autocast("bf16" if amp else "off", device):
            x = sample(net, noise, jumps, solver="flowmap", y=y, w=2.0, scale_param=True).x
        return torch.isfinite(x).all().float()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, finite = time_steps(call, device, steps, warmup)
    ms = statistics.median(times)
    return {"batch": batch, "jumps": jumps, "nfe": jumps, "ms": ms, "ms_all": times,
            "images_per_s": batch / (ms / 1e3), "finite": finite == 1.0,
            "peak_mem_gb": (torch.cuda.max_memory_allocated(device) / 1e9
                            if device.type == "cuda" else None)}


def main(argv: list[str] | None = None) -> dict:
    ap = cli.Parser(prog="python -m tvmlib.apps.bench.sampling", description=__doc__)
    ap.add_argument("--models", nargs="+", default=["DiT-XL/2-18h"], help="DiT presets")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    ap.add_argument("--jumps", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=20, help="timed calls (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=32, help="latent side (32 = 256 px)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast")
    ap.add_argument("--out", default=None, help="JSON path (default figures/sampling_<gpu>.json)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for model in args.models:
        with torch.device(device):
            net = build_model(step_config(model, "sdpa", 1, args.input_size)).eval()
        params = sum(p.numel() for p in net.parameters())
        for batch, jumps in itertools.product(args.batches, args.jumps):
            row = {"model": model, "params": params, **time_sampling(
                net, batch, jumps, device, args.input_size, args.steps, args.warmup,
                not args.no_amp)}
            print(f"[sampling] {model} batch {batch} jumps {jumps}: {row['ms']:.2f} ms, "
                  f"{row['images_per_s']:.1f} images/s", flush=True)
            rows.append(row)
        del net
    command = "python -m tvmlib.apps.bench.sampling " + " ".join(
        sys.argv[1:] if argv is None else argv)
    prov = provenance(command=command.strip(), seed=0, gpu=device_slug(device))
    out = Path(args.out) if args.out else figures_dir() / f"sampling_{device_slug(device)}.json"
    results = {"rows": rows, "input_size": args.input_size, "attention": "sdpa",
               "amp": "off" if args.no_amp else "bf16", "w": 2.0}
    atomic_write_json({"provenance": prov, "results": results}, out)
    print(f"[sampling] {prov['device']}: results written to {out}", flush=True)
    return results


if __name__ == "__main__":
    cli.run(main)
