"""CUDA-graph replay of a training step's loss forward and backward.

TVM's step (a forward-mode JVP through the network, two target passes, and a backward through the
JVP) issues tens of thousands of small GPU kernels; for small DiTs the GPU then waits on Python
and the CUDA launch queue, not on arithmetic. A CUDA graph records those kernels once and
replays them with a single launch:

    step = GraphedLossBackward(net, loss_fn, autocast)
    step.zero_grad()
    loss, logs = step(batch, seed)      # the first call warms up and captures, then replays
    # p.grad now holds this batch's gradients; clip, optimizer.step() and EMAs run eagerly

Only the loss and its backward are captured, so learning-rate schedules, gradient clipping, the
optimizer and the EMAs stay ordinary eager code (a few fused ``foreach`` kernels). A captured
step is fixed: the same shapes, the same Python branches, the same tensors. Hence

- a batch is copied into static input tensors before each replay (shapes must not change);
- the loss must not keep Python-side state that changes between calls (a cursor into a pool,
  say) nor synchronise with the host; losses declare this with ``graph_safe = True``
  (``FMLoss``, ``TVMLoss``); host-side checks skip themselves while a capture is running
  (``tvmlib.utils.cuda.capturing``);
- the random draws of the loss come from the CUDA generator, re-seeded before every replay
  (``torch.manual_seed(seed)``), so a step's noise depends on (seed) alone, as in eager mode;
- gradients are *accumulated* into static ``p.grad`` tensors by every replay, scaled by
  ``1 / micro_batches``, so a step is ``zero_grad()`` then one replay per micro-batch; never set
  ``p.grad = None`` between replays (use :meth:`GraphedLossBackward.zero_grad`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def check_graph_support(net: nn.Module, loss_fn, micro_batches: int = 1) -> None:
    """Raise ValueError saying why ``cuda_graph`` cannot be used for this run, if it cannot."""
    device = next(net.parameters()).device
    if device.type != "cuda":
        raise ValueError(f"cuda_graph needs the network on a CUDA device, it is on {device}; "
                         "set cuda_graph: false for CPU runs")
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
    if not getattr(loss_fn, "graph_safe", False):
        raise ValueError(f"{type(loss_fn).__name__} is not marked graph_safe (it may keep "
                         "Python-side state or synchronise with the host); set cuda_graph: false")


def map_batch(fn: Callable[[Tensor], Tensor], batch):
    """``fn`` applied to every tensor of a batch: x0, or a tuple such as (x0, y), None kept."""
    if torch.is_tensor(batch):
        return fn(batch)
    return type(batch)(None if b is None else map_batch(fn, b) for b in batch)


def _copy_into(static, batch) -> None:
    if torch.is_tensor(static):
        if static.shape != batch.shape:
            raise ValueError(f"a captured step needs batches of shape {tuple(static.shape)}, "
                             f"got {tuple(batch.shape)} (drop the last incomplete batch)")
        static.copy_(batch, non_blocking=True)
        return
    for s, b in zip(static, batch):
        if (s is None) != (b is None):
            raise ValueError("a captured step needs the same batch structure every step")
        if s is not None:
            _copy_into(s, b)


class GraphedLossBackward:
    """``loss_fn(net, batch)`` and ``loss.backward()`` as one CUDA graph, replayed per step.

    Args:
        net: the trained network (on CUDA).
        loss_fn: ``loss_fn(net, batch) -> (loss, logs)`` with ``graph_safe = True``.
        autocast: a zero-argument factory of the autocast context (or a null context).
        micro_batches: replays per optimizer step; each adds loss / micro_batches to the grads.
        warmup: eager iterations on a side stream before the capture (lazy initialisations
            of cuBLAS, autograd and Triton must not happen inside the capture).
    """

    def __init__(self, net: nn.Module, loss_fn: Callable, autocast: Callable,
                 micro_batches: int = 1, warmup: int = 2):
        self.net, self.loss_fn, self.autocast, self.warmup = net, loss_fn, autocast, warmup
        self.micro_batches = micro_batches
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static = None
        self.loss: Tensor | None = None
        self.logs: dict[str, Tensor] = {}

    def _forward_backward(self) -> tuple[Tensor, dict[str, Tensor]]:
        with self.autocast():
            loss, logs = self.loss_fn(self.net, self.static)
        (loss / self.micro_batches).backward()
        return loss.detach(), {k: v.detach() for k, v in logs.items()}

    def zero_grad(self) -> None:
        """Zero the static gradients in place (start of an optimizer step)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def _capture(self, batch, seed: int) -> None:
        self.static = map_batch(torch.clone, batch)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                torch.manual_seed(seed)
                for p in self.params:
                    p.grad = None
                self._forward_backward()
        torch.cuda.current_stream().wait_stream(side)
        for p in self.params:  # static gradients: the captured backward adds into them
            p.grad = torch.zeros_like(p)
        self.graph = torch.cuda.CUDAGraph()
        torch.manual_seed(seed)
        with torch.cuda.graph(self.graph):
            self.loss, self.logs = self._forward_backward()

    def __call__(self, batch, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Add the gradients of loss / micro_batches on ``batch`` (noise seeded by ``seed``)."""
        if self.graph is None:
            self._capture(batch, seed)
        _copy_into(self.static, batch)
        torch.manual_seed(seed)
        self.graph.replay()
        return self.loss, self.logs
