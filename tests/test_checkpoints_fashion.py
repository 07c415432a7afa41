"""The committed Fashion-MNIST DiT-T/2 checkpoints (tvmlib.checkpoints_fashion): sha256-checked
loading, clear errors naming the regenerate commands, the manifest CLI, and a real-behaviour
check of sample quality (classifier Frechet distance) on a CPU."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tvmlib import checkpoints_fashion as ckf
from tvmlib.classifier import checkpoints_dir, sha256_file
from tvmlib.metrics import classifier_fd
from tvmlib.nn.dit import DiT
from tvmlib.paths import repo_root
from tvmlib.sampling import sample_flowmap
from tvmlib.trajectories import teacher_trajectory

RESULTS = json.loads((repo_root() / ckf.RESULTS).read_text())
COMMANDS = f"{re.escape(ckf.GPU_COMMAND)}.*{re.escape(ckf.MANIFEST_COMMAND)}"


@pytest.mark.parametrize("name", list(ckf.MODELS))
def test_committed_checkpoint_loads_and_matches_manifest(name):
    path = ckf.checkpoint_path(name)
    entry = ckf.read_manifest_fashion()[path.name]
    assert path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]
    assert entry["results"] == ckf.RESULTS  # the run's provenance: commit and device (a GPU)
    assert entry["commit"] == RESULTS["provenance"]["commit"] and len(entry["commit"]) == 40
    assert entry["device"] == RESULTS["provenance"]["device"] and "cpu" not in entry["device"]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert entry["fd"] == raw["fd"] and entry["command"] == raw["command"]
    assert raw["kind"] == entry["kind"] == ckf.MODELS[name].kind

    net = ckf.load_fashion(name)
    assert isinstance(net, DiT) and net.attn_backend == "sdpa"
    assert set(net.state_dict()) == set(raw["state_dict"])  # no missing or unexpected keys
    for key, value in net.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, raw["state_dict"][key].float(), rtol=0, atol=0)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x, t = torch.randn(2, 1, 32, 32), torch.ones(2)
    out = net(x, t, torch.zeros(2), torch.tensor([3, ckf.NUM_CLASSES]))  # a class and null
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_checkpoints_folder_stays_small():
    total = sum(p.stat().st_size for p in checkpoints_dir().iterdir() if p.is_file())
    assert total < 40_000_000, f"data/checkpoints holds {total / 1e6:.1f} MB"


def _copy_committed(folder: Path, name: str = "tvm_cmt") -> Path:
    src = ckf.checkpoint_path(name)
    shutil.copy(src, folder / src.name)
    entry = ckf.read_manifest_fashion()[src.name]
    (folder / ckf.MANIFEST).write_text(json.dumps({src.name: entry}))
    return folder / src.name


def test_missing_file_or_entry_names_the_commands(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"(?s)missing.*{COMMANDS}"):
        ckf.load_fashion("tvm_cmt", tmp_path)
    _copy_committed(tmp_path)
    (tmp_path / ckf.MANIFEST).write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"(?s)no sha256.*{COMMANDS}"):
        ckf.load_fashion("tvm_cmt", tmp_path)


def test_corrupt_copy_names_the_commands(tmp_path):
    path = _copy_committed(tmp_path)
    assert isinstance(ckf.load_fashion("tvm_cmt", tmp_path), DiT)  # the intact copy loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=f"(?s)corrupt or stale.*{COMMANDS}"):
        ckf.load_fashion("tvm_cmt", tmp_path)


def test_unknown_name_lists_the_models():
    with pytest.raises(ValueError, match="valid: fm_teacher, tvm_scratch, tvm_cmt"):
        ckf.load_fashion("tvm_teacher_init")


def test_manifest_cli_rewrites_the_committed_manifest_and_readme(tmp_path, capsys):
    for m in ckf.MODELS.values():  # links: the CLI reads the files, it never writes them
        (tmp_path / m.file).symlink_to(checkpoints_dir() / m.file)
    ckf.main(["--manifest", "--folder", str(tmp_path)])
    assert "tvm_cmt      ok" in capsys.readouterr().out
    written = json.loads((tmp_path / ckf.MANIFEST).read_text())
    assert written == ckf.read_manifest_fashion()
    readme = (tmp_path / ckf.README).read_text()
    assert readme == (checkpoints_dir() / ckf.README).read_text()
    assert all(e["sha256"] in readme for e in written.values()) and ckf.GPU_COMMAND in readme

    # A results file from another run (different FDs) is refused.
    other = json.loads(json.dumps(RESULTS))
    other["runs"]["cmt"][-1]["fd_1"] += 1.0
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="not from the run that wrote fashion_tvm_cmt.pt"):
        ckf.main(["--manifest", "--folder", str(tmp_path), "--results",
                  str(tmp_path / "other.json")])


def test_sample_fashion_matches_the_samplers_and_counts_nfe():
    noise, y = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)), \
        torch.tensor([0, 3, 7, 9])
    tvm = ckf.load_fashion("tvm_cmt")
    out = ckf.sample_fashion("tvm_cmt", tvm, noise, 2, y)
    assert out.nfe == 2
    torch.testing.assert_close(out.x, sample_flowmap(tvm, noise, steps=2, y=y).x.clamp(-1, 1))
    fm = ckf.load_fashion("fm_teacher")
    out = ckf.sample_fashion("fm_teacher", fm, noise, 3, y, batch=3)  # two batches
    ref = teacher_trajectory(fm, noise, y=y, steps=3, solver="dpm++2m", grid="logsnr")
    assert out.nfe == ref.nfe == 3
    torch.testing.assert_close(out.x, ref.x.clamp(-1, 1))
    with pytest.raises(ValueError, match="1..16"):
        ckf.sample_fashion("tvm_cmt", tvm, noise, 17, y)


def test_cmt_one_step_samples_beat_scratch_and_noise():
    """Real behaviour: per figures/05_cmt.json the GPU 1-step FDs (2000 samples) are ~104 for
    CMT -> TVM and ~1216 from scratch. 200 CPU samples must show the same ordering by a wide
    margin, and stay near the GPU value (the FD of fewer samples is biased upwards)."""
    g = torch.Generator().manual_seed(0)
    noise, y = torch.randn(200, 1, 32, 32, generator=g), torch.arange(200) % ckf.NUM_CLASSES
    fd = {name: classifier_fd(ckf.sample_fashion(name, ckf.load_fashion(name), noise, 1, y).x,
                              None, ckf.DATASET) for name in ("tvm_cmt", "tvm_scratch")}
    fd["noise"] = classifier_fd(noise.clamp(-1, 1), None, ckf.DATASET)
    assert 4 * fd["tvm_cmt"] < fd["tvm_scratch"] and 4 * fd["tvm_cmt"] < fd["noise"], fd
    gpu = ckf.read_manifest_fashion()["fashion_tvm_cmt.pt"]["fd"]["fd_1"]
    assert fd["tvm_cmt"] < 2.5 * gpu, (fd, gpu)
