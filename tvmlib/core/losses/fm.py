"""Flow matching loss (Lipman et al. 2023; TVM paper Sec. 2): E || u_theta(x_t, t) - v ||^2."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tvmlib.core.losses.common import at_least_fp32, drop_labels, unpack_batch
from tvmlib.core.path import interpolate, sample_time, velocity_target


class FMLoss:
    """Flow matching: regress u_theta(x_t, t) = F_theta(x_t, t, t) onto v = eps - x0.

    Args:
        time_sampler: ``"uniform"`` or ``"logit_normal"`` (with ``mean``, ``std``).
        label_dropout: probability of replacing a label by the null class (for CFG sampling).
        num_classes: the null class index (labels are 0..num_classes-1).
    """

    graph_safe = True  # no host syncs, no Python state: can run as a CUDA graph

    def __init__(self, time_sampler: str = "uniform", mean: float = 0.0, std: float = 1.0,
                 label_dropout: float = 0.0, num_classes: int = 0):
        if time_sampler not in ("uniform", "logit_normal"):
            raise ValueError(f"unknown time sampler {time_sampler!r}; "
                             "valid: 'uniform', 'logit_normal'")
        self.time_sampler, self.mean, self.std = time_sampler, mean, std
        self.label_dropout, self.num_classes = label_dropout, num_classes

    def __call__(self, net: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        x0, y = unpack_batch(batch)
        eps = torch.randn_like(x0)
        t = sample_time(x0.shape[0], self.time_sampler, self.mean, self.std, device=x0.device)
        xt = interpolate(x0, eps, t)
        y = drop_labels(y, self.label_dropout, self.num_classes)
        u = net(xt, t, t, y)
        loss = (at_least_fp32(u) - at_least_fp32(velocity_target(x0, eps))).square().mean()
        return loss, {"loss": loss.detach()}
