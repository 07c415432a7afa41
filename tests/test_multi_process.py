"""Two processes under ``torchrun`` (gloo, on a CPU), through the real command lines: one
process's run against two, a rank killed mid-step, a rank that hangs, resuming with two
processes, the evaluation path, the scaling benchmark, and the flags torchrun passes on.

Each run is ``torchrun --standalone --nproc_per_node=2`` with per-rank logs (``--log-dir``), so
every rank's stderr and torchrun's report of its exit code can be read. A fault hook
(``fault_helpers.CHILD``) holds a chosen rank at step 5, so a signal lands exactly there. One
thread per process: the same kernels run in every process, so runs can be compared bit for bit.
In CI this is gloo on a CPU; where GPUs are visible the same runs use NCCL (the README's
"Several GPUs" runs the failure tests so), and ``tvmlib.apps.equivalence`` and
``tvmlib.apps.bench.scaling`` measure the rest on GPUs.
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
import torch
from fault_helpers import CHILD, assert_identical, wait_for

from tvmlib.training.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "toy_tvm_smoke.yaml"
SETTINGS = ["train.steps=8", "train.ckpt_every=3", "train.log_every=2"]  # checkpoints 3, 6, 8
ENV = {"TVMLIB_QUIET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "THREADS": "1"}
EXIT_WITHIN_S = 60  # the survivor (and torchrun) must be done this long after the fault


def _torchrun(args: list[str], logs: Path, **env) -> subprocess.Popen:
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
    proc = _torchrun([str(script), "--config", str(SMOKE), *sets], logs,
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


@pytest.mark.slow
def test_a_killed_rank_stops_the_other_then_two_processes_resume_exactly(tmp_path, reference):
    """Rank 1 is SIGKILLed in step 5 while rank 0 waits in the same step: rank 0 exits with
    code 2 and one line naming its rank, the step, the checkpoint and what to do, within
    EXIT_WITHIN_S; the checkpoint is step 3's; resuming with 2 processes ends bit-identical to
    the uninterrupted 2-process run (weights, optimizer, EMA, target, batch stream, log)."""
    run = tmp_path / "run"
    proc, logs = _train(tmp_path, run, "slow_step:5", ranks="0,1",
                        extra=["train.dist_timeout_s=10"])  # NCCL cannot see a dead peer
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


@pytest.mark.slow
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
                               "complete ("), lines[0]
    cause = lines[0].split("did not complete (")[1].split("): another process")[0]
    assert re.search("timed out|timeout", cause, re.I), cause  # gloo: "Timed out waiting ..."
    assert "did not answer within 3 s (train.dist_timeout_s)" in lines[0]
    assert "exitcode  : 2" in err
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 3


def _evaluate(run: Path, nproc: int, logs: Path) -> dict:
    """``python -m tvmlib.apps.evaluate`` on ``run`` with 1 or 2 processes (one thread each, as
    the same kernels must run: the classifier's features differ in the last bits otherwise):
    its eval.json."""
    args = ["-m", "tvmlib.apps.evaluate", "--run-dir", str(run), "--num-samples", "40",
            "--batch-size", "10", "--steps", "1", "2", "--save-samples", "--device", "cpu"]
    if nproc == 1:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, text=True,
                                env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    else:
        proc = _torchrun(args, logs)
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    return json.loads((run / "eval.json").read_text())["results"]


def _samples(run: Path, k: int, files: list[str]) -> dict[str, np.ndarray]:
    """The saved samples of ``files`` (one per process) in sample-index order."""
    parts = [dict(np.load(run / f)) for f in files]
    out = {key: np.concatenate([p[key] for p in parts]) for key in ("images", "labels", "index")}
    order = np.argsort(out["index"])
    return {key: v[order] for key, v in out.items()}


@pytest.mark.slow
def test_evaluate_with_two_processes_matches_one(tmp_path):
    """The same trained Fashion-MNIST run scored by 1 and by 2 processes (40 samples in batches
    of 10, 1 and 2 steps): identical samples (uint8 images, labels, indices 0..39) and the same
    Frechet distance, bit for bit (``Moments`` adds the feature sums in the same order)."""
    from tvmlib.apps.train import main as train_main

    run = tmp_path / "fs"
    train_main(["--config", str(ROOT / "configs" / "fashion_tvm_smoke.yaml"), "--set",
                "train.steps=1", "--set", f"out_dir={run}"])
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
        assert fd2 == fd1 and fd1 > 0, (k, fd1, fd2)


@pytest.mark.slow
def test_two_processes_are_one_process_with_two_micro_batches(tmp_path):
    """``tvmlib.apps.equivalence`` on the 2D smoke config (global batch 64, 4 steps): 2 gloo
    processes against 1 process with 2 micro-batches, in bf16 and in fp32. The loss of every
    step and the final network, EMA, TVM target and AdamW state are bit-identical (one thread;
    x / 2 + y / 2 and (x + y) / 2 round alike), and the check sees bf16's difference from fp32."""
    from tvmlib.apps.equivalence import main

    out = tmp_path / "eq.json"
    res = main(["--config", str(SMOKE), "--steps", "4", "--no-repeat", "--work",
                str(tmp_path / "work"), "--out", str(out)])
    assert {k: r["status"] for k, r in res["runs"].items()} == dict.fromkeys(
        ["p1_bf16", "p1_fp32", "p2_bf16", "p2_fp32"], "ok")
    runs = res["runs"]
    assert len(runs["p1_bf16"]["loss"]) == 4 and runs["p2_bf16"]["loss"] == runs["p1_bf16"]["loss"]
    assert runs["p2_fp32"]["loss"] == runs["p1_fp32"]["loss"] != runs["p1_bf16"]["loss"]
    assert res["fp32"]["bit_identical"] and res["fp32"]["same_weights"]
    assert res["bf16"]["within_bf16_noise"]
    assert res["bf16"]["pN_vs_p1"]["max"] == 0 < res["bf16"]["bf16_vs_fp32"]["mean"]
    saved = json.loads(out.read_text())
    assert saved["provenance"]["command"].startswith("python -m tvmlib.apps.equivalence")


def test_the_weight_comparison_sees_one_rounding_step():
    """``equivalence.distance``: one element one float32 step away is not equal, and its
    distances are that step."""
    from tvmlib.apps.equivalence import distance

    w = torch.linspace(-1, 1, 10)
    a = {"net": {"w": w}, "ema": {"module": {"w": w}}, "loss": {"target": {"module": {"w": w}}},
         "opt": {"state": {0: {"exp_avg": w, "step": torch.tensor(4.0)}}}}
    b = {**a, "ema": {"module": {"w": w.clone()}}}
    b["ema"]["module"]["w"][3] = torch.nextafter(w[3], torch.tensor(2.0))
    d = distance(b, a)
    assert [g for g, v in d.items() if not v["equal"]] == ["ema"]
    step = float(b["ema"]["module"]["w"][3] - w[3])
    assert step > 0 and d["ema"]["max_abs"] == step and d["net"]["rel_l2"] == 0
    assert d["ema"]["rel_l2"] == pytest.approx(step / float(w.double().norm()))


@pytest.mark.slow
def test_scaling_benchmark_with_one_and_two_processes(tmp_path):
    """``tvmlib.apps.bench.scaling`` at tiny size on a CPU: rows for 1 and 2 processes, the
    all-reduce timed on 2 only, both processes report the same (averaged) loss, the efficiency
    is the per-process throughput ratio, and the CUDA graph is reported unavailable."""
    from tvmlib.apps.bench.scaling import main

    out = tmp_path / "scaling.json"
    res = main(["--device", "cpu", "--model", "DiT-T/2", "--input-size", "8", "--batch", "2",
                "--backends", "math", "--graph", "off", "on", "--steps", "1", "--warmup", "1",
                "--out", str(out)])
    rows = {(r["gpus"], r["graph"]): r for r in res["rows"]}
    one, two = rows[(1, "off")], rows[(2, "off")]
    assert one["status"] == two["status"] == "ok", res["rows"]
    assert rows[(1, "on")]["status"] == "unavailable: a CUDA graph needs a CUDA device"
    assert one["allreduce_ms"] == 0 < two["allreduce_ms"]
    assert two["images_per_s"] == pytest.approx(2 * two["images_per_s_per_gpu"])
    assert two["ranks"][0]["loss"] == two["ranks"][1]["loss"]
    (s,) = res["scaling"]
    assert s["efficiency"] == pytest.approx(two["images_per_s_per_gpu"] /
                                            one["images_per_s_per_gpu"])
    assert s["result"] == ("hit" if s["efficiency"] >= 0.9 else "miss")
    assert json.loads(out.read_text())["results"]["scaling"] == res["scaling"]


@pytest.mark.parametrize("module", ["tvmlib.apps.train", "tvmlib.apps.evaluate",
                                    "tvmlib.apps.latents", "tvmlib.apps.bench.scaling"])
def test_every_flag_passes_through_torchrun(module, monkeypatch):
    """torchrun's own parser takes any abbreviation of its options from the module's arguments
    (``--run`` is ambiguous with its ``--run-path``): each flag of a module run under torchrun
    reaches the module unchanged."""
    import importlib

    from torch.distributed.run import get_args_parser

    from tvmlib.apps import cli

    made = []

    class Spy(cli.Parser):
        def parse_args(self, *args, **kwargs):
            made.append(self)
            raise SystemExit(0)

    monkeypatch.setattr(cli, "Parser", Spy)
    with pytest.raises(SystemExit):
        importlib.import_module(module).main([])
    flags = [a.option_strings[0] for a in made[0]._actions if a.option_strings]
    assert "--debug" in flags and len(flags) > 3
    for flag in flags:
        ns = get_args_parser().parse_args(["--nproc_per_node=2", "-m", module, flag, "x"])
        assert ns.training_script_args == [flag, "x"], flag


def test_a_failed_collective_is_one_line_with_rank_step_cause_and_remedy(monkeypatch):
    """``distributed.collective`` keeps the gist of a backend error (no source location, no
    advice), names the setting of the timeout, and lets out-of-memory errors through as they
    are."""
    from tvmlib.training import distributed as D

    monkeypatch.setattr(D, "_state", {"timeout_s": 7.0, "setting": "--dist-timeout-s",
                                      "failed": False})
    gloo = ("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
            "[127.0.0.1]:39328: Connection reset by peer. This is typically caused by a remote "
            "worker hanging or bugs in the application.\nmore")
    with pytest.raises(D.CollectiveError) as info:
        with D.collective("gradient all-reduce", 5, "runs/x/checkpoint.pt"):
            raise RuntimeError(gloo)
    assert str(info.value) == (
        "rank 0 of 1 in step 5: the gradient all-reduce did not complete (Read error "
        "[127.0.0.1]:39328: Connection reset by peer): another process of this run died or did "
        "not answer within 7 s (--dist-timeout-s). Make sure every process of the run has "
        "stopped, then run the same command again: it resumes from the last checkpoint "
        "(runs/x/checkpoint.pt)")
    assert D._state["failed"]  # shutdown() then leaves the process group alone
    with pytest.raises(torch.OutOfMemoryError):
        with D.collective("gradient all-reduce", 5):
            raise torch.OutOfMemoryError("CUDA out of memory")
