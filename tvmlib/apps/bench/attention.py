"""Benchmark of the Triton JVP attention kernels against the math baseline and SDPA flash.

    python -m tvmlib.apps.bench.attention [--quick] [--out PATH] [--sweep] [--cpu-smoke]

For each shape (B, H, N, d), bf16, non-causal, it records

* ``triton``: ``attention_with_jvp`` forward+JVP (``fwd_jvp``) and forward+JVP+backward with
  all six gradients for random upstream gradients of O and Ȯ (``fwd_jvp_bwd``);
* ``triton_func``: the same through ``torch.func.jvp`` of ``tvmlib.kernels.attention`` (the
  path a model takes; primal and tangent kernels, two backward passes);
* ``math``: ``torch.func.jvp`` of SDPA with the MATH backend (the only backend with a JVP), and
  ``autograd.grad`` of both outputs;
* ``sdpa_flash``: SDPA with the FLASH backend, no JVP (``fwd`` and ``fwd_bwd``).

Times are CUDA-event medians over CUDA-graph replays (launch overhead hidden), peak memory is
the ``max_memory_allocated`` increase of one eager call, and TFLOP/s follow the FLOP model of
docs/jvp_attention.md §5.5 (units of B·H·N²·d: fwd 4, fwd_jvp 12, fwd_jvp_bwd 42, fwd_bwd 14).
Before timing, the kernel and the bf16 math baseline are compared with a float32 math reference
on the first two heads (heads are independent), and the relative error (Frobenius, worst of O,
Ȯ and the six gradients) is recorded. Results go to ``figures/jvp_attention_<gpu>.json``.

``--sweep`` times tile configurations of each kernel and prints the best per kernel and head
dim. ``--cpu-smoke`` runs every code path on a tiny shape in the Triton CPU interpreter.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from tvmlib.apps import cli

SHAPES = [(8, 16, 256, 64), (4, 16, 1024, 64), (2, 16, 4096, 64), (1, 16, 8192, 64),
          (2, 16, 4096, 128)]
QUICK_SHAPES = [(8, 16, 256, 64), (2, 16, 4096, 64)]
SMOKE_SHAPES = [(1, 2, 40, 32)]
FLOP_UNITS = {"fwd": 4, "fwd_jvp": 12, "fwd_jvp_bwd": 42, "fwd_bwd": 14}


def flops(pass_name: str, B: int, H: int, N: int, d: int) -> float:
    """FLOPs of one pass by the doc's model (non-causal)."""
    return FLOP_UNITS[pass_name] * B * H * N * N * d


def gpu_slug() -> str:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu-interpreter"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ----------------------------------------------------------------------------------------------
# the timed callables


def _math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _flash_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def make_step(impl: str, pass_name: str, x: dict[str, Tensor], config=None
              ) -> Callable[[], tuple[Tensor, ...]]:
    """A no-argument callable running one pass; returns its outputs (for the error check)."""
    from tvmlib.kernels import attention, attention_with_jvp
    q, k, v, tq, tk, tv, go, gt = (x[n] for n in ("q", "k", "v", "tq", "tk", "tv", "go", "gt"))
    with_grad = pass_name in ("fwd_jvp_bwd", "fwd_bwd")
    prim = [t.detach().requires_grad_(with_grad) for t in (q, k, v)]
    tang = [t.detach().requires_grad_(with_grad) for t in (tq, tk, tv)]

    def grads(outs, gouts, ins):
        return torch.autograd.grad(outs, ins, gouts)

    if impl == "triton":
        def step():
            o, to = attention_with_jvp(*prim, *tang, config=config)
            if with_grad:
                return (o, to, *grads((o, to), (go, gt), prim + tang))
            return o, to
    elif impl in ("triton_func", "math"):
        fn = (lambda a, b, c: attention(a, b, c, config=config)) if impl == "triton_func" \
            else _math_attention

        def step():
            o, to = torch.func.jvp(fn, tuple(prim), tuple(tang))
            if with_grad:
                return (o, to, *grads((o, to), (go, gt), prim + tang))
            return o, to
    elif impl == "sdpa_flash":
        def step():
            o = _flash_attention(*prim)
            if with_grad:
                return (o, *grads((o,), (go,), prim))
            return (o,)
    else:
        raise ValueError(f"unknown impl {impl!r}; allowed: triton, triton_func, math, sdpa_flash")
    return step


# ----------------------------------------------------------------------------------------------
# timing and memory


def time_ms(step: Callable[[], object], use_graph: bool, reps: int = 20, inner: int = 5
            ) -> tuple[float, str]:
    """Median ms of one call: CUDA events around ``inner`` back-to-back calls (graph replays)."""
    if not torch.cuda.is_available():  # interpreter smoke run: wall clock
        t0 = time.perf_counter()
        step()
        return (time.perf_counter() - t0) * 1e3, "wall"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles kernels) off the default stream
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    run, method = step, "eager"
    if use_graph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run, method = graph.replay, "cuda_graph"
    for _ in range(2):
        run()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times), method


def peak_mem_mb(step: Callable[[], object]) -> float | None:
    """Increase of ``max_memory_allocated`` during one eager call, in MiB."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


# ----------------------------------------------------------------------------------------------
# correctness against a float32 math reference


def _rel(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def rel_errors(x: dict[str, Tensor], impls: list[str], heads: int = 2, config=None
               ) -> dict[str, float]:
    """Worst relative error of (O, Ȯ, 6 grads) vs float32 math, on the first ``heads`` heads."""
    from tvmlib.kernels.reference import jvp_grads_ref
    sl = {n: t[:1, :heads].contiguous() for n, t in x.items()}
    ref32 = {n: t.float() for n, t in sl.items()}
    o, to, g = jvp_grads_ref(*(ref32[n] for n in ("q", "k", "v", "tq", "tk", "tv")),
                             ref32["go"], ref32["gt"])
    ref = (o, to, *g)
    out = {}
    for impl in [i for i in impls if i != "sdpa_flash"]:
        got = make_step(impl, "fwd_jvp_bwd", sl, config)()
        out[impl] = max(_rel(a, b) for a, b in zip(got, ref))
    if "sdpa_flash" in impls:
        ref_fwd = attention_ref_f32(ref32)
        got = make_step("sdpa_flash", "fwd_bwd", sl)()
        out["sdpa_flash"] = max(_rel(a, b) for a, b in zip(got, ref_fwd))
    return out


def attention_ref_f32(ref32: dict[str, Tensor]) -> tuple[Tensor, ...]:
    from tvmlib.kernels.reference import attention_ref
    ins = [ref32[n].clone().requires_grad_(True) for n in ("q", "k", "v")]
    o = attention_ref(*ins)
    return (o.detach(), *torch.autograd.grad(o, ins, ref32["go"]))


# ----------------------------------------------------------------------------------------------
# main benchmark


def make_inputs(B: int, H: int, N: int, d: int, dtype: torch.dtype, device: str,
                seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    names = ("q", "k", "v", "tq", "tk", "tv", "go", "gt")
    return {n: torch.randn(B, H, N, d, generator=gen, device=device, dtype=dtype)
            for n in names}


def bench_shape(B: int, H: int, N: int, d: int, dtype: torch.dtype, device: str,
                impls: list[str]) -> list[dict]:
    x = make_inputs(B, H, N, d, dtype, device)
    dtype_name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    try:
        errs = rel_errors(x, impls)
    except torch.OutOfMemoryError:
        errs = {}
        torch.cuda.empty_cache()
    rows = []
    passes = {"triton": ("fwd_jvp", "fwd_jvp_bwd"), "triton_func": ("fwd_jvp", "fwd_jvp_bwd"),
              "math": ("fwd_jvp", "fwd_jvp_bwd"), "sdpa_flash": ("fwd", "fwd_bwd")}
    for impl in impls:
        for pass_name in passes[impl]:
            row = {"impl": impl, "pass": pass_name, "B": B, "H": H, "N": N, "d": d,
                   "dtype": dtype_name, "ms": None, "peak_mem_mb": None, "tflops": None,
                   "rel_err": errs.get(impl),
                   "timing": None, "error": None}
            try:
                step = make_step(impl, pass_name, x)
                row["peak_mem_mb"] = peak_mem_mb(step)
                row["ms"], row["timing"] = time_ms(step, use_graph=device == "cuda")
                row["tflops"] = flops(pass_name, B, H, N, d) / (row["ms"] * 1e-3) / 1e12
            except torch.OutOfMemoryError:
                row["error"] = "OOM"
            except Exception as e:  # recorded, e.g. a backend without support on this GPU
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            finally:
                step = None
                if device == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    shape = f"({r['B']},{r['H']},{r['N']},{r['d']})"
    return (f"{r['impl']:<12}{r['pass']:<12}{shape:<18}{f(r['ms'], '10.3f')}"
            f"{f(r['tflops'], '9.1f')}{f(r['peak_mem_mb'], '11.0f')}"
            f"{f(r['rel_err'], '10.1e')}  {r['error'] or ''}")


def print_table(rows: list[dict]) -> None:
    print(f"\n{'impl':<12}{'pass':<12}{'shape':<18}{'ms':>10}{'TFLOP/s':>9}{'peak MiB':>11}"
          f"{'rel_err':>10}")
    for r in rows:
        print(format_row(r))


# ----------------------------------------------------------------------------------------------
# tile sweep


def sweep_candidates(smoke: bool) -> dict[str, list]:
    """Tile configs tried per kernel (``--cpu-smoke``: two small ones)."""
    from tvmlib.kernels.jvp_attention import Tiles
    if smoke:
        return {k: [Tiles(16, 32, 1, 1), Tiles(32, 16, 1, 1)]
                for k in ("fwd", "bwd_kv", "bwd_kv_split", "bwd_q")}
    kv_tiles = [Tiles(bm, bn, w, s) for bm, bn in ((16, 64), (32, 64), (64, 64), (32, 128),
                                                   (64, 128), (16, 128))
                for w in (4, 8) for s in (2, 3)]
    return {
        "fwd": [Tiles(bm, bn, w, s) for bm in (64, 128) for bn in (32, 64, 128) for w in (4, 8)
                for s in (2, 3) if not (bm == 64 and w == 8)],
        "bwd_kv": kv_tiles,
        "bwd_kv_split": kv_tiles,  # K̄, K̇̄ and V̄, V̇̄ in two launches
        "bwd_q": [Tiles(bm, bn, w, s) for bm, bn in ((64, 16), (64, 32), (64, 64), (128, 32),
                                                     (128, 64), (32, 64))
                  for w in (4, 8) for s in (2, 3)],
    }


def sweep_shape(x: dict[str, Tensor], candidates: dict[str, list]) -> dict:
    """Time each kernel's candidate tiles (the other kernels at their defaults).

    ``bwd_kv_split`` sweeps the key/value-block tiles with ``split_kv=True``, ``bwd_kv`` with
    ``split_kv=False``.
    """
    from tvmlib.kernels import jvp_attention as ja
    d = x["q"].shape[-1]
    base = ja.default_config(d, x["q"].dtype)
    ins = [x[n] for n in ("q", "k", "v", "tq", "tk", "tv")]
    o, to, lse2, mu = ja.jvp_forward(*ins)
    best = {}
    for kernel, tiles in candidates.items():
        results = []
        for t in tiles:
            field = "bwd_kv" if kernel.startswith("bwd_kv") else kernel
            split = {"bwd_kv": False, "bwd_kv_split": True}.get(kernel, base.split_kv)
            cfg = ja.AttentionConfig(**{**base.__dict__, field: t, "split_kv": split})
            if kernel == "fwd":
                step = lambda cfg=cfg: ja.jvp_forward(*ins, config=cfg)  # noqa: E731
            else:
                step = lambda cfg=cfg: ja.attention_backward(  # noqa: E731
                    *ins, o, to, lse2, mu, x["go"], x["gt"], config=cfg)
            try:
                ms, _ = time_ms(step, use_graph=False, reps=5, inner=3)
            except Exception as e:  # e.g. out of shared memory for this tile
                print(f"  {kernel} d={d} {t}: failed ({type(e).__name__})", flush=True)
                continue
            results.append((ms, t))
            print(f"  {kernel} d={d} {t}: {ms:.3f} ms", flush=True)
        if results:
            ms, t = min(results, key=lambda r: r[0])
            default = getattr(base, "bwd_kv" if kernel.startswith("bwd_kv") else kernel)
            best[kernel] = {"tiles": t.__dict__, "ms": ms, "default": default.__dict__,
                            "default_ms": next((m for m, tt in results if tt == default), None)}
            print(f"best {kernel} d={d}: {t} {ms:.3f} ms (default {default})", flush=True)
    return best


def sweep(device: str, dtype: torch.dtype, dims: list[int], kernels: list[str],
          smoke: bool = False) -> dict:
    """Best tiles per kernel for each head dim at (2, 16, 4096, d) (smoke: a tiny shape)."""
    shapes = [(1, 2, 64, 32)] if smoke else [(2, 16, 4096, d) for d in dims]
    out = {}
    for (B, H, N, d) in shapes:
        x = make_inputs(B, H, N, d, dtype, device)
        cands = {k: v for k, v in sweep_candidates(smoke).items() if k in kernels}
        out[f"B{B}_H{H}_N{N}_d{d}"] = sweep_shape(x, cands)
    return out


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two shapes only")
    parser.add_argument("--out", default=None, help="output JSON path "
                        "(default figures/jvp_attention_<gpu>.json)")
    parser.add_argument("--sweep", action="store_true", help="sweep kernel tile configs")
    parser.add_argument("--sweep-dims", default="64,128", help="head dims for --sweep")
    parser.add_argument("--sweep-kernels", default="fwd,bwd_kv,bwd_kv_split,bwd_q",
                        help="kernels for --sweep")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny fp32 shape in the Triton CPU interpreter (no timing value)")
    parser.add_argument("--impls", default="triton,triton_func,math,sdpa_flash")
    args = parser.parse_args(argv)

    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(1)
        device, dtype, shapes = "cpu", torch.float32, SMOKE_SHAPES
        impls = [i for i in args.impls.split(",") if i != "sdpa_flash"]
    else:
        if not torch.cuda.is_available():
            print("the benchmark needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
            return 2
        device, dtype = "cuda", torch.bfloat16
        shapes = QUICK_SHAPES if args.quick else SHAPES
        impls = args.impls.split(",")

    from tvmlib.utils.atomic import atomic_write_text
    from tvmlib.utils.paths import figures_dir
    from tvmlib.utils.provenance import provenance

    results: dict = {"flop_units": FLOP_UNITS, "causal": False}
    if args.sweep:
        dims = [int(d) for d in args.sweep_dims.split(",")]
        kernels = args.sweep_kernels.split(",")
        results["sweep"] = sweep(device, dtype, dims, kernels, smoke=args.cpu_smoke)
        print(json.dumps(results["sweep"], indent=1))
    rows = []
    if not args.sweep or args.quick:
        for shape in shapes:
            rows += bench_shape(*shape, dtype=dtype, device=device, impls=impls)
        print_table(rows)
    prov = provenance(seed=0, gpu=gpu_slug(), dtype=str(dtype))
    name = f"jvp_attention_{gpu_slug()}{'_sweep' if args.sweep else ''}.json"
    path = Path(args.out) if args.out else figures_dir() / name
    atomic_write_text(json.dumps({"provenance": prov, **results, "rows": rows}, indent=1), path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
