"""CUDA helpers: graph-capture detection and synchronised wall-clock timing."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


def capturing() -> bool:
    """True while a CUDA graph is being captured on the current stream (skip host syncs then)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class GpuClock:
    """Seconds of wall time, CUDA-synchronised at each reading; ``pause()`` excludes a block
    (evaluation inside a training run, say)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device, self.start, self.excluded = torch.device(device), None, 0.0

    def now(self, sync: bool = True) -> float:
        if sync:
            synchronize(self.device)
        return time.perf_counter()

    def begin(self) -> GpuClock:
        self.start, self.excluded = self.now(), 0.0
        return self

    def seconds(self, sync: bool = True) -> float:
        """Seconds since :meth:`begin`, less the paused blocks; ``sync=False`` reads the host's
        clock without waiting for the device (work still queued is not counted)."""
        return self.now(sync) - self.start - self.excluded

    @contextmanager
    def pause(self):
        """Exclude the block; yields a function that returns the seconds it took (once done)."""
        t0, took = self.now(), [0.0]
        try:
            yield lambda: took[0]
        finally:
            took[0] = self.now() - t0
            self.excluded += took[0]
