"""Seconds of the first call of the Triton JVP attention for a new shape: kernel compilation.

    python -m tvmlib.apps.bench.first_call [--out PATH] [--cpu-smoke]

Each case (impl, B, H, N, d, dtype, causal) runs twice, each time in a fresh Python process
that shares one Triton cache folder, empty before the first:

* ``first_call_s``: the first forward + JVP + backward of both outputs in a process whose cache
  is empty (what a user meets the first time a shape, head dim or dtype appears);
* ``cached_call_s``: the same first call in a new process once the cache holds the kernels (what
  a second run of the same shape pays);
* ``warm_ms``: a later call in the same process (no compilation at all).

``impl`` "triton" is ``attention_with_jvp``; "triton_func" is ``attention`` under
``torch.func.jvp`` (the model's path with ``model.jvp: func``). The kernels pick their tiles by
a fixed heuristic (``tvmlib.kernels.jvp_attention.default_config``): there is no autotuning, so
the first call compiles one configuration of each kernel it launches, all of them at once on a
thread pool (``tvmlib.kernels.ahead``; rows say so with ``compile_ahead``). Results go to
``figures/first_call_<gpu>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tvmlib.apps import cli

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (impl, B, H, N, d, dtype, causal): the model's shape, then the two slow examples
CASES = [("triton", 8, 16, 256, 64, "bf16", False), ("triton_func", 8, 16, 256, 64, "bf16", False),
         ("triton", 1, 4, 33, 80, "fp32", False), ("triton", 1, 4, 2049, 128, "bf16", True)]
SMOKE_CASES = [("triton", 1, 2, 40, 32, "fp32", False)]


def one_call(impl: str, B: int, H: int, N: int, d: int, dtype: str, causal: bool,
             device: str) -> dict:
    """Time the first and a later forward + JVP + backward of one shape in this process."""
    from tvmlib.apps.bench.attention import make_inputs
    from tvmlib.kernels import attention, attention_with_jvp

    x = make_inputs(B, H, N, d, DTYPES[dtype], device)  # q, k, v, tangents, upstream grads
    prim = [x[n].requires_grad_() for n in ("q", "k", "v")]
    tang = [x[n].requires_grad_() for n in ("tq", "tk", "tv")]

    def step():
        if impl == "triton":
            o, to = attention_with_jvp(*prim, *tang, causal=causal)
        else:
            o, to = torch.func.jvp(lambda a, b, c: attention(a, b, c, causal=causal),
                                   tuple(prim), tuple(tang))
        return torch.autograd.grad((o, to), prim + tang, (x["go"], x["gt"]))

    def timed() -> float:
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = timed()
    timed()
    return {"first_s": first, "warm_ms": 1e3 * timed()}


def run_case(case: tuple, cache: Path, smoke: bool) -> dict:
    """Two fresh processes over one cache folder: (first_s, warm_ms) of each."""
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache)}
    if smoke:
        env["TRITON_INTERPRET"] = "1"
    out = []
    for _ in range(2):
        cmd = [sys.executable, "-m", "tvmlib.apps.bench.first_call", "--child",
               json.dumps([*case, "cpu" if smoke else "cuda"])]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"case {case} failed in a child process:\n{proc.stderr[-2000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    impl, B, H, N, d, dtype, causal = case
    return {"impl": impl, "B": B, "H": H, "N": N, "d": d, "dtype": dtype, "causal": causal,
            "first_call_s": out[0]["first_s"], "cached_call_s": out[1]["first_s"],
            "warm_ms": out[1]["warm_ms"], "cache_files": sum(1 for _ in cache.rglob("*")),
            "compile_ahead": True}


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser(prog="python -m tvmlib.apps.bench.first_call",
                    description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="output JSON (default figures/first_call_<gpu>.json)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="one tiny fp32 case in the Triton CPU interpreter (no compilation)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # one case, in a fresh process
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one_call(*json.loads(args.child))), flush=True)
        return 0
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("the benchmark needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
        return 2
    from tvmlib.apps.bench.attention import gpu_slug
    from tvmlib.utils.atomic import atomic_write_json
    from tvmlib.utils.paths import figures_dir
    from tvmlib.utils.provenance import provenance

    rows = []
    for case in SMOKE_CASES if args.cpu_smoke else CASES:
        with tempfile.TemporaryDirectory(prefix="triton-cache-") as tmp:
            rows.append(run_case(case, Path(tmp), args.cpu_smoke))
        r = rows[-1]
        print(f"{r['impl']:<12} B{r['B']} H{r['H']} N{r['N']} d{r['d']} {r['dtype']}"
              f"{' causal' if r['causal'] else ''}: first call {r['first_call_s']:.1f} s, "
              f"cached {r['cached_call_s']:.1f} s, warm {r['warm_ms']:.2f} ms", flush=True)
    path = Path(args.out) if args.out else figures_dir() / f"first_call_{gpu_slug()}.json"
    doc = {"provenance": provenance(command="python -m tvmlib.apps.bench.first_call "
                                    + " ".join(sys.argv[1:] if argv is None else argv), seed=0),
           "rows": rows}
    atomic_write_json(doc, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
