"""F and dF/ds of the DiT from one forward pass that carries the tangent (issue #17).

TVM's terminal-velocity term needs d/ds F_theta(x, t, s, y, w) ([P] Eq. 17). ``torch.func.jvp``
gets it by running every operator on dual tensors; here each layer's JVP is written out from its
equation, as plain autograd ops. The only tangent is ds = 1 (dx = dt = 0): it enters through the
gap embedding e_gap(t - s) (the gap's tangent is -1), flows through the conditioning c into every
adaLN modulation, and from the first block's modulation on through all activations.

Notation: a dot is a tangent (``tx`` in code is ẋ); every function returns (primal, tangent), a
``Pair``, and a tangent ``None`` is zero (the token stream before the first modulation). Shapes:
B batch, N tokens, D hidden size, H heads, d head dim.

Where it saves work over ``torch.func.jvp``:

- Linear: y = x Wᵀ + b and ẏ = ẋ Wᵀ come from one matmul on the primal and tangent rows stacked
  along the batch (the weight is read once), the bias added to the primal rows only.
- Norms, modulation, gated residuals, SiLU, GELU: the closed-form tangent, a few ops each,
  instead of the tangent of every op in the forward.
- Attention: :func:`tvmlib.nn.attention.attention_jvp`, the Triton kernel's fused (O, Ȯ) or the
  explicit softmax JVP with four matmuls.

With ``compiled=True`` (``net.jvp = "compiled"``) each block's work before and after its
attention goes through ``torch.compile``, which fuses these elementwise ops into few kernels;
the attention kernel stays outside the compiled graphs.

Reverse mode runs through both outputs (TVM backpropagates through dF/ds), and gradient
accumulation and CUDA-graph capture work as for the plain forward. Forward hooks on the DiT's
submodules do not fire here: the layers' weights are used directly.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvmlib.nn.attention import attention_jvp
from tvmlib.nn.embedding import per_sample, sinusoidal_embedding_jvp

Pair = tuple[Tensor, Tensor | None]  # (primal, tangent); tangent None = 0
JVP_MODES = ("fused", "compiled", "func")  # how flowmap.displacement_and_dfds gets dF/ds


def check_jvp_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`JVP_MODES` (see ``DiT``'s ``jvp``), else raise."""
    if mode not in JVP_MODES:
        raise ValueError(f"unknown jvp mode {mode!r}; valid: {', '.join(JVP_MODES)}")
    return mode


# ------------------------------------------------------------------------- one layer each
def linear_jvp(layer: nn.Linear, x: Tensor, tx: Tensor | None) -> Pair:
    """y = x Wᵀ + b, ẏ = ẋ Wᵀ.   x, ẋ: (B, ..., in) -> (B, ..., out).

    One matmul on the 2B rows [x; ẋ]; the bias goes to the primal rows only.
    """
    if tx is None:
        return layer(x), None
    y, ty = F.linear(torch.cat([x, tx]), layer.weight).chunk(2)  # (2B, ..., out) -> 2 x B
    return (y if layer.bias is None else y + layer.bias.to(y.dtype)), ty


def silu_jvp(x: Tensor, tx: Tensor) -> Pair:
    """y = x σ(x), ẏ = σ(x) (1 + x (1 - σ(x))) ẋ.   x, ẋ: (B, D) (the conditioning)."""
    sig = torch.sigmoid(x)
    return x * sig, tx * sig * (1 + x * (1 - sig))


def gelu_jvp(x: Tensor, tx: Tensor, approximate: str = "tanh") -> Pair:
    """y = GELU(x), ẏ = GELU'(x) ẋ.   For the DiT's tanh form, with u = sqrt(2/pi)(x + c x³),
    c = 0.044715:  GELU(x) = x (1 + tanh u) / 2,

        GELU'(x) = (1 + tanh u) / 2 + x (1 - tanh² u) sqrt(2/pi) (1 + 3 c x²) / 2,

    evaluated times ẋ by PyTorch's GELU derivative kernel (one op; tested against this formula).
    """
    return F.gelu(x, approximate=approximate), \
        torch.ops.aten.gelu_backward(tx, x, approximate=approximate)


def norm_jvp(x: Tensor, tx: Tensor | None, eps: float, center: bool = False,
             weight: Tensor | None = None) -> Pair:
    """RMSNorm (``center`` False) or LayerNorm without affine (True) over the last dim, times the
    scale γ if ``weight`` is given:

        x_c = x [- mean x],   r = sqrt(mean(x_c²) + eps),   n = x_c / r
        ṅ = (ẋ_c - n mean(n ẋ_c)) / r,   ẋ_c = ẋ [- mean ẋ]

    Computed in at least float32 (as PyTorch's norms do), returned in x's dtype.
    """
    dtype = x.dtype
    x = x.to(torch.promote_types(dtype, torch.float32))
    if center:
        x = x - x.mean(-1, keepdim=True)
    inv_r = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)  # (..., 1)
    n = x * inv_r
    tn = None
    if tx is not None:
        tx = tx.to(x.dtype)
        if center:
            tx = tx - tx.mean(-1, keepdim=True)
        tn = (tx - n * (n * tx).mean(-1, keepdim=True)) * inv_r
    if weight is not None:
        n, tn = n * weight, (None if tn is None else tn * weight)
    return n.to(dtype), (None if tn is None else tn.to(dtype))


def norm_module_jvp(norm: nn.Module, x: Tensor, tx: Tensor | None) -> Pair:
    """The DiT's token norms: nn.RMSNorm (TVM) or nn.LayerNorm (DiT), no bias."""
    if not isinstance(norm, (nn.RMSNorm, nn.LayerNorm)) or getattr(norm, "bias", None) is not None \
            or norm.eps is None:
        raise TypeError(f"no JVP for the norm {norm!r}: expected nn.RMSNorm or nn.LayerNorm with "
                        "an explicit eps and no bias")
    return norm_jvp(x, tx, norm.eps, isinstance(norm, nn.LayerNorm), norm.weight)


def modulate_jvp(x: Tensor, tx: Tensor | None, shift: Pair, scale: Pair) -> Pair:
    """adaLN: y = x (1 + scale) + shift,  ẏ = ẋ (1 + scale) + x ṡcale + ṡhift.
    x, ẋ: (B, N, D); shift, scale and their tangents: (B, D)."""
    (shift, tshift), (scale, tscale) = shift, scale
    gain = 1 + scale[:, None]  # (B, 1, D)
    ty = x * tscale[:, None] + tshift[:, None]
    return x * gain + shift[:, None], (ty if tx is None else ty + tx * gain)


def gated_residual_jvp(x: Tensor, tx: Tensor | None, gate: Pair, h: Tensor, th: Tensor) -> Pair:
    """y = x + g h,  ẏ = ẋ + ġ h + g ḣ.   x, h and tangents: (B, N, D); g, ġ: (B, D)."""
    g, tg = gate[0][:, None], gate[1][:, None]  # (B, 1, D)
    ty = g * th + tg * h
    return x + g * h, (ty if tx is None else tx + ty)


# --------------------------------------------------------------------- the DiT's modules
def timestep_embedder_jvp(emb: nn.Module, v: Tensor, dv: Tensor) -> Pair:
    """A ``TimestepEmbedder``: sinusoidal features -> Linear -> SiLU -> Linear.  v, v̇: (B,)."""
    feats, tfeats = sinusoidal_embedding_jvp(v, dv, emb.freq_dim, emb.time_scale)  # (B, freq)
    dtype = emb.mlp[0].weight.dtype
    h, th = linear_jvp(emb.mlp[0], feats.to(dtype), tfeats.to(dtype))
    return linear_jvp(emb.mlp[2], *silu_jvp(h, th))  # (B, D)


def conditioning_jvp(net: nn.Module, x: Tensor, t: Tensor | float, s: Tensor | float,
                     y: Tensor | None, w: Tensor | float | None) -> Pair:
    """c (B, D) of ``net.conditioning`` and ċ = d/ds c = -e_gap'(t - s): only the gap embedding
    depends on s."""
    B = x.shape[0]
    time_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    t, s = (per_sample(v, B, x, name).to(time_dtype) for v, name in ((t, "t"), (s, "s")))
    gap = t - s  # (B,), as net.conditioning computes it
    _, tc = timestep_embedder_jvp(net.gap_embedder, gap, -torch.ones_like(gap))
    return net.conditioning(x, t, s, y, w), tc


def modulation_jvp(adaln: nn.Sequential, silu_c: Pair, chunks: int, normalize: bool,
                   eps: float) -> list[Pair]:
    """adaLN: SiLU -> Linear (B, chunks D) -> ``chunks`` pairs (B, D), RMS-normalized over D if
    ``normalize`` (``mod_norm``, [P] Eq. 16). ``silu_c`` is SiLU(c) with its tangent, the same
    for every layer, so computed once."""
    if not isinstance(adaln[0], nn.SiLU):
        raise TypeError(f"adaLN must start with nn.SiLU, got {adaln[0]!r}")
    m, tm = linear_jvp(adaln[1], *silu_c)
    m, tm = m.unflatten(-1, (chunks, -1)), tm.unflatten(-1, (chunks, -1))  # (B, chunks, D)
    if normalize:
        m, tm = norm_jvp(m, tm, eps)
    return list(zip(m.unbind(-2), tm.unbind(-2)))


def qk_norm_jvp(attn: nn.Module, qk: Tensor, tqk: Tensor) -> Pair:
    """QK-norm of q and k in one call: qk (B, N, 2, H, d) with the learnable scales of q and k
    stacked to (2, 1, d); as is if QK-norm is off (nn.Identity)."""
    q_norm, k_norm = attn.q_norm, attn.k_norm
    if isinstance(q_norm, nn.Identity) and isinstance(k_norm, nn.Identity):
        return qk, tqk
    if not (isinstance(q_norm, nn.RMSNorm) and isinstance(k_norm, nn.RMSNorm)
            and q_norm.eps == k_norm.eps and q_norm.weight is not None):
        raise TypeError(f"no JVP for the QK-norms {q_norm!r}, {k_norm!r}: expected two "
                        "nn.RMSNorm with scales and one eps, or two nn.Identity")
    weight = torch.stack([q_norm.weight, k_norm.weight])[:, None]  # (2, 1, d)
    return norm_jvp(qk, tqk, q_norm.eps, weight=weight)


def qkv_jvp(attn: nn.Module, x: Tensor, tx: Tensor) -> tuple[Tensor, ...]:
    """``SelfAttention`` up to the attention: qkv Linear -> heads -> QK-norm.
    x, ẋ: (B, N, D) -> q, k, v, q̇, k̇, v̇, each (B, H, N, d)."""
    qkv, tqkv = (z.unflatten(-1, (3, attn.num_heads, attn.head_dim))  # (B, N, 3, H, d)
                 for z in linear_jvp(attn.qkv, x, tx))
    qk, tqk = qk_norm_jvp(attn, qkv[:, :, :2], tqkv[:, :, :2])  # (B, N, 2, H, d)
    (q, k), (tq, tk) = qk.permute(2, 0, 3, 1, 4), tqk.permute(2, 0, 3, 1, 4)  # (B, H, N, d)
    return q, k, qkv[:, :, 2].transpose(1, 2), tq, tk, tqkv[:, :, 2].transpose(1, 2)


def block_before_attention(block: nn.Module, x: Tensor, tx: Tensor | None, silu_c: Pair,
                           eps: float) -> tuple[list[Pair], tuple[Tensor, ...]]:
    """``DiTBlock`` up to its attention: the six adaLN pairs and (q, k, v, q̇, k̇, v̇)."""
    mods = modulation_jvp(block.adaln, silu_c, 6, block.mod_norm, eps)
    shift_msa, scale_msa = mods[:2]
    h, th = modulate_jvp(*norm_module_jvp(block.norm1, x, tx), shift_msa, scale_msa)
    return mods, qkv_jvp(block.attn, h, th)


def block_after_attention(block: nn.Module, x: Tensor, tx: Tensor | None, mods: list[Pair],
                          o: Tensor, to: Tensor) -> Pair:
    """``DiTBlock`` from its attention output o, ȯ (B, H, N, d): proj, the gated residual, then
    x + g_mlp mlp(mod(norm2 x)).  x, ẋ: (B, N, D)."""
    B, N, D = x.shape
    gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[2:]
    h, th = linear_jvp(block.attn.proj, o.transpose(1, 2).reshape(B, N, D),
                       to.transpose(1, 2).reshape(B, N, D))
    x, tx = gated_residual_jvp(x, tx, gate_msa, h, th)
    h, th = modulate_jvp(*norm_module_jvp(block.norm2, x, tx), shift_mlp, scale_mlp)
    h, th = linear_jvp(block.mlp[0], h, th)  # (B, N, mlp_hidden)
    h, th = gelu_jvp(h, th, block.mlp[1].approximate)
    return gated_residual_jvp(x, tx, gate_mlp, *linear_jvp(block.mlp[2], h, th))


# Before torch 2.14, inductor's C++ (CPU) kernels can be silently wrong where a vectorized outer
# loop is fused around a local buffer (pytorch/pytorch#185702, fixed in 2.14 by #185855): here the
# gradients of a block whose input tokens are stored transposed, as the patch embedding leaves
# them. Scalar C++ kernels never take that path; GPU kernels (Triton) are not affected.
_INDUCTOR_OPTIONS = {"cpp.simdlen": 0} if torch.__version__ < "2.14" else None


@functools.cache
def _compiled(fn):
    """``fn`` compiled by torch.compile (inductor), made once per process. The blocks of a DiT
    share each graph: their weights are graph inputs, not constants (PyTorch inlines built-in
    modules by default), so the depth does not multiply compilations."""
    return torch.compile(fn, dynamic=False, options=_INDUCTOR_OPTIONS)


def block_jvp(block: nn.Module, x: Tensor, tx: Tensor | None, silu_c: Pair,
              backend: str | None, eps: float, compiled: bool = False) -> Pair:
    """``DiTBlock``: x + g_msa attn(mod(norm1 x)), then + g_mlp mlp(mod(norm2 x)).  (B, N, D).

    ``compiled``: the work before and after the attention through torch.compile, which also
    chooses what to recompute in the backward; the attention stays outside (module docstring).
    """
    before, after = ((_compiled(block_before_attention), _compiled(block_after_attention))
                     if compiled else (block_before_attention, block_after_attention))
    mods, (q, k, v, tq, tk, tv) = before(block, x, tx, silu_c, eps)
    o, to = attention_jvp(q, k, v, tq, tk, tv, backend)  # (B, H, N, d)
    return after(block, x, tx, mods, o, to)


def final_layer_jvp(final: nn.Module, x: Tensor, tx: Tensor, silu_c: Pair, eps: float) -> Pair:
    """``FinalLayer``: linear(mod(norm x)).  (B, N, D) -> (B, N, p p C)."""
    shift, scale = modulation_jvp(final.adaln, silu_c, 2, final.mod_norm, eps)
    return linear_jvp(final.linear, *modulate_jvp(*norm_module_jvp(final.norm, x, tx),
                                                  shift, scale))


def forward_and_dfds(net: nn.Module, x: Tensor, t: Tensor | float, s: Tensor | float,
                     y: Tensor | None = None, w: Tensor | float | None = None,
                     eps: float = 1e-6, compiled: bool = False) -> tuple[Tensor, Tensor]:
    """(F, dF/ds) of a :class:`tvmlib.nn.dit.DiT` at (x, t, s, y, w), each (B, C, H, W) in x's
    dtype; ``eps`` is the modulation norm's (``tvmlib.nn.dit.EPS``). The same numbers as
    ``torch.func.jvp(lambda s_: net(x, t, s_, y, w), (s,), (ones,))`` up to rounding.
    ``compiled``: each block's work around its attention through torch.compile (``block_jvp``)."""
    net._check_x(x)
    silu_c = silu_jvp(*conditioning_jvp(net, x, t, s, y, w))  # (B, D) pair, every adaLN's input
    h = net.x_embedder(x).flatten(2).transpose(1, 2) + net.pos_embed  # (B, N, D); ḣ = 0
    th = None
    for block in net.blocks:
        h, th = block_jvp(block, h, th, silu_c, net.attn_backend, eps, compiled)
    out, tout = final_layer_jvp(net.final_layer, h, th, silu_c, eps)  # (B, N, p p C)
    return net.unpatchify(out).to(x.dtype), net.unpatchify(tout).to(x.dtype)
