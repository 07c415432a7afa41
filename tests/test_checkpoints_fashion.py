"""The committed Fashion-MNIST DiT-T/2 checkpoints (tvmlib.evaluation.pretrained, made by
tvmlib.apps.checkpoints_fashion): sha256-checked loading, clear errors naming the regenerate
commands, the manifest CLI, and a real-behaviour check of sample quality (classifier Frechet
distance) on a CPU."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tvmlib.apps import checkpoints_fashion as app
from tvmlib.core.solvers import sample
from tvmlib.evaluation import pretrained as P
from tvmlib.evaluation.classifier import classifier_fd
from tvmlib.nn.dit import DiT
from tvmlib.training.weights import checkpoints_dir, sha256_file
from tvmlib.utils.paths import repo_root

RESULTS = json.loads((repo_root() / P.FASHION_RESULTS).read_text())
COMMANDS = f"{re.escape(P.FASHION_GPU_COMMAND)}.*{re.escape(P.FASHION_MANIFEST_COMMAND)}"


def _path(name: str, folder: Path | None = None) -> Path:
    return (folder or checkpoints_dir()) / P.fashion_model(name).file


@pytest.mark.parametrize("name", list(P.FASHION_MODELS))
def test_committed_checkpoint_loads_and_matches_manifest(name):
    path = _path(name)
    entry = P.read_manifest_fashion()[path.name]
    assert path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]
    assert entry["results"] == P.FASHION_RESULTS  # the run's provenance: commit, device (a GPU)
    assert entry["commit"] == RESULTS["provenance"]["commit"] and len(entry["commit"]) == 40
    assert entry["device"] == RESULTS["provenance"]["device"] and "cpu" not in entry["device"]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert entry["fd"] == raw["fd"] and entry["command"] == raw["command"]
    assert raw["kind"] == entry["kind"] == P.FASHION_MODELS[name].kind

    net = P.load_fashion(name)
    assert isinstance(net, DiT) and net.attn_backend == "sdpa"
    assert set(net.state_dict()) == set(raw["state_dict"])  # no missing or unexpected keys
    for key, value in net.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, raw["state_dict"][key].float(), rtol=0, atol=0)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x, t = torch.randn(2, 1, 32, 32), torch.ones(2)
    out = net(x, t, torch.zeros(2), torch.tensor([3, P.FASHION_CLASSES_K]))  # a class and null
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_checkpoints_folder_stays_small():
    total = sum(p.stat().st_size for p in checkpoints_dir().iterdir() if p.is_file())
    assert total < 40_000_000, f"data/checkpoints holds {total / 1e6:.1f} MB"


def _copy_committed(folder: Path, name: str = "tvm_cmt") -> Path:
    src = _path(name)
    shutil.copy(src, folder / src.name)
    entry = P.read_manifest_fashion()[src.name]
    (folder / P.MANIFEST_FASHION).write_text(json.dumps({src.name: entry}))
    return folder / src.name


def test_missing_file_or_entry_names_the_commands(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"(?s)missing.*{COMMANDS}"):
        P.load_fashion("tvm_cmt", tmp_path)
    _copy_committed(tmp_path)
    (tmp_path / P.MANIFEST_FASHION).write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"(?s)no sha256.*{COMMANDS}"):
        P.load_fashion("tvm_cmt", tmp_path)


def test_corrupt_copy_names_the_commands(tmp_path):
    path = _copy_committed(tmp_path)
    assert isinstance(P.load_fashion("tvm_cmt", tmp_path), DiT)  # the intact copy loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=f"(?s)corrupt or stale.*{COMMANDS}"):
        P.load_fashion("tvm_cmt", tmp_path)


def test_unknown_name_lists_the_models():
    with pytest.raises(ValueError, match="valid: fm_teacher, tvm_scratch, tvm_cmt"):
        P.load_fashion("tvm_teacher_init")
    with pytest.raises(ValueError, match="1..16"):
        P.check_steps("tvm_cmt", 17)


def test_manifest_cli_rewrites_the_committed_manifest_and_readme(tmp_path, capsys):
    for m in P.FASHION_MODELS.values():  # links: the CLI reads the files, it never writes them
        (tmp_path / m.file).symlink_to(checkpoints_dir() / m.file)
    app.main(["--manifest", "--folder", str(tmp_path)])
    assert "tvm_cmt      ok" in capsys.readouterr().out
    written = json.loads((tmp_path / P.MANIFEST_FASHION).read_text())
    assert written == P.read_manifest_fashion()
    readme = (tmp_path / app.README).read_text()
    assert readme == (checkpoints_dir() / app.README).read_text()
    assert all(e["sha256"] in readme for e in written.values())
    assert P.FASHION_GPU_COMMAND in readme

    # A results file from another run (different FDs) is refused.
    other = json.loads(json.dumps(RESULTS))
    other["results"]["runs"]["cmt"]["final"]["ema"]["1"] += 1.0
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="not from the run that wrote fashion_tvm_cmt.pt"):
        app.main(["--manifest", "--folder", str(tmp_path), "--results",
                  str(tmp_path / "other.json")])


def test_fashion_samplers_are_the_registry_and_count_nfe():
    noise, y = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)), \
        torch.tensor([0, 3, 7, 9])
    fm = P.load_fashion("fm_teacher")
    out = sample(fm, noise, 3, y=y, batch_size=3, **P.FASHION_SAMPLERS["fm"])  # two batches
    ref = sample(fm, noise, 3, y=y, solver="dpm++2m", grid="logsnr")
    assert out.nfe == ref.nfe == 3
    torch.testing.assert_close(out.x, ref.x)
    # the log-SNR grid starts from pure noise and ends on data
    assert out.times[0] == 1.0 and out.times[-1] == 0.0


def test_one_jump_samples_are_near_their_gpu_fd_and_far_from_noise():
    """Real behaviour: the manifest records each TVM model's GPU 1-jump FD (10,000 samples;
    about 56 for CMT -> TVM and 66 from scratch). 200 CPU samples of each must score far below
    pure noise and near the GPU value (the FD of fewer samples is biased upwards)."""
    g = torch.Generator().manual_seed(0)
    noise, y = torch.randn(200, 1, 32, 32, generator=g), torch.arange(200) % P.FASHION_CLASSES_K
    noise_fd = classifier_fd(noise.clamp(-1, 1), None, P.FASHION)
    manifest = P.read_manifest_fashion()
    for name in ("tvm_cmt", "tvm_scratch"):
        x = sample(P.load_fashion(name), noise, 1, y=y, batch_size=100).x.clamp(-1, 1)
        fd = classifier_fd(x, None, P.FASHION)
        gpu = manifest[P.FASHION_MODELS[name].file]["fd"]["fd_1"]
        assert gpu < fd < 2.5 * gpu and 10 * fd < noise_fd, (name, fd, gpu, noise_fd)
