"""Training compute in FLOPs, so that methods can be compared at equal compute.

One optimizer step of a loss is counted with ``torch.utils.flop_counter.FlopCounterMode``: every
matrix product (and convolution, attention) of the loss's forward passes, its JVP's tangent pass,
its target and unconditional passes, and the backward through all that needs gradients. Element-
wise work (activations, the optimizer, the EMA) is not counted; for the networks of this project
it is a small part of the FLOPs, though not always of the wall-clock time (a small MLP on a CPU
is dominated by per-operation overhead). A FLOP budget is reproducible on any machine, unlike a
budget in seconds on a shared one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tvmlib.training.build import Built
from tvmlib.training.config import RunConfig


def step_flops(net: nn.Module, loss_fn, batch) -> int:
    """FLOPs of ``loss_fn(net, batch)`` and its backward (one step without the optimizer).
    Leaves the network's gradients, the loss's state and the global random state untouched."""
    params = [p for p in net.parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        loss, _ = loss_fn(net, batch)
        torch.autograd.grad(loss, params, allow_unused=True)
    return int(counter.get_total_flops())


def steps_for_budget(budget: float, flops_per_step: int) -> int:
    """Optimizer steps that fit in ``budget`` FLOPs (at least one)."""
    if not budget > 0 or flops_per_step <= 0:
        raise ValueError(f"need a budget > 0 and FLOPs per step > 0, got {budget}, "
                         f"{flops_per_step}")
    steps = int(budget // flops_per_step)
    if steps < 1:
        raise ValueError(f"a budget of {budget:.3g} FLOPs does not cover one step of "
                         f"{flops_per_step:.3g} FLOPs")
    return steps


def apply_flop_budget(cfg: RunConfig, built: Built) -> int | None:
    """With ``train.flop_budget``: the FLOPs of one training step of the built run (on a batch
    drawn from its source and then put back), and the run's steps set to budget // that (in
    ``cfg.train.steps`` and ``built.loop.steps``). Without a budget: None, nothing changes."""
    if cfg.train.flop_budget is None:
        return None
    state = built.source.state_dict()
    batch = built.source.next_batch()
    built.source.load_state_dict(state)
    flops = step_flops(built.net, built.loss, batch)
    cfg.train.steps = built.loop.steps = steps_for_budget(cfg.train.flop_budget, flops)
    return flops
