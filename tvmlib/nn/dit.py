"""Class-conditional DiT (Peebles & Xie, arXiv 2212.09748) with TVM's Lipschitz changes.

One signature for every method: ``F = net(x, t, s=None, y=None, w=None)``, x (B, C, H, W) images or
latents, F of x's shape and dtype. The conditioning vector is TVM's ([P] section 7.1, App. F.1)

    c = e_t(t) + e_gap(t - s) + e_beta(1 / w) + e_y(y)

(e_beta only for a guidance-conditioned net; e_y only with classes, null class = num_classes). Each
time embedder is sinusoidal features -> Linear -> SiLU -> Linear. c drives adaLN-zero blocks: every
block regresses shift, scale and gate for its attention and its MLP, applied as
x * (1 + scale) + shift and x + gate * branch.

:class:`LipschitzConfig` switches each of TVM's changes ([P] section 4, App. B) on or off
independently; all off is the standard DiT:

- ``rmsnorm``: parameter-free RMSNorm instead of LayerNorm for norm1, norm2 and the final norm
  ([P] App. B.1 bounds its Lipschitz constant).
- ``qk_norm``: RMSNorm with a learnable scale on q and on k, per head.
- ``mod_norm``: parameter-free RMSNorm over the hidden dim on each adaLN modulation chunk (6 per
  block, 2 in the final layer; [P] Eq. 16, keeping DiT's ``1 + scale``).
- ``spectral_init``: every Linear and the patch embedding start as xavier_normal divided by their
  largest singular value (spectral norm 1). Exceptions: the time-embedding MLPs stay N(0, 0.02)
  unless ``time_spectral_init``; adaLN output layers and the final linear stay zero.

Activations for Lipschitz studies ([P] Fig. 4): :meth:`DiT.conditioning` returns c and
:meth:`DiT.modulations` every block's modulation chunks, before or after ``mod_norm``; both depend
on (t, s, y, w) only. Anything else (e.g. block outputs) is one forward hook away:
``net.blocks[i].register_forward_hook(lambda m, args, out: store.append(out))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvmlib.nn.attention import attention, check_backend
from tvmlib.nn.dit_jvp import check_jvp_mode, forward_and_dfds
from tvmlib.nn.embedding import check_labels, per_sample, sincos_pos_embed_2d, sinusoidal_embedding

EPS = 1e-6  # DiT's LayerNorm eps, also used by every RMSNorm here (as in TVM)
MOD_NAMES = ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp")
FINAL_MOD_NAMES = ("shift", "scale")


@dataclass(frozen=True)
class LipschitzConfig:
    """TVM's Lipschitz-oriented DiT changes ([P] section 4), each switchable; defaults = TVM.

    ``time_spectral_init`` (default False, i.e. N(0, 0.02) time MLPs) is a sub-option of
    ``spectral_init``: TVM's 256 px w=2 and 512 px w=2.25 runs set it, the other two do not.
    """

    rmsnorm: bool = True
    qk_norm: bool = True
    mod_norm: bool = True
    spectral_init: bool = True
    time_spectral_init: bool = False

    def __post_init__(self) -> None:
        if self.time_spectral_init and not self.spectral_init:
            raise ValueError("time_spectral_init=True needs spectral_init=True")

    @classmethod
    def off(cls) -> LipschitzConfig:
        """All changes off: the standard DiT (LayerNorm, DiT's init)."""
        return cls(rmsnorm=False, qk_norm=False, mod_norm=False, spectral_init=False)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (B, N, D) * (1 + scale) + shift, with shift and scale (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _token_norm(dim: int, rms: bool) -> nn.Module:
    """Parameter-free RMSNorm (TVM) or LayerNorm without affine (DiT), both with eps 1e-6."""
    if rms:
        return nn.RMSNorm(dim, eps=EPS, elementwise_affine=False)
    return nn.LayerNorm(dim, eps=EPS, elementwise_affine=False)


class TimestepEmbedder(nn.Module):
    """Scalar (t, gap or beta) -> sinusoidal features (freq_dim) -> Linear-SiLU-Linear -> (B, D)."""

    def __init__(self, hidden_size: int, freq_dim: int = 256, time_scale: float = 1.0):
        super().__init__()
        self.freq_dim, self.time_scale = freq_dim, time_scale
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: Tensor) -> Tensor:
        feats = sinusoidal_embedding(t, self.freq_dim, scale=self.time_scale)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class QKNorm(nn.RMSNorm):
    """RMSNorm over the head dim with a learnable scale (TVM's QK-norm, [P] section 4).

    Casts its fp32 scale to the input's dtype, so under bf16 autocast it keeps the fused kernel.
    """

    def __init__(self, head_dim: int):
        super().__init__(head_dim, eps=EPS)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, N, d)
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv Linear and optional QK-RMSNorm per head."""

    def __init__(self, hidden_size: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.q_norm = QKNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = QKNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, backend: str | None) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
        o = attention(self.q_norm(q), self.k_norm(k), v, backend)  # (B, H, N, d)
        return self.proj(o.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """adaLN-zero transformer block: attention and MLP branches, each shifted, scaled and gated."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, lip: LipschitzConfig):
        super().__init__()
        self.mod_norm = lip.mod_norm
        self.norm1 = _token_norm(hidden_size, lip.rmsnorm)
        self.attn = SelfAttention(hidden_size, num_heads, lip.qk_norm)
        self.norm2 = _token_norm(hidden_size, lip.rmsnorm)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_hidden, hidden_size),
        )
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def modulation(self, c: Tensor, normalized: bool = True) -> tuple[Tensor, ...]:
        """The 6 chunks (B, D) in :data:`MOD_NAMES` order, RMS-normalized if ``mod_norm``."""
        return _chunks(self.adaln(c), 6, self.mod_norm and normalized)

    def forward(self, x: Tensor, c: Tensor, backend: str | None = None) -> Tensor:
        """x (B, N, D), c (B, D) -> (B, N, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        h = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), backend)
        x = x + gate_msa[:, None] * h
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + gate_mlp[:, None] * h


class FinalLayer(nn.Module):
    """Final adaLN (shift, scale) and a linear map from tokens to patches (B, N, p*p*C)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, lip: LipschitzConfig):
        super().__init__()
        self.mod_norm = lip.mod_norm
        self.norm = _token_norm(hidden_size, lip.rmsnorm)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def modulation(self, c: Tensor, normalized: bool = True) -> tuple[Tensor, ...]:
        """(shift, scale), each (B, D), RMS-normalized if ``mod_norm``."""
        return _chunks(self.adaln(c), 2, self.mod_norm and normalized)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c)
        return self.linear(modulate(self.norm(x), shift, scale))


def _chunks(mod: Tensor, n: int, normalize: bool) -> tuple[Tensor, ...]:
    """(B, n*D) adaLN output -> n chunks (B, D); with ``normalize``, each chunk gets a
    parameter-free RMSNorm over the hidden dim ([P] Eq. 16). All n chunks are normalized in one
    call on a (B, n, D) view: the same numbers as n separate calls, with a sixth of the ops (which
    matters under a JVP and its backward, where every call expands into many small kernels)."""
    chunks = mod.unflatten(-1, (n, -1))  # (B, n, D)
    if normalize:
        chunks = F.rms_norm(chunks, (chunks.shape[-1],), eps=EPS)
    return chunks.unbind(-2)


class DiT(nn.Module):
    """F_theta(x, t, s, y, w) for x (B, C, H, W): a DiT with TVM's conditioning and changes.

    Args:
        input_size: H = W, or (H, W), of x; must be divisible by ``patch_size``.
        patch_size: side p of the square patches (tokens = H W / p^2).
        in_channels: C of x; the output has the same channels.
        hidden_size, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP factor.
        num_classes: K classes for conditioning (0: unconditional). Label K is the null class.
        guidance: if True the net is conditioned on beta = 1/w (TVM's folded CFG).
        lipschitz: which of TVM's changes to use (default: all, as in TVM);
            ``LipschitzConfig.off()`` is the standard DiT.
        attn_backend: "math", "sdpa", "triton", or None for the default of
            :mod:`tvmlib.nn.attention` ("math" unless changed). Settable later:
            ``net.attn_backend = "sdpa"``.
        jvp: how :func:`tvmlib.core.flowmap.displacement_and_dfds` gets dF/ds: "fused" (this
            net's :meth:`forward_and_dfds`, the default), "compiled" (the same with each
            block's work around its attention through ``torch.compile``) or "func"
            (``torch.func.jvp``).
            Settable later: ``net.jvp = "func"``.
        freq_dim: number of sinusoidal features per time embedder.
        time_scale: t, t - s and 1/w are multiplied by this before the sinusoidal features.
            TVM embeds the raw t in [0, 1] (1.0, the default); DiT's diffusion code used
            t in [0, 1000]. A large scale makes d/ds of the features, and so the JVP, large.
    """

    def __init__(self, input_size: int | tuple[int, int] = 32, patch_size: int = 2,
                 in_channels: int = 4, hidden_size: int = 1152, depth: int = 28,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_classes: int = 1000,
                 guidance: bool = False, lipschitz: LipschitzConfig | None = None,
                 attn_backend: str | None = None, freq_dim: int = 256, time_scale: float = 1.0,
                 jvp: str = "fused"):
        super().__init__()
        H, W = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if H % patch_size or W % patch_size:
            raise ValueError(f"input size {(H, W)} is not divisible by patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.input_size, self.patch_size, self.in_channels = (H, W), patch_size, in_channels
        self.grid = (H // patch_size, W // patch_size)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.num_classes, self.guidance = num_classes, guidance
        self.lipschitz = LipschitzConfig() if lipschitz is None else lipschitz
        self.attn_backend, self.jvp = attn_backend, check_jvp_mode(jvp)

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        pos = sincos_pos_embed_2d(hidden_size, *self.grid)[None]  # (1, N, D)
        self.register_buffer("pos_embed", pos, persistent=False)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_dim, time_scale)
        self.gap_embedder = TimestepEmbedder(hidden_size, freq_dim, time_scale)
        self.beta_embedder = TimestepEmbedder(hidden_size, freq_dim, time_scale) if guidance \
            else None
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size) if num_classes else None
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, self.lipschitz) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels, self.lipschitz)
        self.initialize_weights()

    @property
    def attn_backend(self) -> str | None:
        """Attention backend of this model; None defers to :mod:`tvmlib.nn.attention`'s default."""
        return self._attn_backend

    @attn_backend.setter
    def attn_backend(self, name: str | None) -> None:
        self._attn_backend = None if name is None else check_backend(name)

    # ----------------------------------------------------------------------------------- init
    def time_embedders(self) -> list[TimestepEmbedder]:
        """The t, gap and (if guidance-conditioned) beta embedders."""
        embedders = [self.t_embedder, self.gap_embedder, self.beta_embedder]
        return [e for e in embedders if e is not None]

    def zero_init_linears(self) -> list[nn.Linear]:
        """Layers that start at zero in both inits: adaLN outputs and the final linear."""
        final = self.final_layer
        return [b.adaln[1] for b in self.blocks] + [final.adaln[1], final.linear]

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT's init, or TVM's spectral init if ``lipschitz.spectral_init`` ([P] section 4).

        DiT: Linear and patch-embed weights xavier_uniform (patch embed as a (D, C p p) matrix),
        biases 0, label and time-MLP weights N(0, 0.02), adaLN outputs and final linear 0.
        Spectral: xavier_normal then divided by the largest singular value in place of
        xavier_uniform; time MLPs too only with ``time_spectral_init``.
        """
        lip = self.lipschitz
        init_matrix = _spectral_ if lip.spectral_init else nn.init.xavier_uniform_
        for m in self.modules():
            if isinstance(m, nn.Linear):
                init_matrix(m.weight)
                nn.init.zeros_(m.bias)
        patch = self.x_embedder.weight  # (D, C, p, p)
        init_matrix(patch.view(patch.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        if not (lip.spectral_init and lip.time_spectral_init):
            for emb in self.time_embedders():
                nn.init.normal_(emb.mlp[0].weight, std=0.02)
                nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for m in self.zero_init_linears():
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # -------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, t: Tensor | float, s: Tensor | float | None = None,
                y: Tensor | None = None, w: Tensor | float | None = None) -> Tensor:
        """x (B, C, H, W); t, s, w (B,) or scalars (s defaults to t, w to 1); y (B,) labels.

        Returns F (B, C, H, W) in x's dtype. t, s and 1/w are embedded in float32 (float64 if x
        is float64), also under autocast.
        """
        self._check_x(x)
        c = self.conditioning(x, t, s, y, w)  # (B, D)
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        for block in self.blocks:
            h = block(h, c, self.attn_backend)
        return self.unpatchify(self.final_layer(h, c)).to(x.dtype)

    def forward_and_dfds(self, x: Tensor, t: Tensor | float, s: Tensor | float,
                         y: Tensor | None = None, w: Tensor | float | None = None
                         ) -> tuple[Tensor, Tensor]:
        """(F, dF/ds), each (B, C, H, W), from one pass carrying the tangent ds = 1
        (:mod:`tvmlib.nn.dit_jvp`); what ``displacement_and_dfds`` uses when ``jvp`` is
        "fused" or "compiled" (then through torch.compile)."""
        return forward_and_dfds(self, x, t, s, y, w, EPS, compiled=self.jvp == "compiled")

    def conditioning(self, x: Tensor, t: Tensor | float, s: Tensor | float | None = None,
                     y: Tensor | None = None, w: Tensor | float | None = None) -> Tensor:
        """c = e_t(t) + e_gap(t - s) [+ e_beta(1/w)] [+ e_y(y)], (B, D). x gives B and device.

        w is ignored by a net that is not guidance-conditioned (as in :class:`MLP2D`).
        """
        B = x.shape[0]
        time_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        t = per_sample(t, B, x, "t").to(time_dtype)
        s = t if s is None else per_sample(s, B, x, "s").to(time_dtype)
        c = self.t_embedder(t) + self.gap_embedder(t - s)
        if self.beta_embedder is not None:
            w = torch.ones_like(t) if w is None else per_sample(w, B, x, "w").to(time_dtype)
            c = c + self.beta_embedder(1.0 / w)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((B,), self.num_classes, device=x.device, dtype=torch.long)
            check_labels(y, self.num_classes, B)
            c = c + self.y_embedder(y)
        elif y is not None:
            raise ValueError("labels y were given to an unconditional DiT (num_classes=0): "
                             "build it with num_classes=K or drop y")
        return c

    def modulations(self, x: Tensor, t: Tensor | float, s: Tensor | float | None = None,
                    y: Tensor | None = None, w: Tensor | float | None = None,
                    normalized: bool = True) -> list[dict[str, Tensor]]:
        """The adaLN modulation chunks the forward pass uses, one dict per block, then the final
        layer's: names :data:`MOD_NAMES` / :data:`FINAL_MOD_NAMES`, each (B, D).

        ``normalized=False`` gives them before ``mod_norm`` (the raw adaLN outputs, [P] Fig. 4).
        """
        c = self.conditioning(x, t, s, y, w)
        out = [dict(zip(MOD_NAMES, b.modulation(c, normalized))) for b in self.blocks]
        out.append(dict(zip(FINAL_MOD_NAMES, self.final_layer.modulation(c, normalized))))
        return out

    def unpatchify(self, h: Tensor) -> Tensor:
        """(B, N, p*p*C) tokens -> (B, C, H, W) image."""
        (gh, gw), p, C = self.grid, self.patch_size, self.in_channels
        h = h.reshape(h.shape[0], gh, gw, p, p, C)
        return torch.einsum("bhwpqc->bchpwq", h).reshape(h.shape[0], C, gh * p, gw * p)

    def _check_x(self, x: Tensor) -> None:
        expected = (self.in_channels, *self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DiT expects x of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")


def _spectral_(weight: Tensor) -> Tensor:
    """TVM's "Lipschitz" init, in place: xavier_normal, then divide by the top singular value.

    The SVD runs on the tall orientation (LAPACK is several times slower on wide matrices). For
    XL-size models on CPU this still takes a while; build under ``with torch.device("cuda"):``
    to do it on the GPU.
    """
    nn.init.xavier_normal_(weight)
    tall = weight if weight.shape[0] >= weight.shape[1] else weight.T
    return weight.div_(torch.linalg.matrix_norm(tall.float(), ord=2).to(weight.dtype))


# ------------------------------------------------------------------------------------ presets
# Name = size / patch: (depth, hidden_size, num_heads). DiT-T ("tiny") is this project's addition
# for CPU notebooks: head dim 64 like S, B and XL/2-18h, a quarter of DiT-S's width.
_SIZES = {"T": (6, 192, 3), "S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
          "XL": (28, 1152, 16)}
DIT_PRESETS = {f"DiT-{size}/{p}": {"depth": d, "hidden_size": h, "num_heads": n, "patch_size": p}
               for size, (d, h, n) in _SIZES.items() for p in (2, 4, 8)}
# TVM's model: DiT-XL/2 with 18 heads of dim 64 instead of 16 of dim 72 ([P] App. F.1).
DIT_PRESETS["DiT-XL/2-18h"] = {"depth": 28, "hidden_size": 1152, "num_heads": 18, "patch_size": 2}


def dit_from_preset(name: str, **kwargs) -> DiT:
    """``DiT(**DIT_PRESETS[name], **kwargs)`` for a preset name such as "DiT-S/2"."""
    if name not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; valid presets: {list(DIT_PRESETS)}")
    return DiT(**DIT_PRESETS[name], **kwargs)
