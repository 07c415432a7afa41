"""Scaled dot-product attention with a backend switch: "math", "sdpa" or "triton".

TVM's loss differentiates the network forward in s (``torch.func.jvp``) and then backward through
that JVP ([P] Eq. 17, section 4). PyTorch's fused SDPA kernels have no forward-mode AD rule
(pytorch/pytorch #117629, #128971), so the backends are:

- ``"math"``: softmax(q k^T / sqrt(d)) v written out. Works everywhere, under ``torch.func.jvp``,
  ``torch.autograd.forward_ad`` and double backward; O(N^2) memory. The default.
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``. Fast, no forward-mode AD:
  asking it for a JVP raises :class:`AttentionJVPError`. Use it for sampling and FM training.
- ``"triton"``: the project's fused JVP flash-attention kernel, ``tvmlib.kernels.attention``
  (CUDA only), imported on first use.

Choose the backend per call (``attention(..., backend=...)``), per model (``DiT(attn_backend=...)``)
or for a whole block of code::

    with use_attention("sdpa"):
        x = sample(net, ...)

``set_attention_backend(name)`` changes the process-wide default ("math" at import).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

BACKENDS = ("math", "sdpa", "triton")

_default_backend = "math"


class AttentionJVPError(RuntimeError):
    """A forward-mode derivative (JVP) was requested through a backend that has none."""


def check_backend(name: str) -> str:
    """Return ``name`` if it is a known backend, else raise ValueError listing the valid ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid backends: {list(BACKENDS)}")
    return name


def get_attention_backend() -> str:
    """The backend used when neither the call nor the model names one."""
    return _default_backend


def set_attention_backend(name: str) -> None:
    """Set the process-wide default backend ("math", "sdpa" or "triton")."""
    global _default_backend
    _default_backend = check_backend(name)


@contextlib.contextmanager
def use_attention(name: str) -> Iterator[None]:
    """Use backend ``name`` as the default inside a ``with`` block, then restore the old one.

    A backend named explicitly in a call or set on a model (``net.attn_backend``) still wins.
    """
    global _default_backend
    previous, _default_backend = _default_backend, check_backend(name)
    try:
        yield
    finally:
        _default_backend = previous


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q (B, H, Nq, d), k and v (B, H, Nk, d) -> (B, H, Nq, d).

    ``backend``: "math", "sdpa" or "triton"; None uses the current default
    (:func:`get_attention_backend`). No mask, no causal, no dropout.
    """
    backend = _backend_for(backend, q, k, v)
    if backend == "math":
        return math_attention(q, k, v)
    if backend == "sdpa":
        return _sdpa(q, k, v)
    return _triton_attention("attention")(q, k, v)


def math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The explicit formula; differentiable in every mode (forward, reverse, forward-over-reverse).

    Half-precision scores are soft-maxed in float32, then cast back to v's dtype.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    low_precision = scores.dtype in (torch.float16, torch.bfloat16)
    p = torch.softmax(scores.float() if low_precision else scores, dim=-1)
    return p.to(v.dtype) @ v  # (B, H, Nq, d)


def attention_jvp(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                  backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Attention O and its tangent Ȯ along (q̇, k̇, v̇), both differentiable by reverse mode.

    The explicit counterpart of ``torch.func.jvp`` of :func:`attention`, for networks that carry
    tangents themselves (:mod:`tvmlib.nn.dit_jvp`). q, q̇: (B, H, Nq, d); k, v, k̇, v̇: (B, H, Nk, d).
    ``backend``: "math" (:func:`math_attention_jvp`), "triton" (the fused kernel's
    ``attention_with_jvp``) or None for the default; "sdpa" has no JVP and raises
    :class:`AttentionJVPError`.
    """
    backend = _backend_for(backend, q, k, v)
    if backend == "math":
        return math_attention_jvp(q, k, v, tq, tk, tv)
    if backend == "sdpa":
        raise AttentionJVPError(_JVP_MESSAGE)
    return _triton_attention("attention_with_jvp")(q, k, v, tq, tk, tv)


def math_attention_jvp(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor
                       ) -> tuple[Tensor, Tensor]:
    """(O, Ȯ) in plain PyTorch ops (docs/jvp_attention.md §1), per (batch, head):

        S = s Q Kᵀ,  P = softmax(S),  O = P V               (s = 1/sqrt(d))
        Ṡ = s (Q̇ Kᵀ + Q K̇ᵀ) = s [Q, Q̇] [K̇, K]ᵀ,  μ = rowsum(P ∘ Ṡ)
        Ȯ = Ṗ V + P V̇  with  Ṗ = P ∘ (Ṡ − μ);  P [V, V̇] gives O and P V̇ in one matmul

    Half-precision scores are soft-maxed in float32, as in :func:`math_attention`.
    """
    d = q.shape[-1]
    q_and_tq = torch.cat([q, tq], -1) * d ** -0.5  # (B, H, Nq, 2d): s [Q, Q̇]
    scores = q_and_tq[..., :d] @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    scores_dot = q_and_tq @ torch.cat([tk, k], -1).transpose(-2, -1)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores, scores_dot = scores.float(), scores_dot.float()
    p = torch.softmax(scores, dim=-1)
    mu = (p * scores_dot).sum(-1, keepdim=True)  # (B, H, Nq, 1): the tangent of the row LSE
    p_dot = (p * (scores_dot - mu)).to(v.dtype)
    o_and_p_tv = p.to(v.dtype) @ torch.cat([v, tv], -1)  # (B, H, Nq, 2d): [P V, P V̇]
    return o_and_p_tv[..., :d], p_dot @ v + o_and_p_tv[..., d:]


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """PyTorch's fused SDPA, refusing forward-mode AD with a message that says what to use."""
    # torch.func.jvp makes its inputs dual tensors at the current forward-AD level too, so this
    # one check covers it and torch.autograd.forward_ad (outside a dual level: no tangent).
    if any(forward_ad.unpack_dual(x).tangent is not None for x in (q, k, v)):
        raise AttentionJVPError(_JVP_MESSAGE)
    try:
        return F.scaled_dot_product_attention(q, k, v)
    except NotImplementedError as err:
        # Tangents hidden under another functorch level (e.g. torch.func.grad inside
        # torch.func.jvp) are invisible to the check above; the fused kernel then fails here.
        if "forward AD" in str(err):
            raise AttentionJVPError(_JVP_MESSAGE) from err
        raise


_JVP_MESSAGE = (
    "attention backend 'sdpa' (torch.nn.functional.scaled_dot_product_attention) has no "
    "forward-mode AD, but a JVP (torch.func.jvp / torch.autograd.forward_ad) was requested "
    "through it. Use backend 'math' (explicit softmax, any device) or 'triton' (fused JVP "
    "kernel, CUDA), e.g. net.attn_backend = 'math' or `with use_attention('math'):`."
)


def _triton_attention(name: str):
    """Import ``tvmlib.kernels.<name>`` on first use; say why if it cannot be imported."""
    try:
        kernels = importlib.import_module("tvmlib.kernels")
    except Exception as err:  # any import failure means "unavailable"; chained, never silent
        raise RuntimeError(
            f"attention backend 'triton' is unavailable: importing tvmlib.kernels.{name} "
            f"failed with {type(err).__name__}: {err}. It needs Triton and a CUDA GPU; use "
            "backend 'math' (supports JVP on any device) or 'sdpa' (no JVP) instead."
        ) from err
    return getattr(kernels, name)


def _backend_for(backend: str | None, q: Tensor, k: Tensor, v: Tensor) -> str:
    """The checked backend of a call (None: the default); checks q, k, v's shapes too."""
    backend = check_backend(_default_backend if backend is None else backend)
    if not (q.dim() == k.dim() == 4 and k.shape == v.shape and q.shape[:2] == k.shape[:2]
            and q.shape[-1] == k.shape[-1]):
        raise ValueError("attention needs q, k, v of shape (B, H, N, d) with equal B, H, d and "
                         f"k, v of one shape; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    return backend
