"""Faults during training through the real command line (``python -m tvmlib.apps.train``), each
with an exact outcome: SIGKILL during a checkpoint write, SIGKILL mid-step then resume, Ctrl-C
(SIGINT) mid-step, and two processes training into one folder.

A child process trains the 2D smoke config; a fault hook (``fault_helpers``) makes one step or
one checkpoint write wait, and says so through a marker file, so the signal lands exactly there.
"Bit-identical" compares every tensor and number of two checkpoints except wall-clock seconds,
against a run of the same config trained without interruption in this process (one thread
everywhere: a tiny MLP gains nothing from more, and the same kernels run in both processes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import CHILD, assert_identical, wait_for

from tvmlib.experiments.runner import train_run
from tvmlib.training.checkpoint import read_checkpoint
from tvmlib.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "toy_tvm_smoke.yaml"
SETTINGS = ["train.steps=8", "train.ckpt_every=3", "train.log_every=2"]  # checkpoints 3, 6, 8
QUIET = dict(log=lambda msg: None)
pytestmark = pytest.mark.usefixtures("one_thread")

def _start(tmp_path: Path, run: Path, fault: str, extra: list[str] = ()) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "THREADS": "1", "FAULT": fault,
           "MARKER": str(tmp_path / "marker"), "RELEASE": str(tmp_path / "release"),
           "TVMLIB_QUIET": "1", "PYTHONPATH": str(ROOT)}
    sets = [a for s in [f"out_dir={run}", *SETTINGS, *extra] for a in ("--set", s)]
    return subprocess.Popen([sys.executable, str(script), "--config", str(SMOKE), *sets],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _resume(run: Path):
    return train_run(load_config(SMOKE, [f"out_dir={run}", *SETTINGS]), **QUIET)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread) -> dict:
    """The 8-step run trained without interruption."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert _resume(run).step == 8
    return read_checkpoint(run / "checkpoint.pt")


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, reference):
    """Killed while writing step 6's checkpoint: checkpoint.pt is still step 3's (verified by
    its sha256), the torn temporary file is never read and is removed by the next run, and the
    resumed run ends bit-identical to the uninterrupted one."""
    run = tmp_path / "run"
    proc = _start(tmp_path, run, "hang_save:6")
    wait_for(tmp_path / "marker", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    torn = list(run.glob("checkpoint.pt.*.tmp"))
    assert len(torn) == 1 and torn[0].stat().st_size > 0
    with pytest.raises(RuntimeError, match="could not read the checkpoint"):
        read_checkpoint(torn[0])
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 3
    assert _resume(run).step == 8
    assert not list(run.glob("checkpoint.pt.*.tmp"))
    assert_identical(read_checkpoint(run / "checkpoint.pt"), reference)


def test_sigkill_mid_step_then_resume_is_bit_identical(tmp_path, reference):
    """Killed in step 5: the run resumes from step 3 and ends bit-identical, its log rows
    included (the row of step 4 averages steps 3 and 4, as in the uninterrupted run)."""
    run = tmp_path / "run"
    proc = _start(tmp_path, run, "slow_step:5")
    wait_for(tmp_path / "marker", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    at_kill = read_checkpoint(run / "checkpoint.pt")
    assert at_kill["step"] == 3 and at_kill["log_window"]["n"] == 1
    state = _resume(run)
    assert [r["step"] for r in state.history] == [2, 4, 6, 8]
    assert_identical(read_checkpoint(run / "checkpoint.pt"), reference)


def test_sigint_mid_step_checkpoints_at_the_step_boundary(tmp_path, reference):
    """Ctrl-C during step 5 lets step 5 finish, writes its checkpoint (not the last periodic
    one, step 3), exits with 130; the resumed run ends bit-identical."""
    run = tmp_path / "run"
    proc = _start(tmp_path, run, "slow_step:5")
    wait_for(tmp_path / "marker", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the signal lands while step 5 waits
    (tmp_path / "release").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "checkpoint at step 5 written" in out
    assert "Traceback" not in err
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 5
    assert _resume(run).step == 8
    assert_identical(read_checkpoint(run / "checkpoint.pt"), reference)


def test_two_writers_on_one_folder(tmp_path, reference):
    """While a run trains, a second `train` into its folder fails at once with one line naming
    the holder's pid (exit code 2) and writes nothing, not even its config.yaml; the first run
    ends bit-identical to the uninterrupted one."""
    run = tmp_path / "run"
    first = _start(tmp_path, run, "slow_step:2")
    wait_for(tmp_path / "marker", first)
    config_before = (run / "config.yaml").read_bytes()
    second = subprocess.run(
        [sys.executable, "-m", "tvmlib.apps.train", "--config", str(SMOKE), "--set",
         f"out_dir={run}", *[a for s in SETTINGS for a in ("--set", s)], "--set",
         "train.lr=0.5"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TVMLIB_QUIET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    (tmp_path / "release").touch()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the run folder of"), second.stderr
    assert f"in use by another process (pid {first.pid}" in lines[0]
    assert (run / "config.yaml").read_bytes() == config_before
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    assert_identical(read_checkpoint(run / "checkpoint.pt"), reference)
