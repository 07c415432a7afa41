"""MeanFlow (Geng et al. 2025, arXiv 2505.13447) in the project's convention, as TVM's baseline.

MeanFlow learns the average velocity u(z_t, r, t) = 1/(t - r) int_r^t v dtau, so that
z_r = z_t - (t - r) u. In this project's flow-map notation (s <= t, x_s = x_t + (s - t) F) the
network output F(x_t, t, s) *is* MeanFlow's u(z_t, r=s, t). The MeanFlow identity

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),
    d/dt u = v . d_z u + d_t u       (total derivative along the flow)

gives the regression target sg(v - (t - r)(v . d_z u + d_t u)), computed with one forward JVP
with tangents (v, 1, 0) on (x, t, s) and **no gradient through it** (unlike TVM). The loss is
adaptively weighted, sg(1 / (||Delta||^2 + c)^p) ||Delta||^2 with p = 1 (MeanFlow Sec. 4.3).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tvmlib.core.losses.common import at_least_fp32, drop_labels, unpack_batch
from tvmlib.core.path import expand_time, interpolate, sample_logit_normal, velocity_target


def sample_meanflow_times(n: int, mean: float = -0.4, std: float = 1.0,
                          frac_unequal: float = 0.25, device=None) -> tuple[Tensor, Tensor]:
    """MeanFlow's (t, r): two logit-normal draws sorted so r <= t; r = t for 1 - frac_unequal."""
    a = sample_logit_normal(n, mean, std, device)
    b = sample_logit_normal(n, mean, std, device)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    equal = torch.rand(n, device=device) >= frac_unequal
    return t, torch.where(equal, t, r)


def meanflow_target(net: nn.Module, xt: Tensor, t: Tensor, r: Tensor, v: Tensor,
                    y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(u, sg(u_tgt)): the prediction u = F(x_t, t, r) and MeanFlow's target
    v - (t - r)(v . d_x F + d_t F), from one JVP with tangents (v, 1, 0) on (x, t, r)."""
    u, dudt = torch.func.jvp(lambda x_, t_, r_: net(x_, t_, r_, y), (xt, t, r),
                             (v, torch.ones_like(t), torch.zeros_like(r)))
    return u, (v - expand_time(t - r, v) * dudt).detach()


class MeanFlowLoss:
    """MeanFlow loss with adaptive weighting and optional training-time guidance.

    Args:
        frac_unequal: fraction of samples with r != t (MeanFlow: 25%).
        mean, std: logit-normal time sampler (MeanFlow ImageNet: -0.4, 1.0).
        power, eps: adaptive weight 1 / (||Delta||^2 + eps)^power.
        num_classes, label_dropout: class conditioning with a null class.
        omega: guidance scale folded into the target, v~ = omega v + (1 - omega) u(z_t, t, t, null)
            (MeanFlow Eq. 19 with kappa = 0); None disables it.
    """

    graph_safe = True  # no host syncs, no Python state: can run as a CUDA graph

    def __init__(self, frac_unequal: float = 0.25, mean: float = -0.4, std: float = 1.0,
                 power: float = 1.0, eps: float = 1e-3, num_classes: int = 0,
                 label_dropout: float = 0.1, omega: float | None = None):
        self.frac_unequal, self.mean, self.std = frac_unequal, mean, std
        self.power, self.eps = power, eps
        self.num_classes, self.label_dropout, self.omega = num_classes, label_dropout, omega

    def __call__(self, net: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        x0, y = unpack_batch(batch)
        B, device = x0.shape[0], x0.device
        eps = torch.randn_like(x0)
        t, r = sample_meanflow_times(B, self.mean, self.std, self.frac_unequal, device)
        xt = interpolate(x0, eps, t)
        v = velocity_target(x0, eps)
        y = drop_labels(y, self.label_dropout, self.num_classes)
        if self.omega is not None and y is not None:
            with torch.no_grad():
                u_uncond = net(xt, t, t, torch.full_like(y, self.num_classes))
            guided = self.omega * v + (1 - self.omega) * u_uncond
            conditional = (y != self.num_classes).view(-1, *([1] * (v.dim() - 1)))
            v = torch.where(conditional, guided, v)
        u, u_tgt = meanflow_target(net, xt, t, r, v, y)
        sq = (at_least_fp32(u) - at_least_fp32(u_tgt)).square().flatten(1).sum(1)  # (B,)
        weight = (sq.detach() + self.eps).pow(-self.power)
        loss = (weight * sq).mean()
        return loss, {"loss": loss.detach(), "mse": sq.mean().detach() / x0[0].numel()}
