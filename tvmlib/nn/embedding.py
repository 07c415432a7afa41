"""Sinusoidal embeddings of scalar conditioning (t, the gap t - s, 1/w) and of 2D positions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tvmlib.utils.cuda import capturing


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Embed scalars t (B,) as (B, dim): [cos(scale t f_k), sin(scale t f_k)].

    Frequencies f_k = 10000^(-k / (dim/2)), k = 0..dim/2 - 1 (the transformer / DiT
    embedding). ``scale`` stretches t in [0, 1] so the high frequencies resolve small gaps.
    """
    args, _ = _phases(t, dim, scale)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sinusoidal_embedding_jvp(t: Tensor, dt: Tensor, dim: int, scale: float = 1000.0
                             ) -> tuple[Tensor, Tensor]:
    """The embedding e(t) (B, dim) of :func:`sinusoidal_embedding` and its tangent along dt (B,):

        a_k = scale t f_k,  e = [cos a, sin a],  de = [-sin a, cos a] * scale f_k dt
    """
    args, freqs = _phases(t, dim, scale)
    cos, sin = torch.cos(args), torch.sin(args)
    dargs = scale * dt.to(freqs.dtype)[:, None] * freqs[None]  # (B, half)
    return torch.cat([cos, sin], dim=-1), torch.cat([-sin * dargs, cos * dargs], dim=-1)


def _phases(t: Tensor, dim: int, scale: float) -> tuple[Tensor, Tensor]:
    """a_k = scale t f_k (B, dim/2) and f_k (dim/2,), in t's dtype but at least fp32."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    t = t.to(torch.promote_types(t.dtype, torch.float32))
    k = torch.arange(half, device=t.device, dtype=t.dtype)
    freqs = torch.exp(-math.log(10000.0) * k / half)
    return scale * t[:, None] * freqs[None], freqs


def per_sample(v: Tensor | float, B: int, x: Tensor, name: str) -> Tensor:
    """Broadcast a Python number or a 0-d / (B,) tensor to a (B,) tensor on x's device."""
    if not torch.is_tensor(v):
        return torch.full((B,), float(v), device=x.device)
    if v.dim() == 0:
        return v.expand(B)
    if v.shape != (B,):
        raise ValueError(f"{name} must be a scalar or of shape ({B},), got {tuple(v.shape)}")
    return v


def check_labels(y: Tensor, num_classes: int, B: int) -> None:
    """Class labels must be integers (B,) in [0, num_classes], ``num_classes`` being the null
    class (an embedding lookup outside it fails without saying why, or asserts on a GPU)."""
    if y.shape != (B,) or y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"y must be integer labels of shape ({B},) in [0, {num_classes}] "
                         f"({num_classes} = null class), got dtype {y.dtype} and shape "
                         f"{tuple(y.shape)}")
    if capturing() or torch.compiler.is_compiling() or y.numel() == 0:
        return  # a CUDA graph cannot read values back to the host; torch.compile would break
        # its graph here (the eager and uncompiled paths check)
    lo, hi = map(int, torch.aminmax(y))
    if lo < 0 or hi > num_classes:
        raise ValueError(f"labels y must lie in [0, {num_classes}] ({num_classes} = null class), "
                         f"got values from {lo} to {hi}")


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2D sin-cos position embedding (grid_h * grid_w, dim), row-major token order.

    Half of the channels encode the row, half the column; each half is [sin(p f_k), cos(p f_k)]
    with f_k = 10000^(-k / (dim/4)), k = 0..dim/4 - 1.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                                torch.arange(grid_w, dtype=torch.float64), indexing="ij")

    def one_axis(pos: Tensor) -> Tensor:  # (N,) -> (N, dim/2)
        args = pos.reshape(-1, 1) * freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    return torch.cat([one_axis(rows), one_axis(cols)], dim=1).float()  # (N, dim)
