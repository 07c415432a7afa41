"""Benchmark of one TVM training step of a DiT on ImageNet-256-sized latents, per attention
backend: time per step, images per second and peak GPU memory.

    python -m tvmlib.apps.bench.train_step [--models DiT-B/2 DiT-XL/2-18h] [--batch 32]
        [--backends math triton] [--graph off on] [--jvp fused compiled func] [--losses tvm fm]
        [--steps 10] [--warmup 3] [--out figures/train_step_<gpu>.json]
    python -m tvmlib.apps.bench.train_step --device cpu --models DiT-T/2 --batch 2 --input-size 8 \\
        --steps 2 --warmup 1 --out /tmp/train_step_cpu.json          (a seconds-long CPU check)

One step is what the training loop does per micro-batch for the paper's runs: ``TVMLoss`` with
constant w = 2 (``cfg_scale``), the scaled parameterization, label dropout 0.1 and the EMA
target, forward + JVP + backward under bf16 autocast, an AdamW step (lr 1e-4, betas (0.9, 0.95))
and the target update, on random latents (B, 4, 32, 32) = 256 tokens at patch 2 and random
labels of 1000 classes. ``--jvp`` picks how the step gets dF/ds (``model.jvp``): "fused", the
DiT's own tangent-carrying forward (``tvmlib.nn.dit_jvp``), "compiled", the same with each
block's work around its attention through ``torch.compile``, or "func", ``torch.func.jvp``.
``--losses tvm fm`` adds the flow-matching step of the same network as the reference
(``FMLoss``, logit-normal times, label dropout 0.1, no guidance input): it needs no JVP, so it
runs once per graph mode with PyTorch's fused SDPA attention (flash on a GPU), whatever
``--backends`` says; its ``jvp`` is None, and when "compiled" is among ``--jvp`` it runs a
second time with the whole network through ``torch.compile`` (``jvp`` "compiled"), so that the
TVM-to-FM ratio meets FM at its best as well. The time is the median over ``--steps`` steps (CUDA
events) after ``--warmup`` steps; peak memory is ``torch.cuda.max_memory_allocated``. Each
(model, loss, backend, graph, jvp) row records its status: ``ok``, ``oom`` (out of memory),
``unavailable: ...`` (e.g. the Triton kernel cannot be imported) or ``error: ...``; one failing
row never stops the others. The model is built directly on the GPU (``--build-on``), since the
spectral init's SVDs of an XL model take a while on a CPU. Results: ``{"provenance", "results":
{"rows": [...]}}``.
"""

from __future__ import annotations

import gc
import itertools
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tvmlib.apps import cli
from tvmlib.nn.dit_jvp import JVP_MODES
from tvmlib.training.build import build_loss, build_model, compile_forward
from tvmlib.training.config import RunConfig, config_from_dict
from tvmlib.training.graphs import GraphedLossBackward
from tvmlib.training.step import autocast, make_optimizer
from tvmlib.utils.atomic import atomic_write_json
from tvmlib.utils.paths import figures_dir
from tvmlib.utils.provenance import provenance

DEFAULT_MODELS = ["DiT-B/2", "DiT-XL/2-18h"]
DEFAULT_BACKENDS = ["math", "triton"]


def device_slug(device: torch.device) -> str:
    """"nvidia-h100-80gb-hbm3" from the GPU name, or "cpu"."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]


def step_config(model: str, backend: str, batch: int, input_size: int = 32, amp: bool = True,
                cfg_scale: float = 2.0, cuda_graph: bool = False, seed: int = 0,
                jvp: str | None = "fused", loss: str = "tvm",
                fused_adamw: bool = False) -> RunConfig:
    """The paper's TVM step (or with ``loss`` "fm" the flow-matching step) for ``model`` on
    random latents (4 channels, 1000 classes); ``fused_adamw``: AdamW as one fused kernel."""
    tvm = loss == "tvm"
    return config_from_dict({
        "name": "bench_train_step",
        "model": {"preset": model, "input_size": input_size, "in_channels": 4,
                  "num_classes": 1000, "guidance": tvm, "attn_backend": backend,
                  "jvp": jvp or "fused"},
        "loss": ({"name": "tvm", "cfg_scale": cfg_scale, "scale_param": True,
                  "label_dropout": 0.1} if tvm else
                 {"name": "fm", "time_sampler": "logit_normal", "label_dropout": 0.1}),
        "train": {"global_batch": batch, "lr": 1e-4, "betas": [0.9, 0.95],
                  "amp": "bf16" if amp else "off", "cuda_graph": cuda_graph, "seed": seed,
                  "fused_adamw": fused_adamw}})


def make_step(model: str, backend: str, batch: int, device: torch.device,
              input_size: int = 32, build_on: str | None = None, amp: bool = True,
              cfg_scale: float = 2.0, info: dict | None = None,
              cuda_graph: bool = False, jvp: str | None = "fused",
              loss: str = "tvm", fused_adamw: bool = False) -> Callable[[], torch.Tensor]:
    """Build the model, loss and optimizer with ``tvmlib.training.build``; return a callable
    running one training step (with ``cuda_graph``, loss and backward replay as one CUDA graph,
    as the training loop does)."""
    cfg = step_config(model, backend, batch, input_size, amp, cfg_scale, cuda_graph, jvp=jvp,
                      loss=loss, fused_adamw=fused_adamw)
    info = {} if info is None else info
    t0 = time.perf_counter()
    with torch.device(build_on or device):
        net = build_model(cfg)
    net = net.to(device)
    if loss == "fm" and jvp == "compiled":  # FM at its best too: as training compiles it
        compile_forward(net, loss)
    _sync(device)
    info["build_seconds"] = time.perf_counter() - t0
    info["params"] = sum(p.numel() for p in net.parameters())
    loss_fn = build_loss(cfg, net)
    opt = make_optimizer(net, cfg.train)
    x = torch.randn(batch, 4, input_size, input_size, device=device)  # (B, 4, 32, 32) latents
    y = torch.randint(0, 1000, (batch,), device=device)

    def precision():
        return autocast(cfg.train.amp, device, cuda_graph)

    graphed = GraphedLossBackward(net, loss_fn, precision) if cuda_graph else None
    calls = [0]

    def step() -> torch.Tensor:
        calls[0] += 1
        if graphed is not None:
            graphed.zero_grad()
            loss, _ = graphed((x, y), seed=calls[0])
        else:
            opt.zero_grad(set_to_none=True)
            torch.manual_seed(calls[0])
            with precision():
                loss, _ = loss_fn(net, (x, y))
            loss.backward()
        opt.step()
        if hasattr(loss_fn, "after_step"):  # TVM's EMA target; FM has none
            loss_fn.after_step(net)
        return loss.detach()

    return step


def time_steps(step: Callable[[], torch.Tensor], device: torch.device, steps: int,
               warmup: int, info: dict | None = None) -> tuple[list[float], float]:
    """(milliseconds of each timed step, last loss); CUDA events on a GPU. ``info["warmup_s"]``
    gets the seconds of the warm-up steps (torch.compile's and Triton's compilation, a CUDA
    graph's capture)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    _sync(device)
    if info is not None:
        info["warmup_s"] = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            loss = step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            loss = step()
            times.append(1e3 * (time.perf_counter() - t))
    return times, float(loss)


def bench_one(model: str, backend: str, batch: int, device: torch.device, steps: int = 10,
              warmup: int = 3, input_size: int = 32, build_on: str | None = None,
              amp: bool = True, cfg_scale: float = 2.0, seed: int = 0,
              cuda_graph: bool = False, jvp: str | None = "fused", loss: str = "tvm",
              fused_adamw: bool = False) -> dict:
    """Time ``steps`` training steps of one (model, loss, attention backend, graph mode, jvp);
    never raises for OOM or a missing/failed backend, which go into the row's ``status``."""
    row = {"model": model, "loss_name": loss, "backend": backend, "batch": batch,
           "cuda_graph": cuda_graph, "jvp": jvp if loss == "tvm" or jvp == "compiled" else None,
           "fused_adamw": fused_adamw, "ms_per_step": None,
           "images_per_s": None, "peak_mem_gb": None, "status": "ok"}
    for needs_cuda, what in ((backend == "triton", "the triton backend"),
                             (cuda_graph, "a CUDA graph")):
        if needs_cuda and device.type != "cuda":
            row["status"] = f"unavailable: {what} needs a CUDA device"
            return row
    step = None
    try:
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = make_step(model, backend, batch, device, input_size, build_on, amp, cfg_scale,
                         row, cuda_graph, jvp, loss, fused_adamw)
        times, row["loss"] = time_steps(step, device, steps, warmup, row)
        if not math.isfinite(row["loss"]):
            row["status"] = f"error: non-finite loss {row['loss']}"
        row["ms_per_step"] = statistics.median(times)
        row["ms_all"] = times
        row["images_per_s"] = batch / (row["ms_per_step"] / 1e3)
        if device.type == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    except torch.OutOfMemoryError as err:
        row["status"] = "oom"
        row["detail"] = _short(err)
    except RuntimeError as err:
        unavailable = "is unavailable" in str(err)
        row["status"] = ("unavailable: " if unavailable else "error: ") + _short(err)
    except Exception as err:  # any other failure of this row is recorded, the others still run
        row["status"] = "error: " + _short(err)
    finally:
        step = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def format_table(rows: list[dict]) -> str:
    head = (f"{'model':<14} {'loss':<4} {'backend':<8} {'graph':<5} {'jvp':<8} {'batch':>5} "
            f"{'ms/step':>9} {'img/s':>8} {'peak GB':>8}  status")
    lines = [head, "-" * len(head)]
    for r in rows:
        ms, ips, mem = (format(r[k], f) if r[k] is not None else "-" for k, f in (
            ("ms_per_step", "9.1f"), ("images_per_s", "8.1f"), ("peak_mem_gb", "8.2f")))
        graph = "on" if r.get("cuda_graph") else "off"
        lines.append(f"{r['model']:<14} {r.get('loss_name') or 'tvm':<4} {r['backend']:<8} "
                     f"{graph:<5} {r.get('jvp') or '-':<8} "
                     f"{r['batch']:>5} {ms:>9} {ips:>8} {mem:>8}  {r['status']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = cli.Parser(prog="python -m tvmlib.apps.bench.train_step", description=__doc__)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="DiT presets")
    ap.add_argument("--backends", nargs="+", default=DEFAULT_BACKENDS,
                    choices=["math", "sdpa", "triton"], help="attention backends")
    ap.add_argument("--batch", type=int, default=32, help="images per step (one GPU)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=32, help="latent side (32 = 256 px)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--build-on", default=None, choices=["cpu", "cuda"],
                    help="device for building/initialising the model (default: --device)")
    ap.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast")
    ap.add_argument("--graph", nargs="+", default=["off"], choices=["off", "on"],
                    help="eager steps, CUDA-graph replay of loss + backward "
                         "(tvmlib.training.graphs), or both")
    ap.add_argument("--jvp", nargs="+", default=["fused"], choices=list(JVP_MODES),
                    help="how dF/ds is computed (model.jvp): the DiT's fused tangent forward, "
                         "the same through torch.compile, torch.func.jvp; one or several")
    ap.add_argument("--adamw", nargs="+", default=["foreach"], choices=["foreach", "fused"],
                    help="AdamW's kernels (train.fused_adamw): foreach, one fused kernel, or both")
    ap.add_argument("--losses", nargs="+", default=["tvm"], choices=["tvm", "fm"],
                    help="tvm, and fm for the flow-matching step of the same network "
                         "(SDPA attention, no JVP) as the reference")
    ap.add_argument("--out", default=None, help="JSON path (default figures/train_step_<gpu>.json)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # TVM trains with TF32 off
    command = "python -m tvmlib.apps.bench.train_step " + " ".join(
        sys.argv[1:] if argv is None else argv)
    prov = provenance(command=command.strip(), seed=0, gpu=device_slug(device))
    out = Path(args.out) if args.out else figures_dir() / f"train_step_{device_slug(device)}.json"
    rows = []
    results = {"rows": rows, "input_size": args.input_size, "tokens": (args.input_size // 2) ** 2,
               "amp": "off" if args.no_amp else "bf16", "steps": args.steps,
               "warmup": args.warmup, "loss": "TVMLoss(cfg_scale=2, scale_param=True)",
               "fm_loss": "FMLoss(logit_normal, label_dropout=0.1)"}
    for model, loss in itertools.product(args.models, args.losses):
        tvm = loss == "tvm"
        fm_jvps = [None] + ["compiled"] * ("compiled" in args.jvp)  # FM: eager, compiled
        for backend, graph, jvp, adamw in itertools.product(
                args.backends if tvm else ["sdpa"], args.graph, args.jvp if tvm else fm_jvps,
                args.adamw):
            row = bench_one(model, backend, args.batch, device, args.steps, args.warmup,
                            args.input_size, args.build_on, not args.no_amp,
                            cuda_graph=graph == "on", jvp=jvp, loss=loss,
                            fused_adamw=adamw == "fused")
            print(f"[bench] {model} {loss} {backend} graph {graph} jvp {jvp} adamw {adamw}: "
                  f"{row['status']} "
                  f"{row['ms_per_step'] and round(row['ms_per_step'], 1)} ms/step",
                  flush=True)
            rows.append(row)
            atomic_write_json({"provenance": prov, "results": results}, out)  # row by row
    print(format_table(rows))
    print(f"[bench] {prov['device']}: results written to {out}", flush=True)
    return results


if __name__ == "__main__":
    cli.run(main)
