"""TVM's Theorem 1 measured on a 2D model: the Lipschitz profile L(s) of the learned velocity,
the Gronwall weight lambda[L](s) = exp(int_0^s L), and both sides of the W2 bound of the one-jump
map from t = 1 (noise) to 0.

The bound, by the Gronwall argument of the paper's appendix (notebook 02 section 5 writes it
out): for x_1 ~ N(0, I) let Y(s) = x_1 + f_theta(x_1, 1, s) be the model's jump and
Z(s) = psi(x_1, 1, s) the true flow, so Y(1) = Z(1) and Z(s) ~ p_s. If u_theta(., s) is
L(s)-Lipschitz,

    W2^2(law of Y(0), p_0) <= E||Y(0) - Z(0)||^2 <= 2 Lam int_0^1 lambda(s) [T(s) + E(s)] ds,

with Lam = int_0^1 lambda, T(s) = E||d/ds f_theta(x_1, 1, s) - u_theta(Y(s), s)||^2 (TVM's terminal
term at t = 1 with the model's own velocity) and E(s) = E_{x ~ p_s}||u_theta(x, s) - u(x, s)||^2,
the velocity error. E(s) is the FM term FM(s) = E||u_theta(x_s, s) - v||^2 minus its
irreducible part V(s) = E||u(x_s, s) - v||^2, so the right-hand side is the lambda-weighted
per-time TVM loss (terminal + FM) plus C = -2 Lam int lambda V, which no theta changes except
through lambda. Squared norms are sums over the d coordinates (TVM's loss averages them).
Integrals use the trapezoid rule on the given grid of s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from tvmlib.core.flowmap import displacement_and_dfds, velocity
from tvmlib.evaluation.lipschitz import velocity_lipschitz

Velocity = Callable[[Tensor, Tensor], Tensor]  # exact u(x (B, d), s (B,)) -> (B, d)


def trapezoid(s: Tensor, y: Tensor) -> Tensor:
    """int y ds over the grid s (S,) by the trapezoid rule (0-d)."""
    return ((y[1:] + y[:-1]) * (s[1:] - s[:-1])).sum() / 2


def gronwall_weight(s: Tensor, L: Tensor) -> Tensor:
    """lambda[L](s_i) = exp(int_{s_0}^{s_i} L), cumulative trapezoid on the grid: (S,)."""
    steps = (L[1:] + L[:-1]) * (s[1:] - s[:-1]) / 2
    return torch.exp(torch.cat([torch.zeros(1, dtype=L.dtype), steps.cumsum(0)]))


def lipschitz_profile(net: nn.Module, s: Tensor, points: Callable[[float], Tensor],
                      iters: int = 8, seed: int = 0) -> Tensor:
    """L(s_i) = the largest local Jacobian spectral norm of x -> u_theta(x, s_i) over
    ``points(s_i)`` (n, d) (``velocity_lipschitz``, power iteration): a lower bound of the global
    Lipschitz constant the theorem assumes. (S,) float64."""
    out = []
    for i, s_i in enumerate(s.tolist()):
        x = points(s_i)
        g = torch.Generator().manual_seed(seed + i)
        out.append(velocity_lipschitz(net, x, torch.full((len(x),), s_i, dtype=x.dtype),
                                      iters=iters, generator=g).max())
    return torch.stack(out).double()


def bound_terms(net: nn.Module, s: Tensor, x1: Tensor, x0: Tensor, eps: Tensor,
                exact: Velocity) -> dict[str, Tensor]:
    """The integrands on the grid s (S,), each (S,) float64: "terminal" T(s) from the jumps of
    ``x1`` (n, d) noise, and "fm" FM(s), "variance" V(s), "velocity_error" E(s) from data
    ``x0`` paired with noise ``eps`` (n, d); ``exact`` is the true velocity u(x, s)."""
    rows = {"terminal": [], "fm": [], "variance": [], "velocity_error": []}
    ones, v = torch.ones(len(x1), dtype=x1.dtype), eps - x0
    for s_i in s.tolist():
        s_vec, s_data = (torch.full((len(a),), s_i, dtype=a.dtype) for a in (x1, x0))
        f, dfds = displacement_and_dfds(net, x1, ones, s_vec)
        with torch.no_grad():
            u_end = velocity(net, x1 + f, s_vec)
            xs = (1 - s_i) * x0 + s_i * eps  # x ~ p_s
            u_net, u = velocity(net, xs, s_data), exact(xs, s_data)
            diffs = {"terminal": dfds - u_end, "fm": u_net - v, "variance": u - v,
                     "velocity_error": u_net - u}
        for key, d in diffs.items():
            rows[key].append(float(d.square().sum(1).mean()))
    return {k: torch.tensor(vals, dtype=torch.float64) for k, vals in rows.items()}


def theorem1_bound(s: Tensor, L: Tensor, terms: dict[str, Tensor]) -> dict[str, float]:
    """Both parts of the right-hand side from the grid s, L(s) and ``bound_terms``:

    * "rhs": 2 Lam int lambda (T + E), the bound on E||Y(0) - Z(0)||^2 >= W2^2;
    * "rhs_loss": 2 Lam int lambda (T + FM), the lambda-weighted per-time TVM loss part;
    * "C": -2 Lam int lambda V, so that rhs = rhs_loss + C;
    * "unweighted": int (T + E) (lambda = 1, no factor), "terminal_part" and
      "velocity_part": 2 Lam int lambda T and 2 Lam int lambda E; "Lam", "lambda_max".
    """
    lam = gronwall_weight(s, L)
    Lam = float(trapezoid(s, lam))

    def weighted(y: Tensor) -> float:
        return 2 * Lam * float(trapezoid(s, lam * y))

    T, E = terms["terminal"], terms["velocity_error"]
    return {"rhs": weighted(T + E), "rhs_loss": weighted(T + terms["fm"]),
            "C": -weighted(terms["variance"]), "unweighted": float(trapezoid(s, T + E)),
            "terminal_part": weighted(T), "velocity_part": weighted(E), "Lam": Lam,
            "lambda_max": float(lam.max())}


def measure_bound(net: nn.Module, s: Tensor, x1: Tensor, x0: Tensor, eps: Tensor,
                  exact: Velocity, n_lipschitz: int = 128, iters: int = 8,
                  seed: int = 0) -> dict:
    """Everything of Theorem 1 for the one-jump map of ``net`` (unconditional): L(s) from the
    power iteration at the first ``n_lipschitz`` points of p_s (x0, eps) and of the model's jump
    Y(s) (from x1), the integrands of ``bound_terms`` and the parts of ``theorem1_bound``.
    Returns {"s", "L", "lambda", "terms": {...}, **bound} with lists for the curves."""
    m = min(n_lipschitz, len(x1), len(x0))

    def points(s_i: float) -> Tensor:
        s_vec = torch.full((m,), s_i, dtype=x1.dtype)
        with torch.no_grad():
            jump = x1[:m] + displacement_and_dfds(net, x1[:m], torch.ones_like(s_vec), s_vec)[0]
        return torch.cat([(1 - s_i) * x0[:m] + s_i * eps[:m], jump])

    L = lipschitz_profile(net, s, points, iters, seed)
    terms = bound_terms(net, s, x1, x0, eps, exact)
    return {"s": s.tolist(), "L": L.tolist(), "lambda": gronwall_weight(s, L).tolist(),
            "terms": {k: v.tolist() for k, v in terms.items()},
            **theorem1_bound(s, L, terms)}
