"""Distances between sample sets: exact W2 (POT's network simplex) and sliced W2."""

from __future__ import annotations

import numpy as np
import ot
import torch
from torch import Tensor


def _as_2d_numpy(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be (n, d) samples, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def w2(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Exact 2-Wasserstein distance between two empirical measures with uniform weights.

    Solves the optimal-transport linear program with ``ot.emd2`` on the squared Euclidean cost
    and returns sqrt(min cost). Cost O(n^3) in the worst case: keep n <= ~3000.
    """
    a, b = _as_2d_numpy(x, "x"), _as_2d_numpy(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimension mismatch: {a.shape[1]} vs {b.shape[1]}")
    cost = ot.dist(a, b, metric="sqeuclidean")
    wa, wb = np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b))
    return float(np.sqrt(max(ot.emd2(wa, wb, cost, numItermax=10_000_000), 0.0)))


def sliced_w2(x: Tensor | np.ndarray, y: Tensor | np.ndarray, n_projections: int = 256,
              seed: int = 0) -> float:
    """Sliced W2: sqrt of the mean over random unit directions of the 1D W2^2 (POT)."""
    a, b = _as_2d_numpy(x, "x"), _as_2d_numpy(y, "y")
    return float(ot.sliced_wasserstein_distance(a, b, n_projections=n_projections, p=2,
                                                seed=seed))
