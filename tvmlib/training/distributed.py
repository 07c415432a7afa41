"""Several processes under ``torchrun``: process group setup, the gradient all-reduce, and a
clear error when another process dies or hangs.

Every process draws the same global batch and trains on its slice; after the backward pass
:func:`average_gradients` averages the gradients (and the step's loss) with one all-reduce. This
plays DistributedDataParallel's role: DDP's forward cannot take the dual tensors of
``torch.func.jvp`` (TVM, MeanFlow), so the loop calls the plain module and synchronises here.

A collective that cannot complete (a process was killed, or hangs) raises after the process
group's timeout (``train.dist_timeout_s``), on gloo and on NCCL: for NCCL,
:func:`init_distributed` sets ``TORCH_NCCL_BLOCKING_WAIT=1``, so that ``wait()`` raises the
timeout in the calling thread (after aborting the communicator) instead of the watchdog thread
tearing the process down. :func:`collective` turns that error into one line naming the rank, the
step and what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re

import torch
import torch.distributed as dist
from torch import nn

DEFAULT_TIMEOUT_S = 600.0  # longer than any gap between collectives (a checkpoint write)
_state = {"timeout_s": DEFAULT_TIMEOUT_S, "setting": "train.dist_timeout_s", "failed": False}


class CollectiveError(RuntimeError):
    """A collective failed or timed out: another process of the run died or stopped answering."""


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        with collective("barrier"):
            dist.barrier()


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, setting: str = "train.dist_timeout_s"
                     ) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun initialises the process group (NCCL on GPUs,
    gloo on CPUs). A collective that waits longer than ``timeout_s`` raises (see the module
    docstring) instead of hanging; its error names ``setting``, where the user sets it."""
    if not timeout_s > 0:
        raise ValueError(f"the process-group timeout must be > 0 seconds, got {timeout_s}")
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if n > 1 and not dist.is_initialized():
        if device.type == "cuda":  # a timeout raises in this thread (read at group creation)
            os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        _state.update(timeout_s=float(timeout_s), setting=setting, failed=False)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return world()[0], n, device


def shutdown() -> None:
    """Destroy the process group; after a failed collective, leave it (the peers are gone and
    tearing it down could wait on them): the process exits anyway."""
    if dist.is_available() and dist.is_initialized() and not _state["failed"]:
        dist.destroy_process_group()


def _cause(err: BaseException) -> str:
    """The gist of a backend error: its first line without the source location or advice."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # "[.../gloo/transport/tcp/pair.cc:545] "
    return text.split(". This is typically")[0][:160]


@contextlib.contextmanager
def collective(what: str, step: int | None = None, resume: str | None = None):
    """Run a collective; if it fails or times out, raise :class:`CollectiveError`: one line with
    this rank, the step, the cause and what to do (``resume``: the checkpoint to resume from)."""
    try:
        yield
    except RuntimeError as err:  # DistBackendError, gloo's errors: all RuntimeErrors
        if isinstance(err, (CollectiveError, torch.OutOfMemoryError)):
            raise
        _state["failed"] = True
        rank, n = world()
        at = f" in step {step}" if step is not None else ""
        todo = (f"then run the same command again: it resumes from the last checkpoint "
                f"({resume})") if resume else "then run the same command again"
        raise CollectiveError(
            f"rank {rank} of {n}{at}: the {what} did not complete ({_cause(err)}): another "
            f"process of this run died or did not answer within {_state['timeout_s']:g} s "
            f"({_state['setting']}). Make sure every process of the run has stopped, {todo}"
        ) from err


def average_gradients(net: nn.Module, n: int, extra: torch.Tensor | None = None) -> None:
    """Average gradients over ``n`` processes with one all_reduce of a flat buffer; ``extra``
    (e.g. the step's loss, same dtype as the gradients) is averaged in the same buffer."""
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    tensors = [p.grad for p in params] + ([extra.view(1)] if extra is not None else [])
    flat = torch._utils._flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat /= n
    for t, synced in zip(tensors, torch._utils._unflatten_dense_tensors(flat, tensors)):
        t.copy_(synced)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes in place (a no-op without a process group); NCCL sums a CPU
    tensor through this process's GPU."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            t.copy_(all_reduce_sum(t.cuda()))
        else:
            dist.all_reduce(t)
    return t
