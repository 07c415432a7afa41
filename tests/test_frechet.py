"""Frechet distance against closed forms and an independent sqrtm route; the committed
classifiers (accuracy, checksum errors), classifier_fd behaviour, and the training CLI."""

import json
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch

import tvmlib.apps.classifier
from tvmlib.apps.classifier import main, random_shift
from tvmlib.data.images import load_mnist
from tvmlib.evaluation.classifier import (
    SmallCNN,
    accuracy,
    classifier_fd,
    classifier_features,
    load_classifier,
    read_manifest,
    real_stats,
)
from tvmlib.evaluation.metrics import feature_stats, frechet_distance
from tvmlib.training.weights import checkpoints_dir


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def test_fd_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    ref = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(ref, rel=1e-12)
    # 1D Gaussians given as scalars: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_fd_general_matches_scipy_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(1)
    d = 8
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)  # do not commute
    assert not np.allclose(s1 @ s2, s2 @ s1)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    fd = frechet_distance(mu1, s1, mu2, s2)
    assert fd == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(fd, rel=1e-8)


def test_fd_singular_covariance_with_itself_is_zero():
    rng = np.random.default_rng(2)
    s = _random_cov(rng, 20, rank=3)  # PSD, rank 3: round-off gives tiny negative eigenvalues
    mu = rng.standard_normal(20)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(mu, s, mu[:5], s)


def test_feature_stats_float64_unbiased():
    f = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)).float()
    mu, sigma = feature_stats(f)
    fd = f.double()
    centered = fd - fd.mean(0)
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(sigma, (centered.T @ centered / 49).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(f[:1])


def test_random_shift_moves_one_pixel_within_range():
    x = -torch.ones(64, 1, 8, 8)
    x[:, 0, 4, 3] = 1.0
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and ((out == 1.0).sum(dim=(1, 2, 3)) == 1).all()
    assert ((out == 1.0) | (out == -1.0)).all()
    pos = (out[:, 0] == 1.0).nonzero()[:, 1:]  # (64, 2) row, col
    shift = pos - torch.tensor([4, 3])
    assert shift.abs().max() == 2 and len({tuple(s) for s in shift.tolist()}) > 10
    assert torch.equal(random_shift(x, 0), x)


def _need_weights(name):
    if not (checkpoints_dir() / f"classifier_{name}.pt").exists():
        pytest.fail(f"committed classifier for {name} missing: run "
                    f"python -m tvmlib.apps.classifier --dataset {name}")


@pytest.mark.parametrize("name,floor", [("mnist", 0.98), ("fashion-mnist", 0.88)])
def test_committed_classifier_accuracy(name, floor):
    _need_weights(name)
    net = load_classifier(name)
    assert not net.training and sum(p.numel() for p in net.parameters()) < 500_000
    x, y = load_mnist(name, "test")
    acc = accuracy(net, x[:2000], y[:2000])
    recorded = read_manifest(checkpoints_dir())[f"classifier_{name}.pt"]["test_accuracy"]
    assert acc >= floor and acc >= recorded - 0.02, (acc, recorded)
    assert net.features(x[:3]).shape == (3, net.config["feature_dim"])


def test_corrupt_or_missing_checkpoint_names_the_command(tmp_path):
    _need_weights("mnist")
    shutil.copytree(checkpoints_dir(), tmp_path / "ck")
    folder = tmp_path / "ck"
    load_classifier("mnist", folder)  # the copy is intact
    path = folder / "classifier_mnist.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="python -m tvmlib.apps.classifier --dataset mnist"):
        load_classifier("mnist", folder)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="python -m tvmlib.apps.classifier --dataset mnist"):
        load_classifier("mnist", folder)
    shutil.copy(checkpoints_dir() / "classifier_mnist.pt", path)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["classifier_mnist.pt"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match="(?s)no sha256 .* --dataset mnist"):
        load_classifier("mnist", folder)


def test_classifier_fd_self_zero_and_grows_with_noise():
    _need_weights("mnist")
    x_all, _ = load_mnist("mnist", "test")
    x, other = x_all[:500], x_all[5000:5500]
    assert classifier_fd(x, x, "mnist") < 1e-6
    stats = feature_stats(classifier_features(x, "mnist"))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    fds = [classifier_fd(x + s * noise, stats, "mnist") for s in (0.05, 0.2, 0.5, 1.0)]
    assert all(a < b for a, b in zip(fds, fds[1:])), fds
    # None means the cached real test-set stats; other real digits are far closer to them
    # than noisy digits are to their clean originals
    fd_real = classifier_fd(other, None, "mnist")
    assert fd_real == pytest.approx(classifier_fd(other, real_stats("mnist"), "mnist"), rel=1e-9)
    assert fd_real < 0.1 * fds[-1]


def test_training_cli_writes_weights_manifest_and_results(tmp_path, monkeypatch):
    small = {"train": 640, "test": 300}  # a few steps on subsets keep this test fast
    monkeypatch.setattr(tvmlib.apps.classifier, "load_mnist", lambda name, split: tuple(
        t[:small[split]] for t in load_mnist(name, split)))
    out = tmp_path / "ck" / "classifier_mnist.pt"
    threads = torch.get_num_threads()
    try:
        main(["--dataset", "mnist", "--epochs", "1", "--out", str(out)])  # 5 steps
    finally:
        torch.set_num_threads(threads)
    manifest = read_manifest(out.parent)
    assert set(manifest) == {"classifier_mnist.pt"}
    assert manifest["classifier_mnist.pt"]["bytes"] == out.stat().st_size < 2_000_000
    assert "--epochs 1 " in (out.parent / "README.md").read_text()
    net = load_classifier("mnist", out.parent)
    assert isinstance(net, SmallCNN)
    figures = tmp_path / "figures" / "classifier_mnist.json"  # conftest's TVMLIB_FIGURES
    results = json.loads(figures.read_text())
    assert results["results"]["test_accuracy"] == manifest["classifier_mnist.pt"]["test_accuracy"]
    assert results["results"]["steps"] == 5 and results["provenance"]["command"].startswith(
        "python -m tvmlib.apps.classifier")
