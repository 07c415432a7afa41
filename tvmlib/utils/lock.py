"""An exclusive lock on a file, held while a run trains into its folder: a second process that
tries to train there fails at once, naming the holder's pid, instead of interleaving its
checkpoints with the first one's.

The lock is ``fcntl.flock`` on ``<path>``, which also records the holder's pid. The kernel drops it
when the holder exits, however it exits (SIGKILL included), so a stale lock file never blocks a
later run. Within one process the lock is re-entrant (the runner and the loop both take it).
POSIX only: where ``fcntl`` does not exist the lock is not taken.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_HELD: dict[str, list[int]] = {}  # resolved path -> [file descriptor, depth]


class LockedError(RuntimeError):
    """Another process holds the lock."""


def _acquire(path: Path, what: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LockedError(f"{what} is in use by another process (pid {holder}, lock file "
                          f"{path}); wait for it to finish or stop it, or use another folder"
                          ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block; raise
    :class:`LockedError` naming ``what`` (default: the folder) if another process holds it."""
    path = Path(path)
    key = str(path.resolve())
    if fcntl is None:
        yield
        return
    if key not in _HELD:
        path.parent.mkdir(parents=True, exist_ok=True)
        _HELD[key] = [_acquire(path, what or str(path.parent)), 0]
    _HELD[key][1] += 1
    try:
        yield
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            fd = _HELD.pop(key)[0]
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
