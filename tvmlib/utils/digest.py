"""A sha256 of nested state (dicts, lists, tuples, tensors, numbers, strings), computed the same
way before ``torch.save`` and after ``torch.load``: a checkpoint carries the digest of what was
saved, and a reader that recomputes it sees any changed byte of any tensor."""

from __future__ import annotations

import hashlib

import torch


def _feed(h, obj) -> None:
    h.update(type(obj).__name__.encode())
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes, without a copy
    elif isinstance(obj, dict):
        for key, value in obj.items():  # insertion order survives a save / load
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(str(len(obj)).encode())
        for item in obj:
            _feed(h, item)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype,
                                         torch.device, torch.Size)):
        h.update(repr(obj).encode())
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__}: checkpoints hold tensors, "
                        "numbers, strings, lists and dicts only")


def state_digest(obj) -> str:
    """The sha256 (hex) of ``obj``'s structure and contents, tensors byte for byte."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()
