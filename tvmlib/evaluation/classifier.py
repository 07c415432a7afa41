"""A small CNN classifier for 32x32 grayscale images (MNIST, Fashion-MNIST), whose penultimate
features give the project's Frechet distance (:func:`classifier_fd`; NOT comparable with
Inception FID). The weights are committed under ``data/checkpoints/`` with a sha256 manifest
(``load_classifier`` checks it); ``python -m tvmlib.apps.classifier`` trains them on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvmlib.data.images import MNIST_LIKE, load_mnist
from tvmlib.evaluation.metrics import feature_stats, frechet_distance
from tvmlib.training.weights import checkpoints_dir, load_verified

DEFAULT_EPOCHS = {"mnist": 3, "fashion-mnist": 6}


class SmallCNN(nn.Module):
    """Three conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool): 32 -> 16 -> 8 -> 4 pixels,
    then a linear layer to ``feature_dim`` penultimate features and a linear head.

    x (B, 1, 32, 32) in [-1, 1] -> logits (B, num_classes). ``features(x)`` returns the
    penultimate features (B, feature_dim), taken before their ReLU.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), feature_dim: int = 128,
                 num_classes: int = 10, resolution: int = 32):
        super().__init__()
        self.config = {"channels": list(channels), "feature_dim": feature_dim,
                       "num_classes": num_classes, "resolution": resolution}
        blocks, c_in = [], 1
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*blocks)
        side = resolution // 2 ** len(channels)
        self.embed = nn.Linear(c_in * side * side, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (B, feature_dim) of images x (B, 1, H, W)."""
        return self.embed(self.body(x).flatten(1))  # (B, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.features(x)))  # (B, num_classes)


def num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def accuracy(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of images x (N, 1, 32, 32) classified as y (exact: correct count / N), in eval
    mode, on x's device."""
    net.eval()
    pred = torch.cat([net(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return int((pred == y.to(x.device)).sum()) / len(y)


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_classifier(name: str, folder: str | Path | None = None,
                    device: str | torch.device = "cpu") -> SmallCNN:
    """The committed classifier for data set ``name`` ("mnist" or "fashion-mnist"), in eval
    mode with gradients off. Raises FileNotFoundError (missing file or manifest entry) or
    RuntimeError (sha256 mismatch, unreadable file), each naming the command that regenerates
    the weights."""
    if name not in MNIST_LIKE:
        raise ValueError(f"no classifier for {name!r}; valid names: {', '.join(MNIST_LIKE)}")
    folder = Path(folder) if folder is not None else checkpoints_dir()
    path = folder / f"classifier_{name}.pt"
    fix = (f"Regenerate it with:\n  python -m tvmlib.apps.classifier --dataset {name} --epochs "
           f"{DEFAULT_EPOCHS.get(name, 3)} --out data/checkpoints/classifier_{name}.pt")

    def build(ckpt: dict) -> SmallCNN:
        net = SmallCNN(**ckpt["config"])
        net.load_state_dict(ckpt["state_dict"])
        return net

    net = load_verified(path, read_manifest(folder), "manifest.json", "classifier weights",
                        fix, build)
    return net.to(device).eval().requires_grad_(False)


# ---- Frechet distance on the classifier's features ------------------------------------------

@torch.no_grad()
def classifier_features(images: Tensor, dataset: str, batch_size: int = 1000) -> Tensor:
    """Penultimate features (N, feature_dim) of the committed ``dataset`` classifier for images
    (N, 1, 32, 32) in [-1, 1], computed in batches on the images' device."""
    if images.dim() != 4 or images.shape[1:] != (1, 32, 32):
        raise ValueError(f"images must be (N, 1, 32, 32) in [-1, 1], got {tuple(images.shape)}")
    net = load_classifier(dataset, device=images.device)
    return torch.cat([net.features(images[i:i + batch_size].float())
                      for i in range(0, len(images), batch_size)])


_REAL_STATS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def real_stats(dataset: str, split: str = "test",
               device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the classifier features of a real split, computed on ``device`` and
    cached in memory per (data set, split, weights file version)."""
    weights = checkpoints_dir() / f"classifier_{dataset}.pt"
    key = (dataset, split, weights.stat().st_mtime_ns if weights.exists() else None)
    if key not in _REAL_STATS:
        x, _ = load_mnist(dataset, split)
        _REAL_STATS[key] = feature_stats(classifier_features(x.to(device), dataset))
    return _REAL_STATS[key]


def classifier_fd(images_a: Tensor, images_b_or_stats=None, dataset: str = "mnist") -> float:
    """Frechet distance between the ``dataset`` classifier's penultimate features of
    ``images_a`` (N, 1, 32, 32) and of ``images_b_or_stats``: another image tensor, a
    precomputed (mu, sigma) pair, or None for the real test split (cached).

    These numbers are NOT comparable with Inception FID (or with FDs from another classifier):
    the features come from the project's small MNIST / Fashion-MNIST CNN
    (this module). They are for comparing methods within this project only. The bias
    of the estimate grows as N shrinks, so compare values at the same N.
    """
    mu_a, sigma_a = feature_stats(classifier_features(images_a, dataset))
    if images_b_or_stats is None:
        mu_b, sigma_b = real_stats(dataset, "test", images_a.device)
    elif torch.is_tensor(images_b_or_stats):
        mu_b, sigma_b = feature_stats(classifier_features(images_b_or_stats, dataset))
    else:
        mu_b, sigma_b = images_b_or_stats
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
