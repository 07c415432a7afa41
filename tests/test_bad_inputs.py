"""What a hostile or careless user meets (issue 16): each probe gets a clear error naming what was
wrong and where, or leaves the run bit-identical. Faults during training (signals, two writers)
are in ``tests/test_resume_faults.py``.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tvmlib.apps import cli
from tvmlib.core.flowmap import displacement, displacement_and_dfds, flow_map, velocity
from tvmlib.core.losses import FMLoss, TVMLoss
from tvmlib.core.solvers import sample
from tvmlib.data import ToySource
from tvmlib.evaluation import pretrained as P
from tvmlib.evaluation.evaluate import evaluate_run
from tvmlib.experiments.runner import train_run
from tvmlib.nn import MLP2D, DiT
from tvmlib.training.build import load_run
from tvmlib.training.checkpoint import read_checkpoint
from tvmlib.training.config import ConfigError, config_from_dict, config_to_dict, load_config
from tvmlib.training.loop import TrainConfig, train
from tvmlib.training.weights import extract_state_dict, sha256_file
from tvmlib.utils.params import check_params, notebook_config
from tvmlib.utils.paths import use_scratch_figures
from tvmlib.utils.provenance import write_results

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "toy_tvm_smoke.yaml"
QUIET = dict(log=lambda msg: None)
pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_run(folder: Path, steps: int = 2, *extra: str):
    return train_run(load_config(SMOKE, [f"out_dir={folder}", f"train.steps={steps}", *extra]),
                     **QUIET)


def _image_run_folder(folder: Path, **eval_keys) -> Path:
    """A run folder holding only config.yaml (Fashion-MNIST): enough for the checks that come
    before any checkpoint is read."""
    cfg = config_from_dict({"name": "img", "model": {"preset": "DiT-T/8"},
                            "eval": eval_keys})
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    return folder


# ---- no code runs from data ------------------------------------------------------------------

class _OpensAFile:
    """Unpickling this calls open(path, "w"): code run by loading a file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_holding_a_pickled_object_is_refused_everywhere(tmp_path):
    run = tmp_path / "run"
    _toy_run(run)
    marker = tmp_path / "code_ran"
    ckpt = read_checkpoint(run / "checkpoint.pt")
    ckpt["history"].append(_OpensAFile(marker))
    torch.save(ckpt, run / "checkpoint.pt")
    refused = r"refused to load .*checkpoint\.pt: it holds a Python object \(io\.open\)"
    for load in (lambda: read_checkpoint(run / "checkpoint.pt"), lambda: _toy_run(run, 4),
                 lambda: load_run(run), lambda: extract_state_dict(run / "checkpoint.pt")):
        with pytest.raises(RuntimeError, match=refused):
            load()
    assert not marker.exists()
    torch.load(run / "checkpoint.pt", weights_only=False)  # the file really runs code
    assert marker.exists()


def test_every_torch_load_is_weights_only():
    """Every torch.load in the package and the notebooks passes weights_only=True."""
    calls = []
    for path in (ROOT / "tvmlib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls.append((path.name, {k.arg: ast.unparse(k.value) for k in node.keywords}))
    assert calls and all(kw.get("weights_only") == "True" for _, kw in calls), calls
    for nb in (ROOT / "notebooks").glob("[0-9]*.ipynb"):
        for line in nb.read_text().splitlines():
            assert "torch.load(" not in line or "weights_only=True" in line, (nb.name, line)


def test_evaluate_never_imports_a_feature_function_named_by_the_run_folder(tmp_path):
    marker, evil = tmp_path / "code_ran", tmp_path / "evil.py"
    evil.write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
                    "def f(x):\n    return x\n")
    run = _image_run_folder(tmp_path / "run", metric="features_fd", features=f"{evil}:f")
    with pytest.raises(ValueError, match="needs --features MODULE:FUNCTION"):
        evaluate_run(run, device="cpu")
    assert not marker.exists()
    # named by the caller (the --features flag), the same file is imported
    with pytest.raises(ValueError, match="needs --ref-stats PATH"):
        evaluate_run(run, {"features": f"{evil}:f"}, device="cpu")
    assert marker.exists()


# ---- nothing destroyed without being asked ---------------------------------------------------

def test_a_longer_run_is_never_replaced_without_fresh(tmp_path):
    _toy_run(tmp_path, 4)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    assert _toy_run(tmp_path, 2).step == 4  # resumed: already past 2 steps
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    fresh = train_run(load_config(SMOKE, [f"out_dir={tmp_path}", "train.steps=2"]),
                      resume=False, **QUIET)  # asked for explicitly: trained afresh
    assert fresh.step == 2 and read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


@pytest.mark.notebook
@pytest.mark.parametrize("params,message", [
    ({"num_gpus": 0}, "num_gpus must be >= 1, got 0"),
    ({"scale": "smoke", "stage": "train"}, "holds a checkpoint of a run with other settings"),
])
def test_notebook_06_checks_parameters_and_never_replaces_a_run(tmp_path, monkeypatch, params,
                                                                message):
    """Checked in the cell after ``parameters`` with the command line's message; the smoke
    scale does not imply ``fresh``: a trained run given as ``out_dir`` is refused, unchanged."""
    papermill = pytest.importorskip("papermill")
    monkeypatch.delenv("TVMLIB_SCALE", raising=False)
    run = tmp_path / "run"
    _toy_run(run, 4)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(papermill.PapermillExecutionError, match=re.escape(message)):
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "06_imagenet_tvm.ipynb"), str(tmp_path / "out.ipynb"),
            parameters={"config": str(SMOKE), "out_dir": str(run), **params},
            kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_smoke_figures_go_to_a_scratch_folder_unless_told(tmp_path, monkeypatch):
    monkeypatch.delenv("TVMLIB_FIGURES")
    assert use_scratch_figures("default") == ROOT / "figures"
    assert "TVMLIB_FIGURES" not in os.environ
    scratch = ROOT / "runs" / "smoke" / "figures"
    assert notebook_config({"scale": "smoke", "n": 3}, {"n": 1}) == {"scale": "smoke", "n": 3}
    assert Path(os.environ["TVMLIB_FIGURES"]) == scratch
    assert Path(write_results("x_test.json", {}, {})).parent == scratch
    (scratch / "x_test.json").unlink()
    monkeypatch.setenv("TVMLIB_FIGURES", str(tmp_path))  # told otherwise
    assert use_scratch_figures("smoke") == tmp_path


def test_cli_negative_steps_with_fresh_is_one_line_and_keeps_the_run(tmp_path):
    _toy_run(tmp_path, 2)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    out = subprocess.run([sys.executable, "-m", "tvmlib.apps.train", "--config", str(SMOKE),
                          "--set", f"out_dir={tmp_path}", "--set", "train.steps=-3", "--fresh"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr == "error: train.steps must be >= 1, got -3\n"
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


class _NanGradient(torch.autograd.Function):
    """Identity forward (a finite loss), NaN backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * math.nan


@pytest.mark.parametrize("grad_clip", [1.0, None])
def test_a_finite_loss_with_a_nan_gradient_stops_before_the_step(tmp_path, grad_clip):
    calls = {"n": 0}

    def loss(net, batch):
        calls["n"] += 1
        out = net(batch[0], torch.full((len(batch[0]),), 0.5)).square().mean()
        return (_NanGradient.apply(out) if calls["n"] == 3 else out), {}

    torch.manual_seed(0)
    net = MLP2D(hidden=8, depth=1)
    cfg = TrainConfig(steps=5, ckpt_every=1, grad_clip=grad_clip,
                      ckpt_path=str(tmp_path / "c.pt"))
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm \(loss [0-9.]+\) "
                                                 "at step 3"):
        train(net, loss, ToySource("moons", 8, labels=False), cfg)
    kept = read_checkpoint(tmp_path / "c.pt")
    assert kept["step"] == 2
    for k, v in net.state_dict().items():  # the step was not applied
        assert torch.isfinite(v).all() and torch.equal(v, kept["net"][k]), k


# ---- every value range-checked ---------------------------------------------------------------

@pytest.mark.parametrize("values,message", [
    ({"train": {"steps": -3}}, "train.steps must be >= 1, got -3"),
    ({"train": {"steps": 0}}, "train.steps must be >= 1, got 0"),
    ({"train": {"steps": 1.5}}, "train.steps must be an integer, got 1.5"),
    ({"train": {"global_batch": 0}}, "train.global_batch must be >= 1, got 0"),
    ({"train": {"log_every": 0}}, "train.log_every must be >= 1, got 0"),
    ({"train": {"ckpt_every": -1}}, "train.ckpt_every must be >= 1 (or 0: only at the end"),
    ({"train": {"lr": 0}}, "train.lr must be > 0, got 0"),
    ({"train": {"lr": float("nan")}}, "train.lr must be a finite number, got nan"),
    ({"train": {"lr": "fast"}}, "train.lr must be a number, got 'fast'"),
    ({"train": {"ema_decay": 1.0}}, "train.ema_decay must be < 1, got 1.0"),
    ({"train": {"grad_clip": -1.0}}, "train.grad_clip must be > 0 or null (no clipping), got -1"),
    ({"train": {"betas": [0.9]}}, "train.betas must be two numbers in [0, 1), got [0.9]"),
    ({"train": {"betas": 0.9}}, "train.betas must be a list, got 0.9"),
    ({"train": {"cuda_graph": 3}}, "train.cuda_graph must be true or false, got 3"),
    ({"model": {"lipschitz": {"rmsnorm": "maybe"}}},
     "model.lipschitz.rmsnorm must be true or false, got 'maybe'"),
    ({"model": {"presett": "DiT-S/2"}}, "model.presett: unknown key; valid keys: attn_backend"),
    ({"model": {"preset": "DiT-Q/2"}}, "model.preset must be one of MLP2D, DiT, DiT-T/2"),
    ({"data": 3}, "data must be a mapping of DataConfig keys, got 3"),
    ({"data": {"dataset": "toy:moonz"}}, "data.dataset must be one of mnist, fashion-mnist"),
    ({"loss": {"name": "sm"}}, "loss.name must be one of fm, tvm, meanflow, cmt, got 'sm'"),
    ({"loss": {"cfg_scale": True}}, "loss.cfg_scale must be a finite number, got True"),
    ({"loss": {"label_dropout": 1.5}}, "loss.label_dropout must be <= 1, got 1.5"),
    ({"eval": {"batch_size": 0}}, "eval.batch_size must be >= 1, got 0"),
    ({"eval": {"features": "../x"}}, "eval.features must be module:function or file.py:"),
    ({"name": "../../x"}, "name must be a plain name (letters, digits, _ . + -; no / or ..)"),
    ({"device": "gpu"}, "device must be auto, cpu, mps, cuda or cuda:N, got 'gpu'"),
    ({"bogus": 1}, "bogus: unknown key"),
])
def test_config_values_are_checked_and_the_error_names_the_key(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(values)


@pytest.mark.parametrize("field,value,message", [
    ("grad_clip", -1.0, "TrainConfig.grad_clip must be > 0 or None (no clipping), got -1.0"),
    ("grad_clip", 0, "TrainConfig.grad_clip must be > 0 or None"),
    ("steps", 0, "TrainConfig.steps must be >= 1, got 0"),
    ("ckpt_every", -1, "TrainConfig.ckpt_every must be >= 0, got -1"),
    ("lr", 0.0, "TrainConfig.lr must be > 0, got 0.0"),
    ("ema_decay", 1.0, "TrainConfig.ema_decay must be < 1, got 1.0"),
    ("ema_warmup", "maybe", "TrainConfig.ema_warmup must be true or false, got 'maybe'"),
])
def test_the_loops_own_config_is_checked_before_any_step(field, value, message):
    net = MLP2D(hidden=8, depth=1)
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(net, FMLoss(), ToySource("moons", 8, labels=False),
              TrainConfig(**{"steps": 2, field: value}))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_an_empty_config_file_is_an_error(tmp_path):
    for text in ("", "# nothing\n", "[]\n"):
        (tmp_path / "empty.yaml").write_text(text)
        with pytest.raises(ConfigError, match="empty.yaml is empty or not a mapping"):
            load_config(tmp_path / "empty.yaml")


def test_override_syntax_errors_name_the_override():
    for bad, message in (("=5", "override key '' must look like section.key"),
                         ("train.steps=[1", "train.steps: cannot parse the value '[1'"),
                         ("train", "override 'train' must look like section.key=value"),
                         ("train.betas=[0.9]", "train.betas must be two numbers in [0, 1)")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(SMOKE, [bad])


def test_resume_refuses_a_changed_learning_rate_or_loss_saying_which(tmp_path):
    """The run folder's check names old -> new; the loop's own check catches library callers."""
    _toy_run(tmp_path, 2)
    before = {n: (tmp_path / n).read_bytes() for n in ("checkpoint.pt", "config.yaml")}
    for change, named in (("train.lr=0.5", "train.lr 0.001 -> 0.5"),
                          ("loss.name=fm", "loss.name 'tvm' -> 'fm'")):
        with pytest.raises(ValueError, match=re.escape(named) + ".*refusing to resume"):
            _toy_run(tmp_path, 4, change)
    assert before == {n: (tmp_path / n).read_bytes() for n in before}  # config.yaml kept too
    net, ckpt = MLP2D(hidden=8, depth=1), str(tmp_path / "lib.pt")
    train(net, TVMLoss(net), ToySource("moons", 8, labels=False),
          TrainConfig(steps=1, ckpt_path=ckpt))
    for loss, cfg, named in (
            (TVMLoss(net), TrainConfig(steps=2, lr=0.5, ckpt_path=ckpt), "lr 0.001 -> 0.5"),
            (FMLoss(), TrainConfig(steps=2, ckpt_path=ckpt), "loss TVMLoss -> FMLoss")):
        with pytest.raises(ValueError, match=f"refusing to resume .*{re.escape(named)}"):
            train(net, loss, ToySource("moons", 8, labels=False), cfg, resume=True)


def _flip_a_tensor_byte(path: Path) -> None:
    """Flip one bit inside the stored bytes of a tensor (the zip member, not its header)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 8)
    data = bytearray(path.read_bytes())
    off = info.header_offset
    start = off + 30 + int.from_bytes(data[off + 26:off + 28], "little") + \
        int.from_bytes(data[off + 28:off + 30], "little")
    data[start + 3] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_weight_byte_is_refused_on_resume_and_evaluation(tmp_path):
    _toy_run(tmp_path, 2)
    _flip_a_tensor_byte(tmp_path / "checkpoint.pt")
    torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # torch alone does not notice
    corrupt = "checkpoint.pt is corrupt: its contents do not match the sha256"
    for load in (lambda: _toy_run(tmp_path, 4), lambda: load_run(tmp_path),
                 lambda: read_checkpoint(tmp_path / "checkpoint.pt")):
        with pytest.raises(RuntimeError, match=corrupt):
            load()


def test_load_2d_checks_the_files_own_method(tmp_path):
    src = P.checkpoint_path_2d("meanflow", "checkerboard")
    dst = P.checkpoint_path_2d("tvm", "checkerboard", tmp_path)
    shutil.copy(src, dst)
    (tmp_path / P.MANIFEST_2D).write_text(json.dumps({dst.name: {"sha256": sha256_file(dst)}}))
    with pytest.raises(RuntimeError, match="holds 'meanflow' on 'checkerboard'"):
        P.load_2d("tvm", "checkerboard", tmp_path)


def test_a_truncated_manifest_names_the_file(tmp_path):
    text = (P.checkpoint_path_2d("tvm", "checkerboard").parent / P.MANIFEST_2D).read_text()
    (tmp_path / P.MANIFEST_2D).write_text(text[: len(text) // 2])
    with pytest.raises(RuntimeError, match=r"manifest_2d\.json is truncated or corrupt .*"
                                           r"python -m tvmlib\.apps\.checkpoints2d"):
        P.load_2d("tvm", "checkerboard", tmp_path)
    (tmp_path / P.MANIFEST_FASHION).write_text("{")
    with pytest.raises(RuntimeError, match=r"manifest_fashion\.json is truncated"):
        P.load_fashion("tvm_scratch", tmp_path)


# ---- library guards ---------------------------------------------------------------------------

def _mlp(guidance=True):
    torch.manual_seed(0)
    return MLP2D(hidden=8, depth=1, num_classes=3, guidance=guidance)


@pytest.mark.parametrize("w", [0.0, -1.0, math.nan, math.inf])
def test_guidance_must_be_finite_and_positive_everywhere(w):
    net, x, t, s = _mlp(), torch.randn(4, 2), torch.full((4,), 0.8), torch.full((4,), 0.2)
    calls = [lambda: displacement(net, x, t, s, w=w), lambda: flow_map(net, x, t, s, w=w),
             lambda: velocity(net, x, t, w=w), lambda: displacement_and_dfds(net, x, t, s, w=w),
             lambda: sample(net, x, 2, w=w), lambda: sample(net, x, 2, w=torch.full((4,), w))]
    for call in calls:
        with pytest.raises(ValueError, match="guidance scale w must be finite and > 0"):
            call()


@pytest.mark.parametrize("t,s", [(math.nan, 0.2), (0.8, math.nan), (math.inf, 0.2)])
def test_times_must_be_finite_everywhere(t, s):
    net, x = _mlp(), torch.randn(4, 2)
    tt, ss = torch.full((4,), t), torch.full((4,), s)
    bad = "t" if not math.isfinite(t) else "s"
    for call in (lambda: displacement(net, x, tt, ss),
                 lambda: velocity(net, x, tt if bad == "t" else ss)):
        with pytest.raises(ValueError, match="times must be finite; [ts] is (nan|inf) at sample 0"):
            call()
    for call in (lambda: flow_map(net, x, tt, ss), lambda: displacement_and_dfds(net, x, tt, ss)):
        with pytest.raises(ValueError, match="flow maps need finite times 0 <= s <= t <= 1"):
            call()
    displacement(net, x, torch.full((4,), 0.9), torch.full((4,), -0.01))  # s past 0: allowed


def test_labels_must_lie_in_the_classes():
    dit = DiT(input_size=8, in_channels=1, depth=1, hidden_size=32, num_heads=2, patch_size=4,
              num_classes=3)
    x2, x8, t = torch.randn(2, 2), torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    for net, x in ((_mlp(), x2), (dit, x8)):
        net(x, t, t, torch.tensor([0, 3]))  # 3 is the null class
        for y in (torch.tensor([0, 4]), torch.tensor([-1, 0])):
            with pytest.raises(ValueError, match=r"labels y must lie in \[0, 3\]"):
                net(x, t, t, y)
        with pytest.raises(ValueError, match="y must be integer labels"):
            net(x, t, t, torch.tensor([0.0, 1.0]))


def test_first_log_row_after_a_resume_averages_the_same_steps(tmp_path):
    def run(path, interrupt_at=None, resume=False):
        torch.manual_seed(0)
        net = MLP2D(hidden=8, depth=1)

        def stop(state, logs):
            if state.step == interrupt_at:
                raise KeyboardInterrupt

        return train(net, FMLoss(), ToySource("moons", 16, seed=1, labels=False),
                     TrainConfig(steps=6, log_every=4, ckpt_path=str(path), seed=3), resume=resume,
                     callback=stop if interrupt_at else None)

    ref = run(tmp_path / "ref.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut.pt", interrupt_at=2)
    resumed = run(tmp_path / "cut.pt", resume=True)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ref.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == strip
    assert [r["step"] for r in strip] == [4, 6]


# ---- clear errors ---------------------------------------------------------------------------

def test_cli_errors_are_one_line_and_debug_shows_the_traceback(capsys):
    def main(argv):
        raise ValueError("train.steps must be >= 1, got -3\n  (second line)")

    with pytest.raises(SystemExit) as exit_:
        cli.run(main, ["--config", "x.yaml"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: train.steps must be >= 1, got -3 (second line)\n"
    with pytest.raises(ValueError, match="got -3"):
        cli.run(main, ["--debug"])
    with pytest.raises(SystemExit) as exit_:
        cli.run(lambda argv: (_ for _ in ()).throw(KeyboardInterrupt), [])
    assert exit_.value.code == 130


def test_notebook_parameters_get_the_command_lines_messages():
    scales = {"train_steps": 30, "batch_size": 64, "datasets": ["8gaussians"], "lr": 1e-3}
    good = {"train_steps": 30, "batch_size": 64, "datasets": "moons", "lr": 2, "seed": 3,
            "scale": "smoke", "note": object}
    assert check_params(good, scales)["datasets"] == ["moons"]  # one name -> a list
    for key, value, message in (
            ("seed", "abc", "seed must be an integer, got 'abc'"),
            ("seed", -1, "seed must be >= 0, got -1"),
            ("train_steps", 0, "train_steps must be >= 1, got 0"),
            ("batch_size", 1.5, "batch_size must be an integer, got 1.5"),
            ("datasets", [], "datasets must be a non-empty list, got []"),
            ("datasets", [3], "datasets[0] must be a string, got 3"),
            ("lr", -1.0, "lr must be > 0, got -1.0")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_params({**good, key: value}, scales)
    with pytest.raises(ConfigError, match=re.escape("cfg_scale must be > 0, got 0")):
        check_params({"cfg_scale": 0}, {}, cfg_scale="positive")
    with pytest.raises(ConfigError, match=re.escape("stage must be one of prepare, train")):
        check_params({"stage": "trian"}, {}, stage=("prepare", "train"))


def test_evaluate_refuses_a_2d_run_and_a_zero_batch_size(tmp_path):
    (tmp_path / "toy").mkdir()
    shutil.copy(SMOKE, tmp_path / "toy" / "config.yaml")
    with pytest.raises(ValueError, match="run on the 2D toy '8gaussians': evaluate scores image"):
        evaluate_run(tmp_path / "toy", device="cpu")
    run = _image_run_folder(tmp_path / "img")
    with pytest.raises(ConfigError, match=re.escape("eval.batch_size must be >= 1, got 0")):
        evaluate_run(run, {"batch_size": 0}, device="cpu")


def test_paths_stay_in_their_folder(tmp_path):
    run = _image_run_folder(tmp_path / "img")
    with pytest.raises(ConfigError, match=r"--figures must be a plain name .* got '\.\./\.\./x'"):
        evaluate_run(run, figures="../../x", device="cpu")
    with pytest.raises(ConfigError, match="name must be a plain name"):
        load_config(SMOKE, ["name=../../x"])
    for name in ("../x.json", "/tmp/x.json", "a/b.json"):
        with pytest.raises(ConfigError, match="figure name must be a plain name"):
            write_results(name, {}, {})


def test_a_resumed_experiment_run_redoes_its_evaluations_once(tmp_path, monkeypatch):
    """Evaluations made after the last checkpoint are made again on resume; the new row of a
    step replaces the old one and drops the later ones, as in an uninterrupted run."""
    from tvmlib.experiments import runner

    cfg = load_config(SMOKE, [f"out_dir={tmp_path}"])
    monitor = runner.Monitor(cfg, None, **QUIET)
    monitor.metric = (None, None, None)
    monitor.evals = [{"step": s, "train_s": s, "fd_1": 1.0} for s in (0, 10, 20)]
    monkeypatch.setattr(runner, "evaluate_net", lambda *a: {"1": {"fd": 2.0}})
    monitor.fd(None, 10, 10.0)
    assert [(r["step"], r["fd_1"]) for r in monitor.evals] == [(0, 1.0), (10, 2.0)]
    assert json.loads((tmp_path / "monitor.json").read_text())["evals"] == monitor.evals
