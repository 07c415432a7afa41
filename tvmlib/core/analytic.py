"""Closed-form flows for tests and notebooks: Gaussian data N(m, sigma^2 I) or a mixture of such
Gaussians, Gaussian noise.

With x_t = (1 - t) x0 + t eps, x0 ~ N(m, sigma^2 I) and eps ~ N(0, I), every marginal p_t is
Gaussian with mean (1 - t) m and std sd(t) = sqrt((1 - t)^2 sigma^2 + t^2), the marginal
velocity is affine in x, and the exact flow map is

    psi(x, t, s) = (1 - s) m + sd(s) / sd(t) (x - (1 - t) m).

For a mixture sum_k pi_k N(m_k, sigma^2 I) the class-conditional velocity u(x, t | k) is that of
component k, and the marginal velocity is the posterior average
u(x, t) = sum_k P(k | x_t = x) u(x, t | k) (closed form; its flow map is not).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tvmlib.core.path import per_sample


def _gaussian_velocity(x: Tensor, t: Tensor, m: Tensor, sigma: float) -> Tensor:
    """u(x, t) = -m + sd'(t) / sd(t) (x - (1 - t) m) of data N(m, sigma^2 I), t broadcasting."""
    sd = torch.sqrt((1 - t) ** 2 * sigma**2 + t**2)
    dsd = (t - (1 - t) * sigma**2) / sd
    return -m + dsd / sd * (x - (1 - t) * m)


def _times(t: Tensor | float, x: Tensor) -> Tensor:
    """t (a scalar or (B,)) as a (B,) tensor in x's dtype and device."""
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])


def _velocity_only(name: str, t: Tensor, s: Tensor | None) -> None:
    if s is not None and not bool((torch.as_tensor(s) == torch.as_tensor(t)).all()):
        raise ValueError(f"{name} has no closed-form flow map: call it with s = t (a velocity)")


class GaussianFlow(nn.Module):
    """The exact flow of the linear path between N(m, sigma^2 I) and N(0, I).

    As a network in the project signature, ``forward(x, t, s)`` returns the exact flow-map
    output F(x, t, s) = (psi(x, t, s) - x) / (s - t), and the velocity where s = t.
    """

    def __init__(self, mean: Tensor, sigma: float):
        super().__init__()
        self.register_buffer("m", torch.as_tensor(mean, dtype=torch.float64))
        self.sigma = float(sigma)
        self.num_classes = 0

    def sd(self, t: Tensor) -> Tensor:
        return torch.sqrt((1 - t) ** 2 * self.sigma**2 + t**2)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """u(x, t) = -m + sd'(t) / sd(t) (x - (1 - t) m)."""
        return _gaussian_velocity(x, per_sample(t, x), self.m, self.sigma)

    def flow_map(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """psi(x, t, s): where the ODE started at x at time t is at time s."""
        t, s = per_sample(t, x), per_sample(s, x)
        return (1 - s) * self.m + self.sd(s) / self.sd(t) * (x - (1 - t) * self.m)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.m + self.sigma * torch.randn(n, self.m.numel(), generator=generator,
                                                 dtype=torch.float64)

    def forward(self, x: Tensor, t: Tensor, s: Tensor | None = None, y=None, w=None) -> Tensor:
        if s is None or bool((s == t).all()):
            return self.velocity(x, t)
        same = per_sample(s == t, x).bool()  # rows with s = t get the velocity (the limit)
        gap = torch.where(same, torch.ones_like(per_sample(s, x)), per_sample(s - t, x))
        return torch.where(same, self.velocity(x, t), (self.flow_map(x, t, s) - x) / gap)


class GaussianMixtureFlow(nn.Module):
    """Exact velocities of the linear path from sum_k pi_k N(m_k, sigma^2 I) to N(0, I).

    As a network in the project signature, ``forward(x, t, s=None, y=None)`` returns the
    class-conditional velocity u(x, t | y) for rows with a class y < K and the unconditional
    u(x, t) for y = None or the null class K, so ``tvmlib.core.solvers.sample`` integrates it,
    with classifier-free guidance (``cfg_scale``) too. Only s = t (velocities) is available.

    Args:
        means: (K, d) component means; sigma: the shared std; weights: (K,) mixture weights
            (default uniform).
    """

    def __init__(self, means: Tensor, sigma: float, weights: Tensor | None = None):
        super().__init__()
        m = torch.as_tensor(means, dtype=torch.float64)
        K = m.shape[0]
        pi = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if m.dim() != 2 or pi.shape != (K,) or bool((pi <= 0).any()):
            raise ValueError(f"means must be (K, d) and weights (K,) positive, got "
                             f"{tuple(m.shape)} and {tuple(pi.shape)}")
        self.register_buffer("m", m)
        self.register_buffer("log_pi", (pi / pi.sum()).log())
        self.sigma, self.num_classes, self.dim = float(sigma), K, m.shape[1]

    def posterior(self, x: Tensor, t: Tensor) -> Tensor:
        """P(k | x_t = x): (B, K). The components share sd(t), so only the means differ."""
        t = _times(t, x)[:, None, None]
        sd2 = (1 - t) ** 2 * self.sigma**2 + t**2
        d2 = (x[:, None] - (1 - t) * self.m.to(x.dtype)[None]).square().sum(-1, keepdim=True)
        return torch.softmax(self.log_pi.to(x.dtype) - (d2 / (2 * sd2)).squeeze(-1), dim=1)

    def velocity(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """u(x, t | y) for rows with y < K, the marginal u(x, t) for y None or y = K. (B, d)"""
        u_k = _gaussian_velocity(x[:, None], _times(t, x)[:, None, None],
                                 self.m.to(x.dtype)[None], self.sigma)  # u(x, t | k): (B, K, d)
        marginal = (self.posterior(x, t)[..., None] * u_k).sum(1)
        if y is None:
            return marginal
        y = torch.as_tensor(y, device=x.device).expand(x.shape[0])
        cond = u_k[torch.arange(x.shape[0], device=x.device), y.clamp(max=self.num_classes - 1)]
        return torch.where((y < self.num_classes)[:, None], cond, marginal)

    def sample_data(self, n: int, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor]:
        """(x0 (n, d) float64, labels (n,))."""
        y = torch.multinomial(self.log_pi.exp(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.m[y] + self.sigma * noise, y

    def forward(self, x: Tensor, t: Tensor, s: Tensor | None = None, y=None, w=None) -> Tensor:
        _velocity_only("GaussianMixtureFlow", t, s)
        return self.velocity(x, t, y)


def _log_mass(alpha: Tensor, beta: Tensor) -> Tensor:
    """log(Phi(beta) - Phi(alpha)) for alpha < beta, stable in both tails (an interval right of
    the mean is reflected to the left, where log Phi is accurate)."""
    flip = alpha > 0
    lo, hi = torch.where(flip, -beta, alpha), torch.where(flip, -alpha, beta)
    l_hi, l_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return l_hi + torch.log1p(-torch.exp(l_lo - l_hi))


class BoxMixtureFlow(nn.Module):
    """Exact velocity of the linear path from the uniform density on a union of disjoint boxes
    (the checkerboard) to N(0, I).

    Given x_t = x the posterior of x0 is the uniform prior times N(x0; x / (1 - t), r^2 I),
    r = t / (1 - t): per box a product of truncated normals, so E[x0 | x_t = x] is closed form
    (normal CDFs) and u(x, t) = (x - E[x0 | x_t = x]) / t. Defined for 0 < t < 1. The
    density must be uniform on the union (each box weighs its volume, as the checkerboard's).

    Args:
        lower, upper: (K, d) box corners (boxes disjoint; the density is uniform on their union).
    """

    def __init__(self, lower: Tensor, upper: Tensor):
        super().__init__()
        lo, hi = (torch.as_tensor(a, dtype=torch.float64) for a in (lower, upper))
        if lo.shape != hi.shape or lo.dim() != 2 or not bool((hi > lo).all()):
            raise ValueError(f"lower and upper must be (K, d) with upper > lower, got "
                             f"{tuple(lo.shape)} and {tuple(hi.shape)}")
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.num_classes, self.dim = 0, lo.shape[1]

    def posterior_mean(self, x: Tensor, t: Tensor) -> Tensor:
        """E[x0 | x_t = x]: (B, d), the truncated means of the boxes weighted by their mass."""
        t = _times(t, x)[:, None, None]
        mu, r = x[:, None] / (1 - t), t / (1 - t)  # (B, 1, d), (B, 1, 1)
        alpha, beta = (self.lo[None] - mu) / r, (self.hi[None] - mu) / r  # (B, K, d)
        log_p = _log_mass(alpha, beta)  # per box and coordinate
        log_phi = -0.5 * torch.stack([alpha, beta]).square() - 0.5 * math.log(2 * math.pi)
        mean = mu + r * (torch.exp(log_phi[0] - log_p) - torch.exp(log_phi[1] - log_p))
        w = torch.softmax(log_p.sum(-1), dim=1)  # a uniform density: box k weighs its mass
        return (w[..., None] * mean).sum(1)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """u(x, t) = E[eps - x0 | x_t = x] = (x - E[x0 | x_t = x]) / t: (B, d)."""
        return (x - self.posterior_mean(x, t)) / _times(t, x)[:, None]

    def forward(self, x: Tensor, t: Tensor, s: Tensor | None = None, y=None, w=None) -> Tensor:
        _velocity_only("BoxMixtureFlow", t, s)
        return self.velocity(x, t)
