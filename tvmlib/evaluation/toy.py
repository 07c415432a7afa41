"""W2 of a 2D toy model's samples, the floor of that metric, and the reference it is scored on.

A model's W2 at k steps: the exact W2 (POT) between ``n`` samples, made from fixed noise and,
for a class-conditional toy, labels y drawn uniformly, and a *reference* of ``n`` points,
class-matched (row i of the reference has class y[i]).

The reference is the distribution the model aims at. Without guidance that is the data. With
classifier-free guidance w != 1 it is not: FM sampled with CFG, MeanFlow with the guided target
and TVM with w folded in all learn the flow of the guided velocity
w u(x, t | y) + (1 - w) u(x, t), which sharpens each class. For toys whose velocities are
closed-form (mixtures of Gaussians: ``8gaussians``) the *guided reference* is the exact guided
ODE (``tvmlib.core.analytic.GaussianMixtureFlow``, Heun, float64) run from fresh noise with the
labels y: what a perfect guided model samples.

The floor is computed exactly like a model's W2: the model's samples are replaced by another,
independent reference set with the same labels, and the W2 is averaged over ``pairs``
independent pairs. No model can be told apart from the reference below it.

Notebook 01 scores its models over several independent evaluation sets instead (``eval_sets``,
``score``, ``sets_floor``: the last section of this module).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tvmlib.core.analytic import GaussianMixtureFlow
from tvmlib.core.solvers import sample
from tvmlib.data.toy2d import gaussian_mixture, num_classes
from tvmlib.evaluation.metrics import w2
from tvmlib.evaluation.pretrained import toy_data
from tvmlib.training.build import sampler
from tvmlib.training.config import RunConfig

GUIDED_ODE_STEPS = 200  # Heun steps of the exact guided ODE (converged: tests/test_analytic.py)
FLOOR_PAIRS = 4


def eval_inputs(dataset: str, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """The noise (n, 2) every method and step count starts from, and labels (n,) uniform over
    the classes (None for an unlabelled toy)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 10)
    noise = torch.randn(n, 2, generator=g)
    K = num_classes(dataset)
    return noise, (torch.randint(0, K, (n,), generator=g) if K else None)


@functools.lru_cache(maxsize=64)
def _reference(dataset: str, n: int, seed: int, guidance: float, index: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + 100 + index)
    _, y = eval_inputs(dataset, n, seed)
    if guidance == 1.0:
        return toy_data(dataset, n, y, g)
    mixture = gaussian_mixture(dataset)
    if mixture is None or y is None:
        raise ValueError(f"a guided reference needs a labelled mixture toy (8gaussians), not "
                         f"{dataset!r}; use guidance 1 (score against the data)")
    flow = GaussianMixtureFlow(*mixture)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    out = sample(flow, noise, GUIDED_ODE_STEPS, "heun", y=y, cfg_scale=guidance)
    return out.x.float()


def reference(dataset: str, n: int, seed: int, guidance: float | None = None,
              index: int = 0) -> Tensor:
    """Reference set ``index`` (n, 2) for the labels of ``eval_inputs(dataset, n, seed)``: the
    data, class-matched, or with ``guidance`` w != 1 the exact guided ODE's samples."""
    return _reference(dataset, n, seed, float(guidance or 1.0), index).clone()


@functools.lru_cache(maxsize=64)
def _floor(dataset: str, n: int, seed: int, guidance: float, pairs: int) -> tuple[float, ...]:
    return tuple(w2(_reference(dataset, n, seed, guidance, 2 * i + 1),
                    _reference(dataset, n, seed, guidance, 2 * i + 2)) for i in range(pairs))


def floor(dataset: str, n: int, seed: int, guidance: float | None = None,
          pairs: int = FLOOR_PAIRS) -> dict:
    """{"w2": the mean over ``pairs`` of the W2 between two independent reference sets (the same
    labels, n points each), "runs": the ``pairs`` values}."""
    runs = _floor(dataset, n, seed, float(guidance or 1.0), pairs)
    return {"w2": sum(runs) / len(runs), "runs": list(runs)}


def run_guidance(cfg: RunConfig) -> float:
    """The guidance w that a run's samples aim at (1: none): FM's CFG at sampling, MeanFlow's
    training omega, TVM's w input (``eval.cfg_scale``, else the training w)."""
    lc, e = cfg.loss, cfg.eval
    if not cfg.data.class_conditional:
        return 1.0
    w = {"fm": e.cfg_scale, "meanflow": lc.cfg_scale,
         "tvm": e.cfg_scale if e.cfg_scale is not None else lc.cfg_scale}.get(lc.name)
    return float(w or 1.0)


def toy_name(cfg: RunConfig) -> str:
    if not cfg.data.dataset.startswith("toy:"):
        raise ValueError(f"eval.metric w2 needs a 2D toy (data.dataset toy:<name>), got "
                         f"{cfg.data.dataset!r}")
    return cfg.data.dataset[4:]


@torch.no_grad()
def score_steps(net: nn.Module, cfg: RunConfig) -> dict[str, dict]:
    """{str(steps): {"steps", "nfe", "w2", "w2_data"}} for ``cfg.eval.steps``: W2 to the run's
    reference (guided where the run is guided) and to the class-matched data."""
    e, name = cfg.eval, toy_name(cfg)
    noise, y = eval_inputs(name, e.num_samples, e.seed)
    w, spec = run_guidance(cfg), sampler(cfg, net)
    ref, data = (reference(name, e.num_samples, e.seed, g) for g in (w, 1.0))
    rows = {}
    for k in e.steps:
        out = sample(net, noise, k, y=y, grid=e.grid, **spec)
        score = w2(out.x, ref)
        rows[str(k)] = {"steps": k, "nfe": out.nfe, "w2": score,
                        "w2_data": score if w == 1.0 else w2(out.x, data)}
    return rows


def toy_floor(cfg: RunConfig) -> dict:
    """The floors of a toy run's scores: {"guidance", "reference" ("data" or "guided ODE"),
    "w2", "runs"} for its reference and, when that is guided, "w2_data", "runs_data" for the
    data (``floor``, at ``eval.num_samples`` points and ``eval.seed``)."""
    e, name, w = cfg.eval, toy_name(cfg), run_guidance(cfg)
    n = e.final_samples or e.num_samples
    out = {"guidance": w, "reference": "data" if w == 1.0 else "guided ODE",
           **floor(name, n, e.seed, w)}
    if w != 1.0:
        data = floor(name, n, e.seed, 1.0)
        out.update(w2_data=data["w2"], runs_data=data["runs"])
    return out


# ---- several independent evaluation sets (notebook 01) ------------------------------------
# W2 of 2D toy samples over several independent evaluation sets, and its floor computed the same
# way.
#
# One W2 between n samples and n data points is a noisy number: on ``8gaussians`` with n = 1500 it
# moves by about 0.05 with the draw, mostly with how the points happen to split between the eight
# modes. So a model is scored on ``pairs`` independent evaluation sets, each holding its own
# noise, its own reference data set and a second, independent data set of the same size, and the
# W2 is averaged over the sets. The **floor** is the same average of W2(second data set,
# reference): what a perfect model (one whose samples are distributed as the data) scores in
# expectation with the same n, the same W2 function and the same references. A model below the
# floor is not better than data: the difference is noise.
#
# With ``labels=True`` on a labelled data set (the class-conditional models), each set draws
# uniform labels, the model samples those labels, and both data sets are class-matched (row i of
# each has class labels[i]), so neither the model's W2 nor the floor pays for a random class
# histogram.


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
        y = torch.randint(0, K, (n,), generator=g) if K else None
        sets.append(EvalSet(noise, y, toy_data(dataset, n, y, g), toy_data(dataset, n, y, g)))
    return sets


def summary(values: list[float]) -> dict:
    """{"mean", "std" (sample std, 0 for one value), "runs"} of per-set W2 values."""
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 \
        else 0.0
    return {"mean": m, "std": sd, "runs": list(values)}


def sets_floor(sets: list[EvalSet]) -> dict:
    """The floor over evaluation sets: ``summary`` of W2(other, reference) over the sets."""
    return summary([w2(s.other, s.reference) for s in sets])


def score(generate: Callable[[EvalSet], Tensor], sets: list[EvalSet]) -> dict:
    """``summary`` of W2(generate(set), set.reference) over the sets; ``generate`` maps a set
    (its noise and labels) to samples (n, 2)."""
    return summary([w2(generate(s), s.reference) for s in sets])
