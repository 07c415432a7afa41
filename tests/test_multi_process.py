"""Two processes under ``torchrun`` (gloo, on a CPU), through the real command lines: a rank
killed mid-step, a rank that hangs, resuming with two processes, and the evaluation path.

Each run is ``torchrun --standalone --nproc_per_node=2`` with per-rank logs (``--log-dir``), so
every rank's stderr and torchrun's report of its exit code can be read. A fault hook
(``fault_helpers.CHILD``) holds a chosen rank at step 5, so a signal lands exactly there. One
thread per process: the same kernels run in every process, so runs can be compared bit for bit.
NCCL on GPUs is not exercised here (no GPU in CI); ``tvmlib.apps.multi_gpu`` does that.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import CHILD, assert_identical, wait_for

from tvmlib.training.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "toy_tvm_smoke.yaml"
SETTINGS = ["train.steps=8", "train.ckpt_every=3", "train.log_every=2"]  # checkpoints 3, 6, 8
ENV = {"TVMLIB_QUIET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "THREADS": "1"}
EXIT_WITHIN_S = 60  # the survivor (and torchrun) must be done this long after the fault
pytestmark = pytest.mark.slow


def _torchrun(tmp_path: Path, args: list[str], logs: Path, **env) -> subprocess.Popen:
    """``torchrun`` with 2 processes running ``args`` (a script or -m module and its arguments),
    each rank's output in ``logs``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--log-dir", str(logs), "--redirects", "3", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **ENV, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _train(tmp_path: Path, run: Path, fault: str = "none:0", ranks: str = "",
           extra: list[str] = ()) -> tuple[subprocess.Popen, Path]:
    """Start 2-process training of the 2D smoke config into ``run`` with a fault hook."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    sets = [a for s in [f"out_dir={run}", *SETTINGS, *extra] for a in ("--set", s)]
    logs = tmp_path / f"logs_{run.name}"
    proc = _torchrun(tmp_path, [str(script), "--config", str(SMOKE), *sets], logs,
                     FAULT=fault, FAULT_RANKS=ranks, MARKER=str(tmp_path / "marker{rank}"),
                     RELEASE=str(tmp_path / "release"))
    return proc, logs


def _rank_stderr(logs: Path, rank: int) -> str:
    paths = list(logs.glob(f"*/attempt_0/{rank}/stderr.log"))
    return paths[0].read_text() if paths else ""


def _errors(logs: Path, rank: int) -> list[str]:
    """The ``error:`` lines of a rank's stderr; there must be no traceback (torch's own warnings,
    e.g. that torch.jit.script is deprecated, may stand beside them)."""
    text = _rank_stderr(logs, rank)
    assert "Traceback" not in text, text[-3000:]
    return [line for line in text.splitlines() if line.startswith("error:")]


def _workers(proc: subprocess.Popen) -> list[int]:
    """The pids of torchrun's live worker processes (Linux /proc)."""
    path = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not exit within {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")


def _train_to_end(tmp_path: Path, run: Path) -> dict:
    proc, logs = _train(tmp_path, run)
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:] + _rank_stderr(logs, 0)[-3000:]
    return read_checkpoint(run / "checkpoint.pt")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The 8-step run trained by 2 processes without interruption."""
    tmp = tmp_path_factory.mktemp("reference")
    ckpt = _train_to_end(tmp, tmp / "run")
    assert ckpt["step"] == 8
    return ckpt


def test_a_killed_rank_stops_the_other_then_two_processes_resume_exactly(tmp_path, reference):
    """Rank 1 is SIGKILLed in step 5 while rank 0 waits in the same step: rank 0 exits with
    code 2 and one line naming its rank, the step, the checkpoint and what to do, within
    EXIT_WITHIN_S; the checkpoint is step 3's; resuming with 2 processes ends bit-identical to
    the uninterrupted 2-process run (weights, optimizer, EMA, target, batch stream, log)."""
    run = tmp_path / "run"
    proc, logs = _train(tmp_path, run, "slow_step:5", ranks="0,1")
    wait_for(tmp_path / "marker0", proc)
    victim = wait_for(tmp_path / "marker1", proc)
    os.kill(victim, signal.SIGKILL)
    t0 = time.time()
    (tmp_path / "release").touch()  # rank 0 goes on to step 5's all-reduce
    out, err = _finish(proc, timeout=EXIT_WITHIN_S)
    assert time.time() - t0 < EXIT_WITHIN_S and proc.returncode != 0
    lines = _errors(logs, 0)
    assert len(lines) == 1, _rank_stderr(logs, 0)
    assert lines[0].startswith("error: rank 0 of 2 in step 5: the gradient all-reduce did not "
                               "complete ("), lines[0]
    assert lines[0].endswith(f"run the same command again: it resumes from the last "
                             f"checkpoint ({run / 'checkpoint.pt'})"), lines[0]
    # torchrun's report: rank 1 killed; rank 0 exited with 2, or, if torchrun's SIGTERM (sent
    # to the survivors once a worker died) came while it was exiting, with -15
    assert re.search(r"rank +: 1 .*\n +exitcode +: -9 ", err), err
    assert re.search(r"rank +: 0 .*\n +exitcode +: (2|-15) ", err), err
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 3
    (tmp_path / "release").unlink()
    for marker in tmp_path.glob("marker*"):
        marker.unlink()
    assert_identical(_train_to_end(tmp_path, run), reference)


def test_a_rank_that_hangs_fails_the_other_after_the_timeout(tmp_path):
    """Rank 1 hangs in step 5 (alive, never reaching the all-reduce): with
    train.dist_timeout_s = 3, rank 0's all-reduce times out and rank 0 exits with code 2 and one
    line naming the timeout, well within EXIT_WITHIN_S (gloo raises; torchrun alone would wait
    for ever, since no process died)."""
    run = tmp_path / "run"
    proc, logs = _train(tmp_path, run, "slow_step:5", ranks="1",
                        extra=["train.dist_timeout_s=3"])
    victim = wait_for(tmp_path / "marker1", proc)
    t0 = time.time()
    while time.time() - t0 < EXIT_WITHIN_S and len(_workers(proc)) == 2:
        time.sleep(0.2)  # until torchrun has seen rank 0 exit
    assert _workers(proc) == [victim], "rank 0 did not exit"
    os.kill(victim, signal.SIGKILL)  # torchrun would wait 30 s for the hung rank to stop
    out, err = _finish(proc, timeout=EXIT_WITHIN_S)
    lines = _errors(logs, 0)
    assert len(lines) == 1, (_rank_stderr(logs, 0), err[-3000:])
    assert lines[0].startswith("error: rank 0 of 2 in step 5: the gradient all-reduce did not "
                               "complete (Timed out"), lines[0]
    assert "did not answer within 3 s (train.dist_timeout_s)" in lines[0]
    assert "exitcode  : 2" in err
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 3


def _evaluate(run: Path, nproc: int, logs: Path) -> dict:
    """``python -m tvmlib.apps.evaluate`` on ``run`` with 1 or 2 processes: its eval.json."""
    args = ["-m", "tvmlib.apps.evaluate", "--run-dir", str(run), "--num-samples", "40",
            "--batch-size", "10", "--steps", "1", "2", "--save-samples", "--device", "cpu"]
    if nproc == 1:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, text=True,
                                env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    else:
        proc = _torchrun(logs.parent, args, logs)
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    return json.loads((run / "eval.json").read_text())["results"]


def _samples(run: Path, k: int, files: list[str]) -> dict[str, np.ndarray]:
    """The saved samples of ``files`` (one per process) in sample-index order."""
    parts = [dict(np.load(run / f)) for f in files]
    out = {key: np.concatenate([p[key] for p in parts]) for key in ("images", "labels", "index")}
    order = np.argsort(out["index"])
    return {key: v[order] for key, v in out.items()}


def test_evaluate_with_two_processes_matches_one(tmp_path):
    """The same trained Fashion-MNIST run scored by 1 and by 2 processes (40 samples in batches
    of 10, 1 and 2 steps): identical samples (uint8 images, labels, indices 0..39) and the same
    Frechet distance up to float64 rounding (the feature sums are added in another order)."""
    from tvmlib.apps.train import main as train_main

    run = tmp_path / "fs"
    train_main(["--config", str(ROOT / "configs" / "fashion_tvm_smoke.yaml"), "--set",
                "train.steps=2", "--set", f"out_dir={run}"])
    one = _evaluate(run, 1, tmp_path / "logs1")
    two = _evaluate(run, 2, tmp_path / "logs2")
    assert (one["processes"], two["processes"]) == (1, 2)
    for k in (1, 2):
        a = _samples(run, k, [f"samples_{k}step.npz"])
        b = _samples(run, k, [f"samples_{k}step_rank{r}.npz" for r in (0, 1)])
        assert a["images"].shape == (40, 1, 32, 32) and list(a["index"]) == list(range(40))
        for key in ("images", "labels", "index"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{k} step(s): {key}")
        fd1, fd2 = one["steps"][str(k)]["fd"], two["steps"][str(k)]["fd"]
        assert fd2 == pytest.approx(fd1, rel=1e-9, abs=0), (k, fd1, fd2)
