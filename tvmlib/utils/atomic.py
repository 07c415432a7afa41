"""Atomic file writes: write a temporary file in the same folder, then rename it over the target,
so a reader (or a run killed mid-write) never sees a torn file; an error or Ctrl-C mid-write
removes the temporary file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch


def _write_then_rename(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_synced(obj, tmp: Path) -> None:
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    _write_then_rename(path, lambda tmp: _save_synced(obj, tmp))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    _write_then_rename(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(obj, path: str | os.PathLike, indent: int | None = 1) -> None:
    atomic_write_text(json.dumps(obj, indent=indent), path)
