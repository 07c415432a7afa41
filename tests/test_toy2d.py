"""Toy 2D data sets: shapes, labels, support, reproducibility, errors."""

import math

import pytest
import torch

from tvmlib.data import TOY2D, ToySource, num_classes, sample_toy2d


@pytest.mark.parametrize("name", list(TOY2D))
def test_shapes_labels_and_reproducibility(name):
    x, y = sample_toy2d(name, 500, torch.Generator().manual_seed(0))
    assert x.shape == (500, 2) and x.dtype == torch.float32
    assert bool(torch.isfinite(x).all()) and x.abs().max() < 3.5
    if num_classes(name):
        assert y.shape == (500,) and set(y.tolist()) == set(range(num_classes(name)))
    else:
        assert y is None
    x2, _ = sample_toy2d(name, 500, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, x2)


def test_eight_gaussians_labels_name_the_mode():
    x, y = sample_toy2d("8gaussians", 2000, torch.Generator().manual_seed(0))
    angle = y.float() * 2 * math.pi / 8
    centers = 2 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    assert (x - centers).norm(dim=1).max() < 0.6  # 6 std of 0.1 in 2D


def test_checkerboard_lives_on_dark_squares():
    x, _ = sample_toy2d("checkerboard", 5000, torch.Generator().manual_seed(0))
    col, row = torch.floor(x[:, 0] + 2), torch.floor(x[:, 1] + 2)
    assert bool(((col + row) % 2 == 0).all())
    assert len(set(zip(col.tolist(), row.tolist()))) == 8


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid names: 8gaussians, moons, checkerboard, spiral"):
        sample_toy2d("swissroll", 10)


def test_source_replays_after_state_dict():
    a = ToySource("moons", 16, seed=3)
    a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch()[0] for _ in range(3)]
    b = ToySource("moons", 16, seed=99)
    b.load_state_dict(state)
    for e in expected:
        torch.testing.assert_close(b.next_batch()[0], e)
    assert ToySource("moons", 4, labels=False).next_batch()[1] is None
