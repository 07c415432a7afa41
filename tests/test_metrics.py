"""W2 against closed forms; evaluation sets and the W2 floor."""

import math

import numpy as np
import pytest
import torch

from tvmlib.data import sample_toy2d
from tvmlib.evaluation.metrics import w2
from tvmlib.evaluation.toy import eval_sets, score, sets_floor, summary


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


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        w2(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        w2(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="dimension mismatch"):
        w2(torch.zeros(3, 2), torch.zeros(3, 3))


def test_eval_sets_are_independent_and_class_matched():
    sets = eval_sets("8gaussians", 400, pairs=3, seed=0, labels=True)
    assert len(sets) == 3 and all(s.noise.shape == s.reference.shape == (400, 2) for s in sets)
    assert not torch.equal(sets[0].reference, sets[1].reference)
    assert not torch.equal(sets[0].noise, sets[1].noise)
    for s in sets:  # row i of both data sets lies in the mode of class labels[i]
        for data in (s.reference, s.other):
            mode = torch.remainder(torch.round(torch.atan2(data[:, 1], data[:, 0]) / (math.pi / 4)),
                                   8)
            assert torch.equal(mode.long(), s.labels)
    again = eval_sets("8gaussians", 400, pairs=3, seed=0, labels=True)
    assert all(torch.equal(a.reference, b.reference) for a, b in zip(sets, again))
    plain = eval_sets("checkerboard", 50, pairs=2, seed=1)
    assert plain[0].labels is None
    with pytest.raises(ValueError, match="no labels"):
        eval_sets("checkerboard", 50, pairs=2, labels=True)


def test_the_floor_is_a_perfect_models_score():
    """A 'model' that returns fresh data scores the floor's expectation; class matching removes
    the random class histogram from both."""
    sets = eval_sets("8gaussians", 300, pairs=4, seed=2)
    data = lambda s: sample_toy2d("8gaussians", 300, torch.Generator().manual_seed(  # noqa: E731
        int(s.noise[0, 0].abs() * 1e6)))[0]
    f, perfect = sets_floor(sets), score(data, sets)
    assert len(f["runs"]) == 4 and f["std"] > 0
    assert abs(perfect["mean"] - f["mean"]) < 3 * (f["std"] + perfect["std"])
    matched = sets_floor(eval_sets("8gaussians", 300, pairs=4, seed=2, labels=True))
    assert matched["mean"] < 0.5 * f["mean"]
    assert summary([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "runs": [1.0, 2.0, 3.0]}
