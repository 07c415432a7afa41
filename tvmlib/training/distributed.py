"""Several processes under ``torchrun``: process group setup and the gradient all-reduce.

Every process draws the same global batch and trains on its slice; after the backward pass
:func:`average_gradients` averages the gradients with one all-reduce. This plays
DistributedDataParallel's role: DDP's forward cannot take the dual tensors of ``torch.func.jvp``
(TVM, MeanFlow), so the loop calls the plain module and synchronises here.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def init_distributed(timeout_s: float = 600.0) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun initialises the process group (NCCL on GPUs,
    gloo on CPUs). A rank that waits longer than ``timeout_s`` for the others fails instead of
    hanging."""
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if n > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return world()[0], n, device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(net: nn.Module, n: int) -> None:
    """Average gradients over ``n`` processes with one all_reduce of a flat buffer."""
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= n
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes in place (a no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t
