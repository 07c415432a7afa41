"""Sinusoidal embeddings of scalar conditioning (t, the gap t - s, 1/w)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_embedding(
    t: Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0
) -> Tensor:
    """Embed scalars t (B,) as (B, dim): [cos(scale t f_k), sin(scale t f_k)].

    Frequencies f_k = max_period^(-k / (dim/2)), k = 0..dim/2 - 1 (the transformer / DiT
    embedding). ``scale`` stretches t in [0, 1] so the high frequencies resolve small gaps.
    """
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    t = t.to(torch.promote_types(t.dtype, torch.float32))  # at least fp32, fp64 stays fp64
    k = torch.arange(half, device=t.device, dtype=t.dtype)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = scale * t[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def per_sample(v: Tensor | float, B: int, x: Tensor, name: str) -> Tensor:
    """Broadcast a Python number or a 0-d / (B,) tensor to a (B,) tensor on x's device."""
    if not torch.is_tensor(v):
        return torch.full((B,), float(v), device=x.device)
    if v.dim() == 0:
        return v.expand(B)
    if v.shape != (B,):
        raise ValueError(f"{name} must be a scalar or of shape ({B},), got {tuple(v.shape)}")
    return v
