"""Config validation and the training CLI (2-process torchrun runs: test_multi_process)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tvmlib.experiments.runner import train_run
from tvmlib.training.build import loop_config, micro_batches
from tvmlib.training.config import ConfigError, config_from_dict, load_config, load_experiment

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "toy_tvm_smoke.yaml"


def test_every_committed_config_loads():
    """Run configs and experiments (lists of runs) go through the one schema."""
    runs = sorted((ROOT / "configs").glob("*.yaml"))
    experiments = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
    assert runs and experiments
    for path in runs:
        load_config(path)
    for path in experiments:
        _, cfgs = load_experiment(path)
        assert cfgs


def test_overrides_and_batch_split():
    cfg = load_config(SMOKE, ["train.lr=3e-4", "model.hidden_size=32"])
    assert cfg.train.lr == 3e-4 and cfg.model.hidden_size == 32
    cfg = config_from_dict({"train": {"global_batch": 64, "per_gpu_batch": 8}})
    assert micro_batches(cfg, world=2) == 4 and micro_batches(cfg, world=8) == 1
    with pytest.raises(ValueError, match="multiple of"):
        micro_batches(config_from_dict({"train": {"global_batch": 64, "per_gpu_batch": 24}}), 2)


def test_cuda_graph_option_reaches_the_loop_and_is_refused_on_cpu(tmp_path):
    cfg = load_config(SMOKE, ["train.cuda_graph=true", f"out_dir={tmp_path}"])
    assert loop_config(cfg, world=1).cuda_graph is True
    with pytest.raises(ConfigError, match="train.cuda_graph"):
        load_config(SMOKE, ["train.cuda_graph=3"])
    if not torch.cuda.is_available():  # on a GPU the same run would train with the graph
        with pytest.raises(ValueError, match="CUDA device"):
            train_run(cfg, log=lambda msg: None)


def test_the_process_group_timeout_is_a_positive_setting():
    assert load_config(SMOKE).train.dist_timeout_s == 600
    for bad in ("0", "-5", "inf"):
        with pytest.raises(ConfigError, match="train.dist_timeout_s"):
            load_config(SMOKE, [f"train.dist_timeout_s={bad}"])


def test_cli_rejects_unknown_key_before_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tvmlib.apps.train", "--config", str(SMOKE),
                          "--set", "train.stepz=5", "--set", f"out_dir={tmp_path / 'x'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "train.stepz: unknown key" in out.stderr
    assert not (tmp_path / "x").exists()


def test_a_run_folder_resumes_only_its_own_settings(tmp_path):
    """The train command continues a run with more steps (and another process-group timeout),
    refuses a resume whose settings differ (the old learning rate would silently win), and
    trains afresh when asked."""
    quiet = dict(log=lambda msg: None)
    cfg = load_config(SMOKE, [f"out_dir={tmp_path}", "train.steps=2"])
    assert train_run(cfg, **quiet).step == 2
    stored = tmp_path / "config.yaml"  # a folder from before a key existed: that key's default
    values = yaml.safe_load(stored.read_text())
    assert values["model"].pop("jvp") == "fused"
    stored.write_text(yaml.safe_dump(values))
    longer = load_config(SMOKE, [f"out_dir={tmp_path}", "train.steps=4",
                                 "train.dist_timeout_s=30"])
    assert train_run(longer, **quiet).step == 4
    other = load_config(SMOKE, [f"out_dir={tmp_path}", "train.steps=4", "train.lr=0.5"])
    with pytest.raises(ValueError, match="other settings.*train.lr"):
        train_run(other, **quiet)
    assert train_run(other, resume=False, **quiet).step == 4  # --fresh


def _doc(runs: list[str], commit: str, config_runs: list[str], **prov) -> dict:
    """A results document of experiment "e" with the named (empty) runs, made at ``commit``."""
    return {"provenance": {"command": f"--only {' '.join(runs)}", "commit": commit, **prov},
            "results": {"experiment": "e", "config": {"runs": config_runs}, "wall_s": 1.0,
                        "runs": {r: {"name": r, "at": commit} for r in runs}}}


def test_merge_flattens_merged_parts_keeps_the_newest_config_and_sets_its_note():
    from tvmlib.experiments.merge import merge_results

    first = merge_results([_doc(["a"], "c1", ["a", "b"]), _doc(["b"], "c1", ["a", "b"])],
                          note="old note")
    assert [p["command"] for p in first["provenance"]["parts"]] == ["--only a", "--only b"]
    later = _doc(["c", "b"], "c2", ["a", "b", "c"])
    merged = merge_results([first, later], note="new note")
    parts = merged["provenance"]["parts"]
    assert [(p["command"], p["commit"]) for p in parts] == [
        ("--only a", "c1"), ("--only b", "c1"), ("--only c b", "c2")]  # one level, in order
    assert all("parts" not in p for p in parts)
    assert merged["provenance"]["note"] == "new note" and merged["provenance"]["commit"] == "c1"
    assert merged["results"]["config"] == {"runs": ["a", "b", "c"]}  # the last part's
    assert {n: r["at"] for n, r in merged["results"]["runs"].items()} == {
        "a": "c1", "b": "c2", "c": "c2"}  # later parts replace runs
    assert merged["results"]["wall_s"] == 3.0
    assert "note" not in merge_results([first, later])["provenance"]  # no stale note on top
    with pytest.raises(ValueError, match="different experiments"):
        merge_results([first, {**later, "results": {**later["results"], "experiment": "x"}}])
