"""Config validation and the training CLI: single process vs 2-process torchrun (gloo)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tvmlib.config import ConfigError, config_from_dict, load_config
from tvmlib.runs import micro_batches, run, train_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "toy_tvm_smoke.yaml"


def test_every_committed_config_loads():
    """Run configs go through tvmlib.config; experiment configs through their own loader."""
    from tvmlib.experiments import cmt, lipschitz

    loaders = {"cmt_": cmt.load_config, "lipschitz_": lipschitz.load_config}
    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        loader = next((f for p, f in loaders.items() if path.name.startswith(p)), load_config)
        loader(path)


@pytest.mark.parametrize("values,message", [
    ({"model": {"presett": "DiT_S_2"}}, "model.presett: unknown key; valid keys: "),
    ({"train": {"lr": "fast"}}, "train.lr: expected float"),
    ({"train": {"steps": 1.5}}, "train.steps: expected int"),
    ({"train": {"betas": 0.9}}, "train.betas: expected a list"),
    ({"loss": {"cfg_scale": True}}, "loss.cfg_scale"),
    ({"bogus": 1}, "bogus: unknown key"),
    ({"data": 3}, "data: expected a mapping"),
])
def test_bad_keys_and_types_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_from_dict(values)


def test_overrides_and_batch_split():
    cfg = load_config(SMOKE, ["train.lr=3e-4", "model.hidden=32"])
    assert cfg.train.lr == 3e-4 and cfg.model.hidden == 32
    cfg = config_from_dict({"train": {"global_batch": 64, "per_gpu_batch": 8}})
    assert micro_batches(cfg, world=2) == 4 and micro_batches(cfg, world=8) == 1
    with pytest.raises(ValueError, match="multiple of"):
        micro_batches(config_from_dict({"train": {"global_batch": 64, "per_gpu_batch": 24}}), 2)


def test_cuda_graph_option_reaches_the_loop_and_is_refused_on_cpu(tmp_path):
    cfg = load_config(SMOKE, ["train.cuda_graph=true", f"out_dir={tmp_path}"])
    assert train_config(cfg, world=1).cuda_graph is True
    with pytest.raises(ConfigError, match="train.cuda_graph"):
        load_config(SMOKE, ["train.cuda_graph=3"])
    if not torch.cuda.is_available():  # on a GPU the same run would train with the graph
        with pytest.raises(ValueError, match="CUDA device"):
            run(cfg)


def _cli(tmp_path, name, nproc, extra=()):
    env = {**os.environ, "TVMLIB_QUIET": "1", "OMP_NUM_THREADS": "1"}
    base = ["-m", "tvmlib.train", "--config", str(SMOKE), "--set", f"name={name}",
            "--set", f"out_dir={tmp_path / name}", *extra]
    if nproc == 1:
        cmd = [sys.executable, *base]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", *base]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tmp_path):
    """Same global batch (64): 1 process x 2 micro-batches of 32 vs 2 processes x 32."""
    one = _cli(tmp_path, "one", 1, ["--set", "train.per_gpu_batch=32"])
    two = _cli(tmp_path, "two", 2)
    assert one["step"] == two["step"] == 6
    for key, a in one["net"].items():
        torch.testing.assert_close(a, two["net"][key], rtol=1e-5, atol=1e-6, msg=key)
    for key, a in one["loss"]["target"]["module"].items():
        torch.testing.assert_close(a, two["loss"]["target"]["module"][key], rtol=1e-5, atol=1e-6)
    # a different split of the same global batch is not the same run: the check has teeth
    other = _cli(tmp_path, "other", 1, ["--set", "train.seed=1"])
    assert any(not torch.allclose(a, other["net"][k]) for k, a in one["net"].items())


def test_cli_rejects_unknown_key_before_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tvmlib.train", "--config", str(SMOKE), "--set",
                          "train.stepz=5", "--set", f"out_dir={tmp_path / 'x'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "train.stepz: unknown key" in out.stderr
    assert not (tmp_path / "x").exists()
