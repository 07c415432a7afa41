"""Autograd Functions around the Triton JVP attention kernels.

Two entry points:

* ``attention_with_jvp(q, k, v, tq, tk, tv) -> (O, Ȯ)``: explicit tangents, one fused forward
  (6 matmuls a tile) and one shared backward for both outputs (doc §4.1).
* ``attention(q, k, v)``: plain attention usable inside ``torch.func.jvp``. Its ``forward``
  runs the FlashAttention-2 kernel and saves LSE; its ``jvp`` runs the tangent-only kernel
  (P = exp(S − LSE) is exact, 5 matmuls a tile) through another Function, so the tangent Ȯ is
  differentiable by reverse mode (TVM backpropagates through the JVP, doc §1.4).

On a new shape both entry points first compile the call's kernels in parallel
(``tvmlib.kernels.ahead``). The Triton module is imported on first use, so importing
``tvmlib.kernels`` needs no GPU and the interpreter switch (``TRITON_INTERPRET=1``) may be set
any time before the first call.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tvmlib.kernels.ahead import compile_ahead


def _ops() -> ModuleType:
    """The Triton kernels module (imported lazily)."""
    return importlib.import_module("tvmlib.kernels.jvp_attention")


def _dual(*tensors: Tensor) -> bool:
    """Whether any tensor carries a tangent (a torch.func transform or forward-mode AD)."""
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t)
               or torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors)


_FUNCTORCH_MESSAGE = (
    "the Triton attention's backward ran under torch.func.vjp / torch.func.grad (its tensors "
    "are functorch wrappers, which Triton kernels cannot read). The kernels support "
    "torch.func.jvp and ordinary reverse mode: use loss.backward() or torch.autograd.grad for "
    "the vector-Jacobian product, or attention backend 'math' for functorch transforms.")


def _check_plain(*tensors: Tensor | None) -> None:
    """Raise a clear error if a tensor is a functorch wrapper (torch.func.vjp / grad)."""
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    if any(t is not None and wrapped(t) for t in tensors):
        raise RuntimeError(_FUNCTORCH_MESSAGE)


def _keep(ctx, saved: tuple, no_grad: tuple, causal, scale, config) -> None:
    """What every Function here keeps for its backward: ``saved`` tensors, no gradient for the
    ``no_grad`` outputs, None for gradients nobody asked for, and the kernel's settings."""
    ctx.save_for_backward(*saved)
    ctx.mark_non_differentiable(*no_grad)
    ctx.set_materialize_grads(False)
    ctx.causal, ctx.scale, ctx.config = causal, scale, config


def _zeros_if_none(t: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if t is None else t


class JVPAttentionFunction(torch.autograd.Function):
    """(q, k, v, tq, tk, tv) -> (O, Ȯ, lse2, μ); lse2 and μ are non-differentiable stats."""

    @staticmethod
    def forward(q, k, v, tq, tk, tv, causal, scale, config):
        return _ops().jvp_forward(q, k, v, tq, tk, tv, causal, scale, config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, tq, tk, tv, causal, scale, config = inputs
        o, to, lse2, mu = output
        _keep(ctx, (q, k, v, tq, tk, tv, o, to, lse2, mu), (lse2, mu), causal, scale, config)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_o, g_t, _g_lse2, _g_mu):
        q, k, v, tq, tk, tv, o, to, lse2, mu = ctx.saved_tensors
        _check_plain(q, g_o, g_t)
        grads = _ops().attention_backward(q, k, v, tq, tk, tv, o, to, lse2, mu, g_o, g_t,
                                          ctx.causal, ctx.scale, ctx.config)
        return (*grads, None, None, None)


class AttentionTangentFunction(torch.autograd.Function):
    """(q, k, v, tq, tk, tv, O, lse2) -> (Ȯ, μ), with O and lse2 from the primal forward.

    O and lse2 are functions of (q, k, v) and get no gradient here: the backward returns the
    total derivative of <G, Ȯ> w.r.t. q, k, v, tq, tk, tv (doc §1.3 with Ō = 0).
    """

    @staticmethod
    def forward(q, k, v, tq, tk, tv, o, lse2, causal, scale, config):
        return _ops().tangent_forward(q, k, v, tq, tk, tv, o, lse2, causal, scale, config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, tq, tk, tv, o, lse2, causal, scale, config = inputs
        to, mu = output
        _keep(ctx, (q, k, v, tq, tk, tv, o, to, lse2, mu), (mu,), causal, scale, config)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_t, _g_mu):
        q, k, v, tq, tk, tv, o, to, lse2, mu = ctx.saved_tensors
        _check_plain(q, g_t)
        grads = _ops().attention_backward(q, k, v, tq, tk, tv, o, to, lse2, mu, None, g_t,
                                          ctx.causal, ctx.scale, ctx.config)
        return (*grads, None, None, None, None, None)


class AttentionFunction(torch.autograd.Function):
    """(q, k, v) -> (O, lse2) with a FlashAttention-2 backward and a ``jvp`` rule."""

    @staticmethod
    def forward(q, k, v, causal, scale, config):
        return _ops().attention_forward(q, k, v, causal, scale, config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, causal, scale, config = inputs
        o, lse2 = output
        _keep(ctx, (q, k, v, o, lse2), (lse2,), causal, scale, config)
        ctx.save_for_forward(q, k, v, o, lse2)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_o, _g_lse2):
        q, k, v, o, lse2 = ctx.saved_tensors
        _check_plain(q, g_o)
        dq, dk, dv, *_ = _ops().attention_backward(q, k, v, None, None, None, o, None, lse2,
                                                   None, g_o, None, ctx.causal, ctx.scale,
                                                   ctx.config)
        return dq, dk, dv, None, None, None

    @staticmethod
    def jvp(ctx, tq, tk, tv, _t_causal, _t_scale, _t_config):
        q, k, v, o, lse2 = ctx.saved_tensors
        tq, tk, tv = _zeros_if_none(tq, q), _zeros_if_none(tk, k), _zeros_if_none(tv, v)
        to, mu = AttentionTangentFunction.apply(q, k, v, tq, tk, tv, o, lse2, ctx.causal,
                                                ctx.scale, ctx.config)
        return to, None


def attention_with_jvp(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                       causal: bool = False, scale: float | None = None, config=None
                       ) -> tuple[Tensor, Tensor]:
    """O = softmax(s Q K^T) V and its tangent Ȯ along (tq, tk, tv), both differentiable.

    q, tq: (B, H, Nq, d); k, v, tk, tv: (B, H, Nk, d); fp16/bf16/fp32 (fp64 too, slow path).
    ``causal`` masks key j > query i (top-left, as SDPA's is_causal); ``scale`` defaults to
    1/sqrt(d). The backward handles a gradient for O only, for Ȯ only, or both (doc §1.3).
    """
    compile_ahead("jvp", q, k, v, causal, scale, config)
    o, to, _, _ = JVPAttentionFunction.apply(q, k, v, tq, tk, tv, causal, scale, config)
    return o, to


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
              scale: float | None = None, config=None) -> Tensor:
    """softmax(s Q K^T) V with Triton kernels; works under ``torch.func.jvp`` (then the tangent
    is itself differentiable). q: (B, H, Nq, d), k, v: (B, H, Nk, d) -> (B, H, Nq, d).
    """
    compile_ahead("func" if _dual(q, k, v) else "plain", q, k, v, causal, scale, config)
    o, _ = AttentionFunction.apply(q, k, v, causal, scale, config)
    return o
