"""The linear probability path and its time samplers (TVM paper, Sec. 2).

x_t = (1 - t) x0 + t eps with t = 0 data and t = 1 noise; the conditional velocity is
v = d/dt x_t = eps - x0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def per_sample(v: Tensor, x: Tensor) -> Tensor:
    """Per-sample values ``v`` (B,) as (B, 1, ..., 1) in x's dtype, to broadcast against x."""
    return v.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def expand_time(t: Tensor, x: Tensor) -> Tensor:
    """:func:`per_sample` for times ``t`` that must have shape (B,) for x (B, ...)."""
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"times must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
    return per_sample(t, x)


def interpolate(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t eps.   x0, eps: (B, ...), t: (B,)."""
    if x0.shape != eps.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must match")
    tt = expand_time(t, x0)
    return (1 - tt) * x0 + tt * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """Conditional velocity v = d/dt x_t = eps - x0."""
    return eps - x0


def sample_logit_normal(n: int, mean: float = 0.0, std: float = 1.0, device=None,
                        generator: torch.Generator | None = None) -> Tensor:
    """t = sigmoid(z) with z ~ N(mean, std^2), shape (n,)."""
    z = torch.randn(n, device=device, generator=generator) * std + mean
    return torch.sigmoid(z)


def sample_time(n: int, name: str = "uniform", mean: float = 0.0, std: float = 1.0,
                device=None, generator: torch.Generator | None = None) -> Tensor:
    """t ~ U(0, 1) (``"uniform"``) or logit-normal(mean, std) (``"logit_normal"``), shape (n,)."""
    if name == "uniform":
        return torch.rand(n, device=device, generator=generator)
    if name == "logit_normal":
        return sample_logit_normal(n, mean, std, device, generator)
    raise ValueError(f"unknown time sampler {name!r}; valid: 'uniform', 'logit_normal'")


def sample_gap_times(n: int, gap_mean: float = -0.8, gap_std: float = 1.0, s_mean: float = -0.4,
                     s_std: float = 1.0, frac_equal: float = 0.0, device=None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """TVM's "gap" (t, s) sampler (TVM paper Sec. 7.3). Returns (t, s), each (n,), s <= t <= 1.

    gap = sigmoid(N(gap_mean, gap_std^2)); s ~ logit-normal(s_mean, s_std) truncated to
    s <= 1 - gap by inverse-CDF sampling; t = min(s + gap, 1). A fraction ``frac_equal`` of the
    pairs gets gap = 0 (t = s, untruncated s); the paper's default is 0.
    """
    if not 0.0 <= frac_equal <= 1.0:
        raise ValueError(f"frac_equal must be in [0, 1], got {frac_equal}")
    f64 = dict(dtype=torch.float64, device=device)
    gap = torch.sigmoid(torch.randn(n, generator=generator, **f64) * gap_std + gap_mean)
    if frac_equal > 0:
        equal = torch.rand(n, generator=generator, **f64) < frac_equal
        gap = torch.where(equal, torch.zeros_like(gap), gap)
    # Truncated normal by inverse CDF: z <= logit(1 - gap)  <=>  u <= Phi((z_max - mean) / std).
    z_max = torch.logit(1 - gap)  # +inf where gap == 0
    u_max = torch.special.ndtr((z_max - s_mean) / s_std)
    u = (torch.rand(n, generator=generator, **f64) * u_max).clamp(1e-12, 1 - 1e-12)
    s = torch.sigmoid(s_mean + s_std * torch.special.ndtri(u))
    s = torch.minimum(s, 1 - gap)  # guards the last ulp of the inverse CDF
    t = torch.clamp(s + gap, max=1.0)
    return t.float(), s.float()
