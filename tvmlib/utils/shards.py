"""Sharded tensors on disk, written atomically and reused only by a run with the same settings:
the teacher-trajectory cache of CMT mid-training (``tvmlib.core.losses.cmt``)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from tvmlib.utils.atomic import atomic_save, atomic_write_text


def module_fingerprint(net: nn.Module) -> str:
    """sha256 (first 16 hex digits) of a module's state_dict: names, shapes, dtypes and values."""
    h = hashlib.sha256()
    for name, value in net.state_dict().items():
        v = value.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(v.shape)}:{v.dtype}".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


class TrajectoryCache:
    """A folder of trajectory shards, written atomically and reused when present.

    Layout: ``meta.json`` (how the trajectories were made; a cache is only reused by a run with
    the same meta, otherwise :class:`ValueError` names the differing keys) and shards
    ``shard_<index>_n<count>.pt``, each {"trajectory": (M+1, n, ...), "times": (M+1,),
    "y": (n,) or None}. A shard appears under its final name only once fully written
    (``atomic_save``), so a run killed mid-write leaves no torn shard. Tensors are
    stored as given (exact round trip).
    """

    SHARD = re.compile(r"shard_(\d{6})_n(\d+)\.pt")

    def __init__(self, folder: str | Path, meta: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta = json.loads(json.dumps(meta))  # JSON-normalised (tuples -> lists)
        meta_path = self.folder / "meta.json"
        if meta_path.exists():
            stored = json.loads(meta_path.read_text())
            diff = sorted(k for k in set(stored) | set(self.meta)
                          if stored.get(k) != self.meta.get(k))
            if diff:
                detail = "; ".join(f"{k}: cache {stored.get(k)!r} vs run {self.meta.get(k)!r}"
                                   for k in diff)
                raise ValueError(f"trajectory cache {self.folder} was made with different "
                                 f"settings ({detail}). Use another folder or delete this one.")
        else:
            atomic_write_text(json.dumps(self.meta, indent=1, sort_keys=True), meta_path)

    def shards(self) -> list[tuple[Path, int]]:
        """Complete shards in write order: (path, number of trajectories)."""
        found = sorted((int(m[1]), p, int(m[2])) for p in self.folder.iterdir()
                       if (m := self.SHARD.fullmatch(p.name)))
        return [(p, n) for _, p, n in found]

    def __len__(self) -> int:
        """Number of stored trajectories."""
        return sum(n for _, n in self.shards())

    def append(self, trajectory: Tensor, times: Tensor, y: Tensor | None) -> Path:
        """Store one shard: trajectory (M+1, n, ...), times (M+1,), labels (n,) or None."""
        n = trajectory.shape[1]
        if y is not None and y.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
        shards = self.shards()
        index = int(self.SHARD.fullmatch(shards[-1][0].name).group(1)) + 1 if shards else 0
        path = self.folder / f"shard_{index:06d}_n{n}.pt"
        atomic_save({"trajectory": trajectory.detach().cpu(), "times": times.detach().cpu(),
                     "y": None if y is None else y.detach().cpu()}, path)
        return path

    def load(self, limit: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """All (or the first ``limit``) stored trajectories: (M+1, N, ...), times, y (N,) or
        None, on the CPU."""
        shards = self.shards()
        if not shards:
            raise FileNotFoundError(f"trajectory cache {self.folder} holds no shards")
        parts, times, labels = [], None, []
        total = 0
        for path, _ in shards:
            d = torch.load(path, map_location="cpu", weights_only=True)
            if times is not None and not torch.equal(times, d["times"]):
                raise ValueError(f"{path} has a different time grid from the shards before it")
            times = d["times"]
            parts.append(d["trajectory"])
            labels.append(d["y"])
            total += d["trajectory"].shape[1]
            if limit is not None and total >= limit:
                break
        traj = torch.cat(parts, dim=1)
        y = None if labels[0] is None else torch.cat(labels)
        if limit is not None:
            traj, y = traj[:, :limit], (None if y is None else y[:limit])
        return traj, times, y

