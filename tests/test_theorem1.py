"""Theorem 1 measured (tvmlib.evaluation.theorem1) on the exact Gaussian flow, where every term
is known: L(s) is the slope of the affine velocity, the exact map has no terminal or velocity
error, and a model off by a constant has a closed-form terminal term and W2."""

import math

import torch
from torch import nn

from tvmlib.core.analytic import GaussianFlow
from tvmlib.evaluation.theorem1 import (
    bound_terms,
    gronwall_weight,
    lipschitz_profile,
    measure_bound,
    theorem1_bound,
    trapezoid,
)

F64 = torch.float64
FLOW = GaussianFlow(torch.tensor([1.0, -0.5]), 0.4)
S = torch.linspace(0.02, 0.98, 25, dtype=F64)


def slope(s: torch.Tensor) -> torch.Tensor:
    """d u / d x of the Gaussian flow: sd'(s) / sd(s) (times the identity)."""
    sd2 = (1 - s) ** 2 * FLOW.sigma**2 + s**2
    return (s - (1 - s) * FLOW.sigma**2) / sd2


class Offset(nn.Module):
    """The exact flow map plus a constant a: F = F* + a."""

    def __init__(self, a):
        super().__init__()
        self.a = torch.tensor(a, dtype=F64)

    def forward(self, x, t, s=None, y=None, w=None):
        return FLOW(x, t, s) + self.a


def _data(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 2, generator=g, dtype=F64), FLOW.sample_data(n, g),
            torch.randn(n, 2, generator=g, dtype=F64))


def test_gronwall_weight_and_trapezoid():
    s = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(gronwall_weight(s, torch.full((11,), 2.5, dtype=F64)),
                               torch.exp(2.5 * s))
    torch.testing.assert_close(trapezoid(s, 3 * s), torch.tensor(1.5, dtype=F64))


def test_lipschitz_profile_is_the_slope_of_the_affine_velocity():
    g = torch.Generator().manual_seed(1)
    L = lipschitz_profile(FLOW, S, lambda s: torch.randn(16, 2, generator=g, dtype=F64), iters=4)
    torch.testing.assert_close(L, slope(S).abs(), rtol=1e-8, atol=1e-10)


def test_exact_map_has_no_terminal_or_velocity_error():
    x1, x0, eps = _data()
    terms = bound_terms(FLOW, S, x1, x0, eps, FLOW.velocity)
    assert float(terms["terminal"].abs().max()) < 1e-12
    assert float(terms["velocity_error"].abs().max()) < 1e-12
    torch.testing.assert_close(terms["fm"], terms["variance"])
    bound = theorem1_bound(S, slope(S).abs(), terms)
    assert abs(bound["rhs"]) < 1e-10
    assert math.isclose(bound["rhs_loss"] + bound["C"], bound["rhs"], abs_tol=1e-9)


def test_offset_model_terms_are_closed_form_and_the_bound_holds():
    """F = F* + a jumps to psi*(x_1, 1, 0) - a: W2^2 = ||a||^2 exactly; T(s) = (1-s)^2 k(s)^2
    ||a||^2 with k the velocity's slope, E(s) = ||a||^2."""
    a = (0.3, -0.2)
    na2 = 0.3**2 + 0.2**2
    x1, x0, eps = _data(seed=2)
    terms = bound_terms(Offset(a), S, x1, x0, eps, FLOW.velocity)
    torch.testing.assert_close(terms["terminal"], (1 - S) ** 2 * slope(S) ** 2 * na2)
    torch.testing.assert_close(terms["velocity_error"], torch.full_like(S, na2))
    bound = theorem1_bound(S, slope(S).abs(), terms)
    assert bound["rhs"] >= na2
    # FM - V = E only in expectation: the cross term 2 E[(u_theta - u) . (u - v)] is 0 on average
    assert math.isclose(bound["rhs_loss"] + bound["C"], bound["rhs"], rel_tol=0.1)


def test_measure_bound_collects_the_parts():
    x1, x0, eps = _data(n=200, seed=3)
    out = measure_bound(Offset((0.1, 0.0)), S, x1, x0, eps, FLOW.velocity, n_lipschitz=16,
                        iters=3)
    torch.testing.assert_close(torch.tensor(out["L"], dtype=F64), slope(S).abs())
    assert len(out["lambda"]) == len(S) and out["lambda"][0] == 1.0
    assert out["rhs"] >= 0.01 and set(out["terms"]) == {"terminal", "fm", "variance",
                                                         "velocity_error"}
