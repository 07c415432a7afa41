"""Closed-form flows for tests and notebooks: Gaussian data N(m, sigma^2 I), Gaussian noise.

With x_t = (1 - t) x0 + t eps, x0 ~ N(m, sigma^2 I) and eps ~ N(0, I), every marginal p_t is
Gaussian with mean (1 - t) m and std sd(t) = sqrt((1 - t)^2 sigma^2 + t^2), the marginal
velocity is affine in x, and the exact flow map is

    psi(x, t, s) = (1 - s) m + sd(s) / sd(t) (x - (1 - t) m).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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

    def _col(self, t: Tensor, x: Tensor) -> Tensor:
        return t.view(-1, 1).to(x.dtype)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """u(x, t) = -m + sd'(t) / sd(t) (x - (1 - t) m)."""
        t = self._col(t, x)
        dsd = (t - (1 - t) * self.sigma**2) / self.sd(t)
        return -self.m + dsd / self.sd(t) * (x - (1 - t) * self.m)

    def flow_map(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """psi(x, t, s): where the ODE started at x at time t is at time s."""
        t, s = self._col(t, x), self._col(s, x)
        return (1 - s) * self.m + self.sd(s) / self.sd(t) * (x - (1 - t) * self.m)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.m + self.sigma * torch.randn(n, self.m.numel(), generator=generator,
                                                 dtype=torch.float64)

    def forward(self, x: Tensor, t: Tensor, s: Tensor | None = None, y=None, w=None) -> Tensor:
        if s is None or bool((s == t).all()):
            return self.velocity(x, t)
        return (self.flow_map(x, t, s) - x) / self._col(s - t, x)
