"""Compile a call's attention kernels in parallel before the call needs them.

A call's first forward + backward launches up to eight kernel variants (the forward, then the
backward's row sums, key/value blocks and query blocks; the ``torch.func`` path twice as many),
and Triton compiles each at its first launch, one after the other: several seconds for a new
shape or dtype. Their compilations are independent and their arguments follow from q, k, v, so
on the first call of a shape :func:`compile_ahead` replays the launches on stand-in tensors with
``COMPILE_ONLY`` set, each launch becoming Triton's ``warmup`` inside
``triton.AsyncCompileMode``: every variant compiles at once on a thread pool (Triton releases
the GIL while it compiles), and the real launches then find them compiled. Nothing runs on the
GPU in the rehearsal. Stand-ins share the inputs' shapes, strides and dtype, so they get the same
specialisation unless an input's address is not 16-byte aligned; then that launch compiles its
own variant when it runs, as it would have without this module.
"""

from __future__ import annotations

import importlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

PATHS = ("jvp", "func", "plain")
_done: set[tuple] = set()


def _stand_in(x: Tensor) -> Tensor:
    """An uninitialised tensor with ``x``'s shape, strides, dtype and device."""
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)


def rehearse(path: str, q: Tensor, k: Tensor, v: Tensor, grad: bool, causal: bool = False,
             scale: float | None = None, config=None) -> None:
    """Call the launchers in the order one forward (+ backward if ``grad``) of ``path`` does:
    "jvp": ``attention_with_jvp`` (fused forward; backward of both outputs); "func":
    ``attention`` under ``torch.func.jvp`` (primal and tangent forwards; each one's backward);
    "plain": ``attention`` (forward; backward). Tangents and upstream gradients are q, k, v."""
    ja = importlib.import_module("tvmlib.kernels.jvp_attention")
    a = dict(causal=causal, scale=scale, config=config)
    if path == "jvp":
        o, to, lse2, mu = ja.jvp_forward(q, k, v, q, k, v, **a)
        if grad:
            ja.attention_backward(q, k, v, q, k, v, o, to, lse2, mu, q, q, **a)
        return
    o, lse2 = ja.attention_forward(q, k, v, **a)
    if path == "func":
        to, mu = ja.tangent_forward(q, k, v, q, k, v, o, lse2, **a)
        if grad:
            ja.attention_backward(q, k, v, q, k, v, o, to, lse2, mu, None, q, **a)
    if grad:
        ja.attention_backward(q, k, v, None, None, None, o, None, lse2, None, q, None, **a)


def compile_ahead(path: str, q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                  scale: float | None = None, config=None) -> bool:
    """Compile, in parallel, the kernels of ``path``'s next call on this shape (see the module
    docstring); True if it did. Once per (path, shape, strides, dtype, options, grad mode) in a
    process; skipped in the Triton interpreter, off CUDA and during CUDA-graph capture. Invalid
    inputs raise the call's own error; a failure to compile ahead only warns (the call then
    compiles its kernels itself)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    import triton

    ja = importlib.import_module("tvmlib.kernels.jvp_attention")
    if (ja.interpreting() or q.device.type != "cuda" or not hasattr(triton, "AsyncCompileMode")
            or torch.cuda.is_current_stream_capturing()):
        return False
    grad = torch.is_grad_enabled()
    key = (path, grad, causal, scale, config, q.dtype, q.device,
           *((tuple(x.shape), x.stride()) for x in (q, k, v)))
    if key in _done:
        return False
    ja.check_inputs(q, k, v)
    _done.add(key)
    token = ja.COMPILE_ONLY.set(True)
    # plain tensors even inside torch.func transforms (whose new tensors have no storage)
    with torch._C._DisableFuncTorch(), torch.no_grad():
        try:
            stand_ins = [_stand_in(x) for x in (q, k, v)]
            with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, \
                    triton.AsyncCompileMode(pool):  # waits for every compile on leaving
                rehearse(path, *stand_ins, grad, causal, scale, config)
        except Exception as err:  # only a speed-up: the call itself compiles what it needs
            warnings.warn(f"compiling the attention kernels ahead failed ({err!r}); each now "
                          "compiles at its first launch", RuntimeWarning, stacklevel=3)
            return False
        finally:
            ja.COMPILE_ONLY.reset(token)
    return True
