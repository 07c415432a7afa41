"""One optimizer step of the training loop (``tvmlib.training.loop``): the micro-batches' losses
and gradients (eagerly or as a CUDA graph's replay), their all-reduce over processes, clipping,
the read-back and check of the step's logs, AdamW and the EMAs; the precision policy of every
run (:func:`autocast`) and the labels of a step's parts for the profiler (:func:`phase`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tvmlib.core.ema import EMA
from tvmlib.training.distributed import average_gradients, collective, world
from tvmlib.training.graphs import GraphedLossBackward, check_graph_support, map_batch
from tvmlib.training.state import TrainConfig, TrainState, check_train_config
from tvmlib.utils.checks import choice


def autocast(amp: str, device: torch.device, cuda_graph: bool = False):
    """The precision policy of every run: bf16 autocast on CUDA (``amp`` "auto") or anywhere
    (``"bf16"``), else full precision (``"off"``). A CUDA graph must not hold autocast's weight
    cache."""
    choice("amp", amp, ("auto", "bf16", "off"))
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not cuda_graph)
    return contextlib.nullcontext()


def phase(name: str):
    """Label a part of the step for the PyTorch profiler (``tvmlib.apps.bench.loop_profile``);
    nothing at all while no profiler runs."""
    if torch.autograd._profiler_enabled():
        return torch.profiler.record_function(f"loop/{name}")
    return contextlib.nullcontext()


def micro_seed(seed: int, step: int, index: int) -> int:
    """A seed for micro-batch ``index`` of ``step``: the loss's noise then depends only on
    (seed, step, index), not on how micro-batches are spread over processes."""
    return (seed * 1_000_003 + step) * 4099 + index


def chunk(batch, i: int, n: int):
    """Micro-batch i of n from a global batch (x0 or (x0, y))."""
    def part(b: torch.Tensor) -> torch.Tensor:
        if b.shape[0] % n:
            raise ValueError(f"global batch {b.shape[0]} is not divisible into {n} micro-batches")
        return b.chunk(n)[i]

    return map_batch(part, batch)


@dataclass
class Pending:
    """A step's logs not yet read back from the device: ``values`` holds (the loss summed over
    ``micro_batches``, gradient norm, the loss's tensor logs) as one float32 vector; ``numbers``
    the logs that were plain numbers; ``keys`` the loss's log names in their order."""

    step: int
    lr: float
    micro_batches: int
    values: torch.Tensor
    keys: tuple[str, ...]
    numbers: dict[str, float]

    def named(self, row) -> dict:
        """The step's logs by name from ``row``, ``values`` read back (numbers) or not
        (tensors still on the device; reading one synchronises)."""
        loss_sum, grad_norm, *rest = row
        read = dict(zip((k for k in self.keys if k not in self.numbers), rest))
        return {**{k: self.numbers.get(k, read.get(k)) for k in self.keys},
                "loss": loss_sum / self.micro_batches, "grad_norm": grad_norm, "lr": self.lr}


class Step:
    """One optimizer step: micro-batches, gradient all-reduce, checks, clipping, AdamW, EMAs."""

    def __init__(self, state: TrainState, loss_fn: Callable, cfg: TrainConfig):
        self.state, self.loss_fn, self.cfg = state, loss_fn, cfg
        self.device = next(state.net.parameters()).device
        self.rank, self.world = world()
        self.autocast = lambda: autocast(cfg.amp, self.device, cfg.cuda_graph)
        self.graphed = None
        if cfg.cuda_graph:
            check_graph_support(state.net, loss_fn, cfg.micro_batches)
            self.graphed = GraphedLossBackward(state.net, loss_fn, self.autocast,
                                               cfg.micro_batches)
        self.last_finite = (None, None)  # (step, loss)
        self.sync = average_gradients  # (net, world, loss_sum); a benchmark may time it

    def gradients(self, batch) -> tuple[torch.Tensor, dict]:
        """Accumulate this process's micro-batch gradients; returns (the sum of the micro-batch
        losses (a tensor, not read back), the last micro-batch's logs)."""
        net, n_micro, step = self.state.net, self.cfg.micro_batches, self.state.step
        if self.graphed is None:
            self.state.opt.zero_grad(set_to_none=True)
        else:
            self.graphed.zero_grad()
        loss_sum = torch.zeros((), device=self.device)
        for k in range(n_micro):
            index = self.rank * n_micro + k
            seed = micro_seed(self.cfg.seed, step, index)
            micro = map_batch(lambda b: b.to(self.device, non_blocking=True),
                              chunk(batch, index, self.world * n_micro))
            if self.graphed is not None:  # the replay adds loss / n_micro's gradients
                loss, logs = self.graphed(micro, seed)
            else:
                torch.manual_seed(seed)
                with self.autocast():
                    loss, logs = self.loss_fn(net, micro)
                (loss / n_micro).backward()
            loss_sum += loss.detach().float()
        if self.world > 1:
            with collective("gradient all-reduce", step + 1, self.cfg.ckpt_path):
                self.sync(net, self.world, loss_sum)  # loss_sum becomes the mean over processes
        return loss_sum, logs

    def __call__(self, batch) -> dict[str, float] | Pending:
        """Take one step; returns its logs (loss, gradient norm before clipping, lr, ...), or
        with ``sync_every`` > 1 the same still on the device (:meth:`read_back` reads them)."""
        state, cfg = self.state, self.cfg
        if cfg.warmup and state.step <= cfg.warmup:  # later steps keep what a callback sets
            for group in state.opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (state.step + 1) / cfg.warmup)
        lr = state.opt.param_groups[0]["lr"]
        with phase("loss_backward"):
            loss_sum, logs = self.gradients(batch)
        with phase("clip_and_checks"):
            norm = nn.utils.clip_grad_norm_(
                state.net.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf"))
            out = self.pending(loss_sum, norm, logs, lr)
            if cfg.sync_every == 1:  # read now: a bad value stops the run before its update
                out = self.read_back([out])[0]
        with phase("optimizer"):
            state.opt.step()
        with phase("emas"):
            state.ema.update(state.net)
            if hasattr(self.loss_fn, "after_step"):
                self.loss_fn.after_step(state.net)
        state.step += 1
        return out

    def pending(self, loss_sum: torch.Tensor, norm: torch.Tensor, logs: dict, lr: float
                ) -> Pending:
        """This step's logs gathered into one new device vector (a CUDA graph's outputs are
        overwritten by its next replay), nothing read back."""
        tensors = {k: v for k, v in logs.items() if isinstance(v, torch.Tensor)}
        values = torch.stack([loss_sum, norm.to(loss_sum.device, torch.float32),
                              *(v.detach().to(loss_sum.device, torch.float32).reshape(())
                                for v in tensors.values())])
        return Pending(self.state.step + 1, lr, self.cfg.micro_batches, values, tuple(logs),
                        {k: float(v) for k, v in logs.items() if k not in tensors})

    def read_back(self, entries: list) -> list[dict[str, float]]:
        """The logs of ``entries`` (:class:`Pending`, or logs already read) as numbers, with
        one synchronisation for all; raises FloatingPointError at the first step, in order,
        whose loss or gradient norm is not finite."""
        waiting = [e for e in entries if isinstance(e, Pending)]
        rows = iter(torch.stack([e.values for e in waiting]).tolist() if waiting else [])
        out = []
        for e in entries:
            if not isinstance(e, Pending):
                out.append(e)
                continue
            logs = e.named(next(rows))
            self.check_finite(e.step, logs["loss"], logs["grad_norm"])
            out.append(logs)
        return out

    def check_finite(self, step: int, loss: float, grad_norm: float) -> None:
        """Raise FloatingPointError on a non-finite loss or gradient norm at ``step``, naming
        it and the last finite loss (with ``sync_every`` 1, before that step's update)."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss) else f"gradient norm (loss {loss:.4g})"
            raise FloatingPointError(
                f"non-finite {what} at step {step}; last finite loss: "
                f"{self.last_finite[1]} at step {self.last_finite[0]}. Lower the learning rate, "
                "enable grad_clip, or check the data for NaNs.")
        self.last_finite = (step, loss)


def make_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW as training uses it: foreach kernels, or one fused kernel (``fused_adamw``)."""
    return torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                             weight_decay=cfg.weight_decay, fused=cfg.fused_adamw or None)


def new_state(net: nn.Module, cfg: TrainConfig) -> TrainState:
    return TrainState(net, EMA(net, cfg.ema_decay, cfg.ema_warmup), make_optimizer(net, cfg))


def optimizer_step(net: nn.Module, loss_fn: Callable, cfg: TrainConfig) -> Step:
    """The loop's own step on a fresh state (``.state``), for benchmarks: call it with one
    global batch; its ``.sync`` is the gradient all-reduce (wrap it to time it)."""
    return Step(new_state(net, check_train_config(cfg)), loss_fn, cfg)
