"""Samplers that run t = 1 (noise) -> 0 (data), counting network evaluations (NFE).

* ODE samplers for a velocity field u(x, t): ``euler`` (first order) and ``heun`` (second
  order), on any decreasing time grid; ``sample_ode`` wraps a network as u(x, t) = F(x, t, t).
* k-step flow-map sampling: x_s = x_t + (s - t) F(x_t, t, s) (TVM paper Eq. 4, Fig. 3).

One NFE is one batched network evaluation; classifier-free guidance that is not folded into
the network costs two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tvmlib.flowmap import displacement

Velocity = Callable[[Tensor, Tensor], Tensor]  # u(x (B, ...), t (B,)) -> (B, ...)


@dataclass
class Samples:
    """Result of a sampler: final x (B, ...), NFE used, the time grid (K+1,), and optionally
    the whole trajectory (K+1, B, ...) with trajectory[0] the noise and trajectory[-1] = x."""

    x: Tensor
    nfe: int
    times: Tensor
    trajectory: Tensor | None = None


def time_grid(steps: int, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """``steps + 1`` uniformly spaced times from t_start down to t_end (float64)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


def _check_grid(times: Tensor) -> Tensor:
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    if times.numel() < 2 or not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"times must be a strictly decreasing grid of >= 2 points, got {times}")
    if times.min() < 0 or times.max() > 1:
        raise ValueError("times must lie in [0, 1]")
    return times


def _tvec(t: Tensor, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)


def euler(velocity: Velocity, x: Tensor, times: Tensor, return_trajectory: bool = False,
          nfe_per_call: int = 1) -> Samples:
    """Explicit Euler: x_{k+1} = x_k + (t_{k+1} - t_k) u(x_k, t_k). NFE = steps."""
    times = _check_grid(times)
    traj = [x] if return_trajectory else None
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + float(t_next - t) * velocity(x, _tvec(t, x))
        if traj is not None:
            traj.append(x)
    steps = len(times) - 1
    return Samples(x, steps * nfe_per_call, times, torch.stack(traj) if traj else None)


def heun(velocity: Velocity, x: Tensor, times: Tensor, return_trajectory: bool = False,
         nfe_per_call: int = 1) -> Samples:
    """Heun (explicit trapezoid): predictor Euler, corrector averages the two slopes.

    NFE = 2 * steps. The global error is O(h^2) against Euler's O(h).
    """
    times = _check_grid(times)
    traj = [x] if return_trajectory else None
    for t, t_next in zip(times[:-1], times[1:]):
        h = float(t_next - t)
        u0 = velocity(x, _tvec(t, x))
        x_pred = x + h * u0
        x = x + 0.5 * h * (u0 + velocity(x_pred, _tvec(t_next, x)))
        if traj is not None:
            traj.append(x)
    steps = len(times) - 1
    return Samples(x, 2 * steps * nfe_per_call, times, torch.stack(traj) if traj else None)


SOLVERS = {"euler": euler, "heun": heun}


def net_velocity(net: nn.Module, y: Tensor | None = None, w: Tensor | float | None = None,
                 cfg_scale: float | None = None) -> tuple[Velocity, int]:
    """u(x, t) = F(x, t, t, y, w) and its cost in NFE per call.

    With ``cfg_scale`` (classifier-free guidance outside the network, as for an FM teacher):
    u = u(x, t, null) + cfg_scale (u(x, t, y) - u(x, t, null)), which costs 2 NFE per call.
    """
    if cfg_scale is None:
        return (lambda x, t: net(x, t, t, y, w)), 1
    if y is None:
        raise ValueError("cfg_scale needs class labels y")
    null = torch.full_like(y, net.num_classes)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        u_c, u_u = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([t, t]),
                       torch.cat([y, null])).chunk(2)
        return u_u + cfg_scale * (u_c - u_u)

    return guided, 2


@torch.no_grad()
def sample_ode(net: nn.Module, noise: Tensor, steps: int | None = None, method: str = "euler",
               times: Tensor | None = None, y: Tensor | None = None,
               w: Tensor | float | None = None, cfg_scale: float | None = None,
               return_trajectory: bool = False) -> Samples:
    """Integrate dx/dt = F(x, t, t) from t = 1 to 0 with ``method`` in {"euler", "heun"}.

    Give either ``steps`` (uniform grid) or an explicit decreasing ``times`` grid.
    """
    if method not in SOLVERS:
        raise ValueError(f"unknown ODE method {method!r}; valid: {', '.join(SOLVERS)}")
    times = _resolve_grid(steps, times)
    velocity, cost = net_velocity(net, y, w, cfg_scale)
    return SOLVERS[method](velocity, noise, times, return_trajectory, nfe_per_call=cost)


def _resolve_grid(steps: int | None, times: Tensor | None) -> Tensor:
    if (steps is None) == (times is None):
        raise ValueError("give exactly one of steps or times")
    return time_grid(steps) if times is None else _check_grid(times)


@torch.no_grad()
def sample_flowmap(net: nn.Module, noise: Tensor, steps: int | None = None,
                   times: Tensor | None = None, y: Tensor | None = None,
                   w: Tensor | float | None = None, scale_param: bool = False,
                   return_trajectory: bool = False) -> Samples:
    """k-step flow-map sampling on any decreasing grid (TVM Fig. 3):
    x <- x + (s - t) [w] F(x, t, s, y, w) for consecutive (t, s). NFE = number of jumps."""
    times = _resolve_grid(steps, times)
    x, traj = noise, ([noise] if return_trajectory else None)
    for t, s in zip(times[:-1], times[1:]):
        x = x + displacement(net, x, _tvec(t, x), _tvec(s, x), y, w, scale_param)
        if traj is not None:
            traj.append(x)
    return Samples(x, len(times) - 1, times, torch.stack(traj) if traj else None)


# ---- appended: a multistep sampler for the linear path ------------------------------------

def half_logsnr(t: float) -> float:
    """lambda(t) = log(alpha_t / sigma_t) = log((1 - t) / t) for x_t = (1 - t) x0 + t eps
    (half the log-SNR); -inf at t = 1 (pure noise) and +inf at t = 0 (data)."""
    if t >= 1.0:
        return -math.inf
    if t <= 0.0:
        return math.inf
    return math.log((1.0 - t) / t)


def dpm_solver_2m(velocity: Velocity, x: Tensor, times: Tensor, return_trajectory: bool = False,
                  nfe_per_call: int = 1) -> Samples:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2) for a velocity field on the
    linear path alpha_t = 1 - t, sigma_t = t. NFE = steps.

    The data prediction comes from the velocity, x0_hat(x, t) = x - t u(x, t) (because
    u = E[eps - x0 | x_t] and x_t = (1 - t) x0 + t eps), so no x-prediction network is needed.
    One step from t to s < t, with lambda = log((1 - t) / t) and h = lambda(s) - lambda(t):

        x_s = (s / t) x_t + (1 - s / t) D       (sigma_s / sigma_t = s / t,
                                                 alpha_s (1 - e^{-h}) = 1 - s / t)

    D = x0_hat(x_t, t) is the first-order step (DDIM, which for this path *is* the Euler step);
    the multistep correction uses the previous data prediction,

        D = (1 + 1 / (2 r)) x0_hat_k - 1 / (2 r) x0_hat_{k-1},   r = h_{k-1} / h_k.

    Exact endpoints: a step from t = 1 or onto t = 0 has an infinite h. From t = 1 there is no
    previous prediction (first order), the step after it gets r = inf (weight 0, first order),
    and a step onto s = 0 returns x_0 = D taken first order (DPM-Solver's lower-order final
    step; the second-order weight would be infinite).
    """
    times = _check_grid(times)
    traj = [x] if return_trajectory else None
    x0_prev, h_prev = None, math.inf
    for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
        u = velocity(x, _tvec(t, x))
        x0_hat = x - t * u
        h = half_logsnr(s) - half_logsnr(t)
        D = x0_hat
        if x0_prev is not None and math.isfinite(h_prev) and math.isfinite(h):
            r = h_prev / h
            D = x0_hat + (x0_hat - x0_prev) / (2.0 * r)
        x = D if s == 0.0 else (s / t) * x + (1.0 - s / t) * D
        x0_prev, h_prev = x0_hat, h
        if traj is not None:
            traj.append(x)
    steps = len(times) - 1
    return Samples(x, steps * nfe_per_call, times, torch.stack(traj) if traj else None)
