"""Terminal Velocity Matching loss (TVM paper Eq. 12 and 15, Sec. 4 and 7).

Per sample, with (t, s) from the gap sampler, x_t = (1 - t) x0 + t eps, and s' drawn separately:

    L = 1/w^2 ( || d/ds f_theta(x_t, t, s) - u_{theta*}(x_t + sg(f_theta), s) ||^2 1[t != s]
              + || u_theta(x_s', s') - (w v + (1 - w) u_{theta*}(x_s', s', null, 1)) ||^2 )

theta* is a stop-gradient EMA *target* of the weights (decay 0.99), separate from the
evaluation EMA. The first term is the terminal-velocity condition d/ds f = u(psi(x_t, t, s), s)
(Eq. 6, 8); the second is flow matching at the t = s boundary, with classifier-free guidance
folded into training (w is a network input and the target mixes in the unconditional velocity).
Squared errors are element means, as in the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tvmlib.core.ema import EMA
from tvmlib.core.flowmap import displacement_and_dfds, velocity
from tvmlib.core.losses.common import at_least_fp32, unpack_batch
from tvmlib.core.path import (
    expand_time,
    interpolate,
    sample_gap_times,
    sample_logit_normal,
    velocity_target,
)
from tvmlib.utils.cuda import capturing


def cfg_velocity_target(v: Tensor, u_uncond: Tensor, w: Tensor) -> Tensor:
    """Guided FM target w v + (1 - w) u_uncond (TVM Eq. 14).   v, u_uncond: (B, ...), w: (B,)."""
    wb = expand_time(w, v)
    return wb * v + (1 - wb) * u_uncond


def _per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean over all but the batch dimension of (a - b)^2, in fp32.   -> (B,)."""
    return (at_least_fp32(a) - at_least_fp32(b)).square().flatten(1).mean(1)


class TVMLoss:
    """TVM's training loss with its stop-gradient EMA target network.

    Every choice the paper ablates is a parameter with the paper's default.

    Args:
        net: the network being trained (its weights initialise the EMA target).
        target_decay: EMA decay gamma of the target theta* (paper: 0.99; Table 4: 0 / 0.9 /
            0.99 / 0.999).
        gap_mean, gap_std, s_mean, s_std: the gap time sampler (Sec. 7.3).
        fm_mean, fm_std: logit-normal of the FM term's s' (paper: -0.4, 1).
        frac_equal: fraction of pairs with t = s (paper: 0; 10-30% hurt 1-NFE FID).
        num_classes: classes (0: unconditional). Label ``num_classes`` is the null class.
        label_dropout: probability of dropping a label (paper: 0.1); dropped rows get w = 1.
        cfg_scale: None (no guidance input), a constant w, or (w_min, w_max) for beta = 1/w
            drawn uniformly (paper Table 4a: constant is better).
        scale_param: scaled parameterization f = (s - t) w F (paper: on, except one 512 run).
        detach_jvp: no backward through the JVP: d/ds f = F + (s - t) dF/ds keeps its value
            but its gradient flows through F only (sCM's and MeanFlow's choice; faster,
            biased; TVM back-propagates through the whole JVP).
    """

    graph_safe = True  # no host syncs while capturing, no Python state: see tvmlib.training.graphs

    def __init__(self, net: nn.Module, target_decay: float = 0.99, gap_mean: float = -0.8,
                 gap_std: float = 1.0, s_mean: float = -0.4, s_std: float = 1.0,
                 fm_mean: float = -0.4, fm_std: float = 1.0, frac_equal: float = 0.0,
                 num_classes: int = 0, label_dropout: float = 0.1,
                 cfg_scale: float | tuple[float, float] | None = None,
                 scale_param: bool = True, detach_jvp: bool = False):
        self.target = EMA(net, target_decay)
        self.gap = dict(gap_mean=gap_mean, gap_std=gap_std, s_mean=s_mean, s_std=s_std,
                        frac_equal=frac_equal)
        self.fm_mean, self.fm_std = fm_mean, fm_std
        self.num_classes, self.label_dropout = num_classes, label_dropout
        if cfg_scale is not None:
            lo, hi = (cfg_scale, cfg_scale) if isinstance(cfg_scale, (int, float)) else cfg_scale
            if lo <= 0 or hi < lo:
                raise ValueError(f"cfg_scale must be w > 0 or (w_min, w_max) with "
                                 f"0 < w_min <= w_max, got {cfg_scale}")
        self.cfg_scale, self.scale_param, self.detach_jvp = cfg_scale, scale_param, detach_jvp

    # -- the two terms, as plain functions of tensors -------------------------------------
    def terminal_residual(self, net: nn.Module, xt: Tensor, t: Tensor, s: Tensor,
                          y: Tensor | None, w: Tensor | None) -> Tensor:
        """Per-sample || d/ds f_theta - u_{theta*}(x_t + sg(f_theta), s) ||^2 (element mean)."""
        f, dfds = displacement_and_dfds(net, xt, t, s, y, w, self.scale_param, self.detach_jvp)
        with torch.no_grad():
            u_target = velocity(self.target.module, xt + f.detach(), s, y, w, self.scale_param,
                                check=False)
        return _per_sample_mse(dfds, u_target)

    def fm_residual(self, net: nn.Module, x0: Tensor, eps: Tensor, s: Tensor,
                    y: Tensor | None, w: Tensor | None) -> Tensor:
        """Per-sample || u_theta(x_s, s) - (w v + (1 - w) u_{theta*}(x_s, s, null)) ||^2."""
        xs = interpolate(x0, eps, s)
        v = velocity_target(x0, eps)
        # (all w = 1 makes the target v itself; a CUDA graph capture cannot ask, so computes it)
        if w is not None and (capturing() or bool((w != 1).any())):
            with torch.no_grad():
                null = torch.full_like(y, self.num_classes) if y is not None else None
                u_uncond = velocity(self.target.module, xs, s, null, torch.ones_like(w),
                                    self.scale_param, check=False)
            v = cfg_velocity_target(v, u_uncond, w)
        return _per_sample_mse(velocity(net, xs, s, y, w, self.scale_param, check=False), v)

    # -- sampling of labels and guidance scales -------------------------------------------
    def _labels_and_scales(self, y: Tensor | None, B: int, device) -> tuple:
        dropped = torch.zeros(B, dtype=torch.bool, device=device)
        if y is not None and self.label_dropout > 0:
            dropped = torch.rand(B, device=device) < self.label_dropout
            y = torch.where(dropped, torch.full_like(y, self.num_classes), y)
        if self.cfg_scale is None:
            return y, None
        if isinstance(self.cfg_scale, (int, float)):
            w = torch.full((B,), float(self.cfg_scale), device=device)
        else:  # beta = 1/w ~ U(1/w_max, 1/w_min)
            lo, hi = 1 / self.cfg_scale[1], 1 / self.cfg_scale[0]
            w = 1 / (lo + (hi - lo) * torch.rand(B, device=device))
        return y, torch.where(dropped, torch.ones_like(w), w)

    def __call__(self, net: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        x0, y = unpack_batch(batch)
        B, device = x0.shape[0], x0.device
        eps = torch.randn_like(x0)
        t, s = sample_gap_times(B, device=device, **self.gap)
        y, w = self._labels_and_scales(y, B, device)
        xt = interpolate(x0, eps, t)
        not_equal = ~torch.isclose(t, s)
        term = self.terminal_residual(net, xt, t, s, y, w) * not_equal
        s_fm = sample_logit_normal(B, self.fm_mean, self.fm_std, device=device)
        fm = self.fm_residual(net, x0, eps, s_fm, y, w)
        inv_w2 = 1.0 if w is None else 1.0 / w.square()
        loss = ((term + fm) * inv_w2).mean()
        return loss, {"loss": loss.detach(), "terminal": (term * inv_w2).mean().detach(),
                      "fm": (fm * inv_w2).mean().detach()}

    # -- hooks used by tvmlib.training.loop --------------------------------------------------------
    def after_step(self, net: nn.Module) -> None:
        """Move the EMA target towards the freshly updated weights."""
        self.target.update(net)

    def reset_target(self, net: nn.Module) -> None:
        """Copy ``net`` into the target (after loading new weights into ``net``)."""
        self.target.module.load_state_dict(net.state_dict())

    def state_dict(self) -> dict:
        return {"target": self.target.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.target.load_state_dict(state["target"])
