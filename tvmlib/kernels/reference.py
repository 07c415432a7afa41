"""Plain-PyTorch references for attention, its JVP and the backward through the JVP.

Notation (docs/jvp_attention.md §1), per (batch, head):

    S = s Q K^T,  P = softmax_row(S),  O = P V                      (s = 1/sqrt(d) by default)
    Ṡ = s (Q̇ K^T + Q K̇^T),  μ = rowsum(P ∘ Ṡ)  (the tangent of LSE)
    Ȯ = (P ∘ Ṡ) V + P V̇ − μ ∘ O

``attention_ref`` is the math definition, ``jvp_ref`` differentiates it with ``torch.func.jvp``
(run it in float64 for a reference), and ``blockwise_jvp_attention`` is the readable online
(flash) version of the JVP that the Triton kernel implements tile by tile.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def default_scale(d: int, scale: float | None) -> float:
    """The softmax scale s: 1/sqrt(d) unless given."""
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


def causal_keep(n_q: int, n_k: int, device: torch.device | str | None = None) -> Tensor:
    """(Nq, Nk) bool: query i sees key j iff j <= i (top-left aligned, as PyTorch's SDPA)."""
    i = torch.arange(n_q, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    return j <= i


def attention_ref(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                  scale: float | None = None) -> Tensor:
    """softmax(s Q K^T [+ causal mask]) V.   q: (B, H, Nq, d), k, v: (B, H, Nk, d)."""
    s = default_scale(q.shape[-1], scale)
    scores = s * q @ k.transpose(-1, -2)  # (B, H, Nq, Nk)
    if causal:
        keep = causal_keep(q.shape[-2], k.shape[-2], q.device)
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, H, Nq, d)


def lse_ref(q: Tensor, k: Tensor, causal: bool = False, scale: float | None = None) -> Tensor:
    """Row log-sum-exp of the scores, (B, H, Nq)."""
    s = default_scale(q.shape[-1], scale)
    scores = s * q @ k.transpose(-1, -2)
    if causal:
        keep = causal_keep(q.shape[-2], k.shape[-2], q.device)
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.logsumexp(scores, dim=-1)


def jvp_ref(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
            causal: bool = False, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """(O, Ȯ) by ``torch.func.jvp`` of ``attention_ref``; differentiable by reverse mode."""
    fn = lambda q_, k_, v_: attention_ref(q_, k_, v_, causal, scale)  # noqa: E731
    return torch.func.jvp(fn, (q, k, v), (tq, tk, tv))


def lse_mu_ref(q: Tensor, k: Tensor, tq: Tensor, tk: Tensor, causal: bool = False,
               scale: float | None = None) -> tuple[Tensor, Tensor]:
    """(LSE, μ): the row log-sum-exp and its tangent μ = rowsum(P ∘ Ṡ), each (B, H, Nq)."""
    fn = lambda q_, k_: lse_ref(q_, k_, causal, scale)  # noqa: E731
    return torch.func.jvp(fn, (q, k), (tq, tk))


def jvp_grads_ref(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                  g_o: Tensor | None, g_t: Tensor | None, causal: bool = False,
                  scale: float | None = None) -> tuple[Tensor, Tensor, tuple[Tensor | None, ...]]:
    """O, Ȯ and the gradients of <g_o, O> + <g_t, Ȯ> w.r.t. (q, k, v, tq, tk, tv) (doc §5.1).

    Inputs are detached and copied, so any dtype works (pass float64 for a reference).
    A gradient that does not depend on the inputs is returned as zeros.
    """
    ins = [x.detach().clone().requires_grad_(True) for x in (q, k, v, tq, tk, tv)]
    o, to = jvp_ref(*ins, causal=causal, scale=scale)
    loss = o.new_zeros(())
    if g_o is not None:
        loss = loss + (o * g_o.to(o.dtype)).sum()
    if g_t is not None:
        loss = loss + (to * g_t.to(to.dtype)).sum()
    grads = torch.autograd.grad(loss, ins, allow_unused=True)
    grads = tuple(torch.zeros_like(x) if g is None else g for x, g in zip(ins, grads))
    return o.detach(), to.detach(), grads


def blockwise_jvp_attention(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                            block: int = 16, causal: bool = False, scale: float | None = None,
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The online-softmax (FlashAttention-2 style) JVP of attention, in plain PyTorch.

    Loops over key blocks of size ``block`` keeping, per query row, the running max m, the
    running sum ℓ, the tangent sum r and three (Nq, d) accumulators (doc §1.1):

        m' = max(m, rowmax S_j),  α = exp(m − m'),  P̃ = exp(S_j − m')
        ℓ = α ℓ + Σ P̃,   r = α r + Σ P̃ ∘ Ṡ_j
        A = α A + P̃ V_j,  B = α B + (P̃ ∘ Ṡ_j) V_j,  C = α C + P̃ V̇_j
        end: O = A / ℓ,  μ = r / ℓ,  Ȯ = (B + C) / ℓ − μ ∘ O,  LSE = m + log ℓ

    Returns (O, Ȯ, LSE, μ); shapes (B, H, Nq, d) x 2 and (B, H, Nq) x 2.
    """
    s = default_scale(q.shape[-1], scale)
    n_q, n_k = q.shape[-2], k.shape[-2]
    rows = torch.arange(n_q, device=q.device)[:, None]  # (Nq, 1)
    m = q.new_full(q.shape[:-1], float("-inf"))  # (B, H, Nq)
    ell = q.new_zeros(q.shape[:-1])
    r = q.new_zeros(q.shape[:-1])
    acc_a, acc_b, acc_c = (torch.zeros_like(q) for _ in range(3))  # (B, H, Nq, d)
    for j0 in range(0, n_k, block):
        kj, vj = k[..., j0:j0 + block, :], v[..., j0:j0 + block, :]  # (B, H, bn, d)
        tkj, tvj = tk[..., j0:j0 + block, :], tv[..., j0:j0 + block, :]
        s_j = s * q @ kj.transpose(-1, -2)  # (B, H, Nq, bn)
        sdot_j = s * (tq @ kj.transpose(-1, -2) + q @ tkj.transpose(-1, -2))
        if causal:
            keep = torch.arange(j0, j0 + kj.shape[-2], device=q.device)[None, :] <= rows
            s_j = s_j.masked_fill(~keep, float("-inf"))
            sdot_j = sdot_j.masked_fill(~keep, 0.0)
        m_new = torch.maximum(m, s_j.amax(-1))
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # masked rows
        alpha = torch.exp(m - m_safe)  # (B, H, Nq)
        p = torch.exp(s_j - m_safe[..., None])  # P̃, (B, H, Nq, bn)
        ell = alpha * ell + p.sum(-1)
        r = alpha * r + (p * sdot_j).sum(-1)
        acc_a = alpha[..., None] * acc_a + p @ vj
        acc_b = alpha[..., None] * acc_b + (p * sdot_j) @ vj
        acc_c = alpha[..., None] * acc_c + p @ tvj
        m = m_new
    ell_safe = torch.where(ell > 0, ell, torch.ones_like(ell))  # fully masked rows give 0
    o = acc_a / ell_safe[..., None]
    mu = r / ell_safe
    to = (acc_b + acc_c) / ell_safe[..., None] - mu[..., None] * o
    lse = m + torch.log(ell)
    return o, to, lse, mu
