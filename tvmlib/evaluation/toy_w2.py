"""W2 of 2D toy samples over several independent evaluation sets, and its floor computed the same
way.

One W2 between n samples and n data points is a noisy number: on ``8gaussians`` with n = 1500 it
moves by about 0.05 with the draw, mostly with how the points happen to split between the eight
modes. So a model is scored on ``pairs`` independent evaluation sets, each holding its own noise,
its own reference data set and a second, independent data set of the same size, and the W2 is
averaged over the sets. The **floor** is the same average of W2(second data set, reference): what a
perfect model (one whose samples are distributed as the data) scores in expectation with the same
n, the same W2 function and the same references. A model below the floor is not better than data:
the difference is noise.

With ``labels=True`` on a labelled data set (the class-conditional models), each set draws uniform
labels, the model samples those labels, and both data sets are class-matched (row i of each has
class labels[i]), so neither the model's W2 nor the floor pays for a random class histogram.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tvmlib.data.toy2d import num_classes, sample_toy2d
from tvmlib.evaluation.metrics import w2
from tvmlib.evaluation.pretrained import class_matched_data


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: noise (n, 2), labels (n,) or None, reference data (n, 2) and a second,
    independent data set ``other`` (n, 2) with the same labels (the floor's perfect model)."""

    noise: Tensor
    labels: Tensor | None
    reference: Tensor
    other: Tensor


def eval_sets(dataset: str, n: int, pairs: int, seed: int = 0, labels: bool = False
              ) -> list[EvalSet]:
    """``pairs`` independent evaluation sets of ``n`` points, reproducible from ``seed``;
    class-matched (uniform labels) when ``labels`` and the data set has classes."""
    if pairs < 1 or n < 1:
        raise ValueError(f"need pairs >= 1 and n >= 1, got pairs={pairs}, n={n}")
    K = num_classes(dataset) if labels else 0
    if labels and not K:
        raise ValueError(f"{dataset} has no labels; use labels=False")
    sets = []
    for i in range(pairs):
        g = torch.Generator().manual_seed(1_000 * seed + 7_919 * (i + 1))
        noise = torch.randn(n, 2, generator=g)
        if not K:
            ref, other = sample_toy2d(dataset, n, g)[0], sample_toy2d(dataset, n, g)[0]
            sets.append(EvalSet(noise, None, ref, other))
            continue
        y = torch.randint(0, K, (n,), generator=g)
        sets.append(EvalSet(noise, y, class_matched_data(dataset, y, g),
                            class_matched_data(dataset, y, g)))
    return sets


def summary(values: list[float]) -> dict:
    """{"mean", "std" (sample std, 0 for one value), "runs"} of per-set W2 values."""
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 \
        else 0.0
    return {"mean": m, "std": sd, "runs": list(values)}


def floor(sets: list[EvalSet]) -> dict:
    """The floor: ``summary`` of W2(other, reference) over the sets."""
    return summary([w2(s.other, s.reference) for s in sets])


def score(generate: Callable[[EvalSet], Tensor], sets: list[EvalSet]) -> dict:
    """``summary`` of W2(generate(set), set.reference) over the sets; ``generate`` maps a set
    (its noise and labels) to samples (n, 2)."""
    return summary([w2(generate(s), s.reference) for s in sets])
