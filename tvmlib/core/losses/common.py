"""Helpers shared by the losses: batch unpacking and label dropout."""

from __future__ import annotations

import torch
from torch import Tensor


def unpack_batch(batch) -> tuple[Tensor, Tensor | None]:
    """A batch is ``x0`` or ``(x0, y)`` with y (B,) integer labels or None."""
    if torch.is_tensor(batch):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"a batch must be x0 or (x0, y), got {type(batch).__name__}")


def drop_labels(y: Tensor | None, p: float, null_class: int) -> Tensor | None:
    """Replace each label by the null class with probability p (classifier-free guidance)."""
    if y is None or p <= 0:
        return y
    drop = torch.rand(y.shape, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


def at_least_fp32(x: Tensor) -> Tensor:
    """Upcast bf16/fp16 to fp32 for loss arithmetic; fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
