"""Every sampler of the project, run from t = 1 (noise) to t = 0 (data), with NFE counted.

One registry, :data:`SOLVERS`, from name to solver:

* ``"euler"``, ``"heun"``, ``"dpm++2m"``: ODE solvers of dx/dt = u(x, t) for a velocity field
  (of a flow-matching network, u(x, t) = F(x, t, t));
* ``"flowmap"``: k jumps of a flow map, x_s = x_t + (s - t) F(x_t, t, s) (TVM Eq. 4, Fig. 3).

A velocity solver is ``solver(velocity, x, times, return_trajectory, nfe_per_call)`` with
``velocity(x, t)``; the flow-map solver takes ``F(x, t, s)`` in the velocity's place. Time grids
(:func:`time_grid`) are uniform in t or uniform in log-SNR (CMT's teacher grid). :func:`sample`
is the one entry point from a network: it picks the grid, folds the guidance (a network input w,
TVM's scaled parameterization, or classifier-free guidance outside the network, which costs two
NFE per call) and returns :class:`Samples`. One NFE is one batched network evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tvmlib.core.flowmap import check_guidance, output_scale

Velocity = Callable[[Tensor, Tensor], Tensor]  # u(x (B, ...), t (B,)) -> (B, ...)
FlowMap = Callable[[Tensor, Tensor, Tensor], Tensor]  # F(x, t (B,), s (B,)) -> (B, ...)
T_MAX = 80.0 / 81.0  # EDM sigma_max = 80 as t = sigma / (1 + sigma)
T_MIN = 0.002 / 1.002  # EDM sigma_min = 0.002
GRIDS = ("uniform", "logsnr")


@dataclass
class Samples:
    """A sampler's result: final x (B, ...), NFE used, the time grid (K+1,) and optionally the
    trajectory (K+1, B, ...), with trajectory[0] the noise and trajectory[-1] = x."""

    x: Tensor
    nfe: int
    times: Tensor
    trajectory: Tensor | None = None


# ---- time grids ------------------------------------------------------------------------------

def logsnr(t: Tensor) -> Tensor:
    """logSNR(t) = 2 log((1 - t) / t) for x_t = (1 - t) x0 + t eps (float64)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return 2.0 * (torch.log1p(-t) - torch.log(t))


def t_of_logsnr(lam: Tensor) -> Tensor:
    """Inverse of :func:`logsnr`: t = sigmoid(-logSNR / 2)."""
    return torch.sigmoid(-0.5 * torch.as_tensor(lam, dtype=torch.float64))


def time_grid(steps: int, grid: str = "uniform", t_max: float = T_MAX, t_min: float = T_MIN,
              exact_ends: bool = True) -> Tensor:
    """``steps + 1`` decreasing times (float64).

    ``"uniform"``: linspace(1, 0) (or from t_max to t_min without ``exact_ends``).
    ``"logsnr"``: uniform in log-SNR from t_max to t_min; with ``exact_ends`` the first and last
    point become exactly 1 and 0, so sampling starts from pure noise and ends on data (CMT
    pitfall 5). The EDM defaults are sigma_max = 80, sigma_min = 0.002.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if grid == "uniform":
        hi, lo = (1.0, 0.0) if exact_ends else (t_max, t_min)
        return torch.linspace(hi, lo, steps + 1, dtype=torch.float64)
    if grid != "logsnr":
        raise ValueError(f"unknown grid {grid!r}; valid: {', '.join(GRIDS)}")
    if not 0.0 < t_min < t_max < 1.0:
        raise ValueError(f"need 0 < t_min < t_max < 1 for a log-SNR grid, got t_min={t_min}, "
                         f"t_max={t_max}")
    lam = torch.linspace(float(logsnr(t_max)), float(logsnr(t_min)), steps + 1,
                         dtype=torch.float64)  # increasing log-SNR = decreasing t
    times = t_of_logsnr(lam)
    if exact_ends:
        times[0], times[-1] = 1.0, 0.0
    return times


def check_grid(times: Tensor) -> Tensor:
    """``times`` as a float64 vector; raises unless strictly decreasing within [0, 1]."""
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    if times.numel() < 2 or not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"times must be a strictly decreasing grid of >= 2 points, got {times}")
    if times.min() < 0 or times.max() > 1:
        raise ValueError("times must lie in [0, 1]")
    return times


def _tvec(t: float, x: Tensor) -> Tensor:
    """(B,) times on x's device: float64 for float64 x (exact tests), else float32."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=dtype)


def _solve(step, x: Tensor, times: Tensor, return_trajectory: bool, nfe_per_step: int) -> Samples:
    """``step(x, t, s)`` over consecutive (t, s) of the grid ``times`` (checked), keeping the
    states if asked; each step costs ``nfe_per_step`` NFE."""
    times = check_grid(times)
    traj = [x] if return_trajectory else None
    for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
        x = step(x, t, s)
        if traj is not None:
            traj.append(x)
    return Samples(x, (len(times) - 1) * nfe_per_step, times,
                   torch.stack(traj) if traj is not None else None)


# ---- the solvers -----------------------------------------------------------------------------

def euler(velocity: Velocity, x: Tensor, times: Tensor, return_trajectory: bool = False,
          nfe_per_call: int = 1) -> Samples:
    """Explicit Euler: x_{k+1} = x_k + (t_{k+1} - t_k) u(x_k, t_k). NFE = steps."""
    return _solve(lambda x, t, s: x + (s - t) * velocity(x, _tvec(t, x)), x, times,
                  return_trajectory, nfe_per_call)


def heun(velocity: Velocity, x: Tensor, times: Tensor, return_trajectory: bool = False,
         nfe_per_call: int = 1) -> Samples:
    """Heun (explicit trapezoid): an Euler predictor, then the average of the two slopes.
    NFE = 2 * steps; the global error is O(h^2) against Euler's O(h)."""

    def step(x: Tensor, t: float, s: float) -> Tensor:
        u0 = velocity(x, _tvec(t, x))
        return x + 0.5 * (s - t) * (u0 + velocity(x + (s - t) * u0, _tvec(s, x)))

    return _solve(step, x, times, return_trajectory, 2 * nfe_per_call)


def half_logsnr(t: float) -> float:
    """lambda(t) = log((1 - t) / t), half the log-SNR: -inf at t = 1, +inf at t = 0."""
    if t >= 1.0:
        return -math.inf
    return math.inf if t <= 0.0 else math.log((1.0 - t) / t)


def dpm_solver_2m(velocity: Velocity, x: Tensor, times: Tensor, return_trajectory: bool = False,
                  nfe_per_call: int = 1) -> Samples:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2) on the linear path
    alpha_t = 1 - t, sigma_t = t. NFE = steps.

    The data prediction comes from the velocity, x0_hat = x - t u(x, t) (u = E[eps - x0 | x_t]).
    A step from t to s < t with lambda = log((1 - t) / t), h = lambda(s) - lambda(t) is

        x_s = (s / t) x_t + (1 - s / t) D,   D = x0_hat_k (first order: DDIM = Euler here),

    corrected by the previous prediction, D = (1 + 1 / (2 r)) x0_hat_k - x0_hat_{k-1} / (2 r),
    r = h_{k-1} / h_k. A step from t = 1 or onto t = 0 has an infinite h: it is taken first
    order, and the step onto s = 0 returns x_0 = D.
    """
    memory = {"x0": None, "h": math.inf}  # the previous data prediction and step in lambda

    def step(x: Tensor, t: float, s: float) -> Tensor:
        x0_hat = x - t * velocity(x, _tvec(t, x))
        h = half_logsnr(s) - half_logsnr(t)
        D = x0_hat
        if memory["x0"] is not None and math.isfinite(memory["h"]) and math.isfinite(h):
            r = memory["h"] / h
            D = x0_hat + (x0_hat - memory["x0"]) / (2.0 * r)
        memory.update(x0=x0_hat, h=h)
        return D if s == 0.0 else (s / t) * x + (1.0 - s / t) * D

    return _solve(step, x, times, return_trajectory, nfe_per_call)


def flowmap(F: FlowMap, x: Tensor, times: Tensor, return_trajectory: bool = False,
            nfe_per_call: int = 1) -> Samples:
    """k flow-map jumps x <- x + (s - t) F(x, t, s) over consecutive (t, s) (TVM Fig. 3). For
    an exact flow map (``tvmlib.core.analytic.GaussianFlow``) this is the exact trajectory.
    NFE = number of jumps."""
    return _solve(lambda x, t, s: x + (s - t) * F(x, _tvec(t, x), _tvec(s, x)), x, times,
                  return_trajectory, nfe_per_call)


SOLVERS = {"euler": euler, "heun": heun, "dpm++2m": dpm_solver_2m, "flowmap": flowmap}


# ---- from a network --------------------------------------------------------------------------

def _batch(v, x: Tensor):
    """v as a (B,) tensor on x's device (None stays None), for doubling a batch under CFG."""
    if v is None or (torch.is_tensor(v) and v.dim() == 1):
        return v
    return torch.full((x.shape[0],), float(v), device=x.device)


def network_output(net: nn.Module, y: Tensor | None = None, w: Tensor | float | None = None,
                   cfg_scale: float | None = None, scale_param: bool = False
                   ) -> tuple[FlowMap, int]:
    """(F(x, t, s), NFE per call) of a network in the project signature.

    F = [w] net(x, t, s, y, w): ``w`` is the guidance input of a guidance-conditioned network
    (TVM's folded CFG), multiplying the output with ``scale_param`` (TVM Sec. 4). With
    ``cfg_scale``, classifier-free guidance outside the network (an FM teacher):
    F = F(null) + cfg_scale (F(y) - F(null)), one doubled batch, 2 NFE per call.
    """
    def F(x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        out = net(x, t, s, y, w)
        return output_scale(w, scale_param, out) * out

    if cfg_scale is None:
        return F, 1
    if y is None:
        raise ValueError("cfg_scale needs class labels y")
    if scale_param and w is not None:
        raise ValueError("classifier-free guidance outside the network (cfg_scale) and a "
                         "scaled guidance input w (scale_param) do not mix; pick one")
    null = torch.full_like(y, net.num_classes)

    def guided(x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        w2 = _batch(w, x)
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([s, s]),
                   torch.cat([y, null]), None if w2 is None else torch.cat([w2, w2]))
        F_y, F_null = both.chunk(2)
        return F_null + cfg_scale * (F_y - F_null)

    return guided, 2


@torch.no_grad()
def sample(net: nn.Module, noise: Tensor, steps: int | None = None, solver: str = "flowmap",
           times: Tensor | None = None, grid: str = "uniform", y: Tensor | None = None,
           w: Tensor | float | None = None, cfg_scale: float | None = None,
           scale_param: bool = False, return_trajectory: bool = False,
           batch_size: int | None = None, **grid_kw) -> Samples:
    """Samples of ``net`` from ``noise`` (the state at t = 1) with ``solver`` in :data:`SOLVERS`.

    Give ``steps`` (then the grid is ``time_grid(steps, grid, **grid_kw)``) or an explicit
    decreasing ``times``. ``y``, ``w``, ``cfg_scale`` and ``scale_param`` as in
    :func:`network_output`; velocity solvers evaluate the network at s = t. ``batch_size``
    bounds the samples per network call (the results are concatenated). No gradients. A
    guidance input w must be finite and > 0 (ValueError).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    check_guidance(w)
    if cfg_scale is not None and not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
    if (steps is None) == (times is None):
        raise ValueError("give exactly one of steps or times")
    times = time_grid(steps, grid, **grid_kw) if times is None else check_grid(times)
    if batch_size is not None and len(noise) > batch_size:
        parts = [sample(net, noise[i:i + batch_size], times=times, solver=solver,
                        y=None if y is None else y[i:i + batch_size],
                        w=w[i:i + batch_size] if torch.is_tensor(w) and w.dim() else w,
                        cfg_scale=cfg_scale, scale_param=scale_param,
                        return_trajectory=return_trajectory)
                 for i in range(0, len(noise), batch_size)]
        traj = torch.cat([p.trajectory for p in parts], 1) if return_trajectory else None
        return Samples(torch.cat([p.x for p in parts]), parts[0].nfe, times, traj)
    F, cost = network_output(net, y, w, cfg_scale, scale_param)
    field = F if solver == "flowmap" else (lambda x, t: F(x, t, t))
    return SOLVERS[solver](field, noise, times, return_trajectory, nfe_per_call=cost)
