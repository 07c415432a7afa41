"""Toy 2D distributions: samples (n, 2) and, where natural, class labels (n,).

Every sampler takes a ``torch.Generator`` so a batch stream can be replayed exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

GAUSSIANS8_RADIUS, GAUSSIANS8_STD = 2.0, 0.1


def _gaussians8_means(dtype: torch.dtype = torch.float32) -> Tensor:
    """The eight centres (8, 2) on the circle of radius 2, centre k at angle 2 pi k / 8."""
    angle = torch.arange(8, dtype=dtype) * (2 * math.pi / 8)
    return GAUSSIANS8_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def _gaussians8(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Eight Gaussians (std 0.1) on a circle of radius 2; label = which Gaussian."""
    y = torch.randint(0, 8, (n,), generator=g)
    return _gaussians8_means()[y] + GAUSSIANS8_STD * torch.randn(n, 2, generator=g), y


def gaussian_mixture(name: str) -> tuple[Tensor, float] | None:
    """(means (K, 2) float64, shared std) of a toy that is an equal-weight mixture of isotropic
    Gaussians, one class per component (its flow has closed-form velocities:
    ``tvmlib.core.analytic.GaussianMixtureFlow``); None for the other toys."""
    _lookup(name)
    return (_gaussians8_means(torch.float64), GAUSSIANS8_STD) if name == "8gaussians" else None


def _moons(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two interleaving half circles (noise 0.05), scaled to about [-2, 2]; label = moon."""
    y = torch.randint(0, 2, (n,), generator=g)
    a = torch.rand(n, generator=g) * math.pi
    upper = torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    lower = torch.stack([1 - torch.cos(a), 0.5 - torch.sin(a)], dim=1)
    x = torch.where(y[:, None] == 0, upper, lower) + 0.05 * torch.randn(n, 2, generator=g)
    return 2.0 * (x - torch.tensor([0.5, 0.25])), y


def _checkerboard(n: int, g: torch.Generator) -> tuple[Tensor, None]:
    """Uniform on the 8 dark squares of a 4x4 board covering [-2, 2]^2 (no labels)."""
    x1 = torch.rand(n, generator=g) * 4 - 2
    col = torch.floor(x1 + 2)  # 0..3
    row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)  # squares with row+col even
    x2 = torch.rand(n, generator=g) + row - 2
    return torch.stack([x1, x2], dim=1), None


def checkerboard_boxes() -> tuple[Tensor, Tensor]:
    """The checkerboard's 8 squares as boxes: lower and upper corners, each (8, 2) float64 (its
    density is uniform on their union: ``tvmlib.core.analytic.BoxMixtureFlow``)."""
    cells = [(col, row) for col in range(4) for row in range(col % 2, 4, 2)]
    lower = torch.tensor(cells, dtype=torch.float64) - 2
    return lower, lower + 1


def _spiral(n: int, g: torch.Generator) -> tuple[Tensor, None]:
    """A noisy Archimedean spiral scaled to about [-2, 2]^2 (no labels)."""
    r = torch.sqrt(torch.rand(n, generator=g))
    angle = r * 3 * math.pi
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1) * 2.0
    return x + 0.05 * torch.randn(n, 2, generator=g), None


TOY2D = {
    "8gaussians": (_gaussians8, 8),
    "moons": (_moons, 2),
    "checkerboard": (_checkerboard, 0),
    "spiral": (_spiral, 0),
}


def _lookup(name: str):
    if name not in TOY2D:
        raise ValueError(f"unknown toy data set {name!r}; valid names: {', '.join(TOY2D)}")
    return TOY2D[name]


def num_classes(name: str) -> int:
    """Number of classes of a toy data set (0 if it has no labels)."""
    return _lookup(name)[1]


def sample_toy2d(
    name: str, n: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor | None]:
    """Draw ``n`` samples: (x (n, 2) float32, y (n,) int64 or None)."""
    fn, _ = _lookup(name)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    g = generator if generator is not None else torch.Generator().manual_seed(
        int(torch.randint(0, 2**31 - 1, ()).item()))
    return fn(n, g)


class ToySource:
    """An endless, replayable stream of toy batches for ``tvmlib.training.loop``.

    ``next_batch()`` returns (x (B, 2), y (B,) or None; ``labels=False`` drops labels for an
    unconditional model); the generator state is checkpointed so a
    resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, name: str, batch_size: int, seed: int = 0, labels: bool = True):
        _lookup(name)
        self.name, self.batch_size, self.labels = name, batch_size, labels
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor | None]:
        x, y = sample_toy2d(self.name, self.batch_size, self.generator)
        return x, (y if self.labels else None)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
