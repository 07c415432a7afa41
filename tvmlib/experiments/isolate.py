"""A run in a fresh process with empty compile caches (``cold_compile: true`` in an experiment).

torch.compile and Triton keep what they compiled in the process (dynamo's graphs, loaded
kernels) and on disk (the inductor and Triton cache folders). In an equal-time comparison a run
made after another with the same network would find its kernels compiled and train longer than
a run that starts cold: one run's compile time would be paid by another. Here each run starts
in a spawned process whose two cache folders are new and empty, so every run pays for its own
compiling, whatever ran before it in this process or on this machine.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

CACHE_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


@contextlib.contextmanager
def empty_caches(name: str) -> Iterator[dict[str, str]]:
    """Point the compile cache variables at new empty folders (removed afterwards) for the
    processes started inside; the previous values are restored on exit."""
    with tempfile.TemporaryDirectory(prefix=f"tvmlib-{name}-") as tmp:
        env = {k: str(Path(tmp) / k.lower()) for k in CACHE_VARS}
        with mock.patch.dict(os.environ, env):
            yield env


def _log(message: str) -> None:
    print(message, flush=True)


def in_fresh_process(fn: Callable, *args, name: str = "run"):
    """``fn(*args, log)`` in a spawned process with empty compile caches (:func:`empty_caches`);
    returns its result. ``fn`` and ``args`` must pickle; the child prints its own log lines."""
    with empty_caches(name):
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(fn, *args, _log).result()
