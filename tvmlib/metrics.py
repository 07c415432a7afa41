"""Distances between sample sets: exact W2 (POT's network simplex) and sliced W2 for 2D toys;
the Frechet distance on the project's classifier features for MNIST / Fashion-MNIST."""

from __future__ import annotations

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


def sliced_w2(x: Tensor | np.ndarray, y: Tensor | np.ndarray, n_projections: int = 256,
              seed: int = 0) -> float:
    """Sliced W2: sqrt of the mean over random unit directions of the 1D W2^2 (POT)."""
    a, b = _as_2d_numpy(x, "x"), _as_2d_numpy(y, "y")
    import ot

    return float(ot.sliced_wasserstein_distance(a, b, n_projections=n_projections, p=2,
                                                seed=seed))


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


@torch.no_grad()
def classifier_features(images: Tensor, dataset: str, batch_size: int = 1000) -> Tensor:
    """Penultimate features (N, feature_dim) of the committed ``dataset`` classifier for images
    (N, 1, 32, 32) in [-1, 1], computed in batches on the images' device."""
    from tvmlib.classifier import load_classifier

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
    from tvmlib.classifier import checkpoints_dir
    from tvmlib.data.images import load_mnist

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
    (``tvmlib.classifier``). They are for comparing methods within this project only. The bias
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
