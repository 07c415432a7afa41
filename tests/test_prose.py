"""Sentences rendered from results (tvmlib.utils.prose)."""

import math

import pytest

from tvmlib.utils.prose import hit_or_miss, mean_std, render, say


def test_hit_or_miss_lower_and_higher_is_better():
    assert hit_or_miss(1.0, 1.0) == "hit" and hit_or_miss(1.01, 1.0) == "miss"
    assert hit_or_miss(2.0, 1.0, higher_is_better=True) == "hit"
    assert hit_or_miss(0.5, 1.0, higher_is_better=True) == "miss"
    assert hit_or_miss(math.nan, 1.0) == "miss" and hit_or_miss(math.inf, 1.0) == "miss"


def test_mean_std_is_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == "2 +- 1"
    assert mean_std([0.25]) == "0.25"
    with pytest.raises(ValueError):
        mean_std([])


def test_render_and_say(capsys):
    assert render("W2 {w:.2f} ({v})", w=0.1234, v="hit") == "W2 0.12 (hit)"
    with pytest.raises(KeyError, match="w"):
        render("W2 {w}")
    say("FD {fd:.1f}", fd=12.34)
    assert capsys.readouterr().out.strip() == "FD 12.3"
