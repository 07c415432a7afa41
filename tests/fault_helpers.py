"""Helpers of the fault tests (``test_resume_faults``, ``test_multi_process``): a training child
with fault hooks, waiting for its fault point, and bit-for-bit comparison of checkpoints.

The child (:data:`CHILD`, run as a script with the train CLI's arguments, also under torchrun)
reads FAULT ("slow_step:n": the n-th loss call waits for the RELEASE file; "hang_save:n": the
checkpoint of step n stops half written), THREADS, MARKER (written with the pid at the fault
point; "{rank}" in it is replaced by the rank) and FAULT_RANKS (under torchrun, the ranks that
fault; default every rank).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch

CHILD = '''
import io, os, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(os.environ["THREADS"]))
fault, n = os.environ["FAULT"].split(":")
rank = os.environ.get("RANK", "0")  # under torchrun: only the ranks of FAULT_RANKS (default all)
if rank not in os.environ.get("FAULT_RANKS", rank).split(","):
    fault = "none"
marker = Path(os.environ["MARKER"].replace("{rank}", rank))
n, release = int(n), Path(os.environ["RELEASE"])
def mark():  # the marker appears holding this process's pid (written, then renamed)
    Path(f"{marker}.tmp").write_text(str(os.getpid()))
    Path(f"{marker}.tmp").rename(marker)
if fault == "slow_step":  # the n-th loss call (step n) waits for the release file
    from tvmlib.core.losses import TVMLoss
    call, calls = TVMLoss.__call__, [0]
    def slow(self, net, batch):
        calls[0] += 1
        if calls[0] == n:
            mark()
            t0 = time.time()
            while not release.exists() and time.time() - t0 < 120:
                time.sleep(0.02)
        return call(self, net, batch)
    TVMLoss.__call__ = slow
if fault == "hang_save":  # the checkpoint of step n stops half written
    real = torch.save
    def hang(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == n:
            buf = io.BytesIO()
            real(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            mark()
            time.sleep(600)
        return real(obj, f, *args, **kwargs)
    torch.save = hang
from tvmlib.apps import cli
from tvmlib.apps.train import main
cli.run(main, sys.argv[1:])
'''


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 240) -> int:
    """Wait until the child writes ``marker`` (it exits or 240 s pass: fail); its pid."""
    t0 = time.time()
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the child exited ({proc.returncode}) before the fault point:\n"
                        f"{out[-2000:]}\n{err[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail("the child never reached the fault point")
        time.sleep(0.05)
    return int(marker.read_text())


def drop_seconds(obj):
    """``obj`` without wall-clock seconds and checksums (they differ between equal runs)."""
    if isinstance(obj, dict):
        return {k: drop_seconds(v) for k, v in obj.items()
                if k not in ("seconds", "train_seconds", "timings", "sha256")}
    if isinstance(obj, (list, tuple)):
        return [drop_seconds(v) for v in obj]
    return obj


def assert_identical(a, b, where: str = "checkpoint") -> None:
    """Every tensor equal bit for bit, every other value equal (wall-clock seconds aside)."""
    a, b = drop_seconds(a), drop_seconds(b)
    if isinstance(a, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)
