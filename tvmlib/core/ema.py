"""Exponential moving average of a network's weights.

TVM keeps two: a stop-gradient *target* (decay 0.99) used inside the loss, and an *evaluation*
EMA (0.9999 at ImageNet scale) used for sampling. Both are this class. Without a warm-up the
average after n updates still holds decay^n of the initial weights (a third after 1100 steps at
0.999), so the evaluation EMA of a short run is mostly its initialisation; with ``warmup`` the
n-th update (n = 0, 1, ...) uses decay_n = min(decay, (1 + n) / (10 + n)), whose horizon grows
with the run (about n / 9 steps) until it reaches the nominal decay.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """theta_ema <- d_n theta_ema + (1 - d_n) theta after each optimizer step, d_n = ``decay``
    or, with ``warmup``, min(decay, (1 + n) / (10 + n)) for the n-th update."""

    def __init__(self, net: nn.Module, decay: float, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.module = copy.deepcopy(net).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        ema_p = list(self.module.parameters())
        net_p = [p.detach() for p in net.parameters()]
        decay = self.current_decay()
        if decay == 0.0:
            torch._foreach_copy_(ema_p, net_p)
        else:
            torch._foreach_lerp_(ema_p, net_p, 1.0 - decay)
        for b_ema, b in zip(self.module.buffers(), net.buffers()):
            b_ema.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates,
                "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.warmup, self.updates = state.get("warmup", False), state.get("updates", 0)
        self.module.load_state_dict(state["module"])
