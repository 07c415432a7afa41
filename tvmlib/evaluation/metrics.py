"""Distances between sample sets: exact W2 (POT's network simplex) for the 2D toys, and the
Frechet distance between Gaussian fits of features (with streaming moments)."""

from __future__ import annotations

import functools

import numpy as np
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
    import ot  # POT; imported here so image metrics work where POT is not installed

    cost = ot.dist(a, b, metric="sqeuclidean")
    wa, wb = np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b))
    return float(np.sqrt(max(ot.emd2(wa, wb, cost, numItermax=10_000_000), 0.0)))


# ---- Frechet distance between Gaussian fits of features --------------------------------------

def feature_stats(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d), float64, of features (n, d), n >= 2."""
    f = _as_2d_numpy(features, "features")
    if len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(f)}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    lam, q = np.linalg.eigh((a + a.T) / 2)
    return (q * np.sqrt(np.clip(lam, 0.0, None))) @ q.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2):

        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)),

    the quantity FID reports (Heusel et al. 2017). Computed in float64 by an
    eigen-decomposition route: tr((s1 s2)^(1/2)) = sum_i sqrt(lambda_i(s1^(1/2) s2 s1^(1/2))),
    where the middle matrix is symmetric PSD, so no complex square root (and no imaginary part
    to discard) ever appears; tiny negative eigenvalues from round-off are clipped to 0.
    """
    m1, m2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {m1.shape}, sigma1 {s1.shape}, mu2 {m2.shape}, "
                         f"sigma2 {s2.shape}; expected (d,), (d, d), (d,), (d, d)")
    if not all(np.isfinite(a).all() for a in (m1, m2, s1, s2)):
        raise ValueError("means and covariances must be finite")
    r1 = _psd_sqrt(s1)
    middle = r1 @ s2 @ r1  # (d, d), symmetric PSD
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    fd = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fd, 0.0))


class Moments:
    """Running float64 sums of features, enough for their mean and unbiased covariance; sums
    over ``torchrun`` processes with :meth:`all_reduce`.

    Batch b goes into partial sum b mod :attr:`GROUPS`; the partial sums are added in group
    order at the end. N processes that take batches b = rank, rank + N, ... (N dividing GROUPS)
    thus add exactly what one process adds, in the same order: the same bits (a Frechet
    distance goes through the square root of a covariance, which can turn a last-bit
    difference into a 1e-9 relative one)."""

    GROUPS = 8

    def __init__(self):
        self.parts: dict[int, list] = {}  # group -> [n, s1 (d,), s2 (d, d)]

    def add(self, f: Tensor, batch: int = 0) -> None:
        f = f.detach().double().flatten(1).cpu()  # (B, d)
        d = f.shape[1]
        part = self.parts.setdefault(batch % self.GROUPS, [0, torch.zeros(d, dtype=torch.float64),
                                                           torch.zeros(d, d, dtype=torch.float64)])
        part[0] += len(f)
        part[1] += f.sum(0)
        part[2] += f.T @ f

    def all_reduce(self) -> None:
        """Every process's partial sums on every process (each must have added at least one
        batch), with one all-reduce; a process that died or hangs fails it with one clear
        line. Each group comes from one process, the others add zeros: exact."""
        from tvmlib.training.distributed import all_reduce_sum, collective, world

        if world()[1] == 1:
            return
        d = len(next(iter(self.parts.values()))[1])
        flat = torch.zeros(self.GROUPS, 1 + d + d * d, dtype=torch.float64)
        for g, (n, s1, s2) in self.parts.items():
            flat[g] = torch.cat([torch.tensor([float(n)], dtype=torch.float64), s1, s2.flatten()])
        with collective("feature-moment all-reduce"):
            all_reduce_sum(flat)
        self.parts = {g: [int(row[0]), row[1:1 + d], row[1 + d:].view(d, d)]
                      for g, row in enumerate(flat) if row[0] > 0}

    @property
    def n(self) -> int:
        return sum(p[0] for p in self.parts.values())

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (d,), sigma (d, d)) as numpy float64; sigma = (S2 - n mu mu^T) / (n - 1), the sums
        S1, S2 of features and their outer products adding the groups in order."""
        n = self.n
        if n < 2:
            raise ValueError(f"need at least 2 feature vectors, got {n}")
        parts = [self.parts[g] for g in sorted(self.parts)]
        s1, s2 = (functools.reduce(torch.add, [p[i] for p in parts]) for i in (1, 2))
        mu = s1 / n
        sigma = (s2 - n * torch.outer(mu, mu)) / (n - 1)
        return mu.numpy(), sigma.numpy()
