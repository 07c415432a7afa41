"""W2 and sliced W2 against closed forms."""

import math

import numpy as np
import pytest
import torch

from tvmlib.evaluation.metrics import sliced_w2, w2


def test_w2_of_a_translation_is_the_shift():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.tensor([0.3, -0.4], dtype=torch.float64)
    assert w2(x, x + c) == pytest.approx(0.5, abs=1e-9)
    assert w2(x, x[torch.randperm(300)]) == pytest.approx(0.0, abs=1e-7)  # sqrt of ~1e-16


def test_w2_in_1d_is_sorted_matching():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 1)), rng.exponential(size=(200, 1))
    expected = math.sqrt(np.mean((np.sort(a[:, 0]) - np.sort(b[:, 0])) ** 2))
    assert w2(a, b) == pytest.approx(expected, rel=1e-9)


def test_sliced_w2_of_a_translation():
    """Sliced W2^2 of a shift c in d dims is E[(theta . c)^2] = |c|^2 / d."""
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([0.6, 0.8])
    assert sliced_w2(x, x + c, n_projections=4000) == pytest.approx(1 / math.sqrt(2), rel=0.03)


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        w2(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        w2(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="dimension mismatch"):
        w2(torch.zeros(3, 2), torch.zeros(3, 3))
