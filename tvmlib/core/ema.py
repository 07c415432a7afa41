"""Exponential moving average of a network's weights.

TVM keeps two: a stop-gradient *target* (decay 0.99) used inside the loss, and an *evaluation*
EMA (0.9999 at ImageNet scale) used for sampling. Both are this class.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta after each optimizer step."""

    def __init__(self, net: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        ema_p = list(self.module.parameters())
        net_p = [p.detach() for p in net.parameters()]
        if self.decay == 0.0:
            torch._foreach_copy_(ema_p, net_p)
        else:
            torch._foreach_lerp_(ema_p, net_p, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), net.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.module.load_state_dict(state["module"])
