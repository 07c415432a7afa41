"""Atomic file writes: write a temporary file in the same folder, then rename it over the target,
so a reader (or a run killed mid-write) never sees a torn file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    path = Path(path)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(obj, path: str | os.PathLike, indent: int | None = 1) -> None:
    atomic_write_text(json.dumps(obj, indent=indent), path)
