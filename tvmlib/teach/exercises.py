"""Checks for the classroom exercises of the notebooks.

Each ``check_*`` calls a student's function on fixed random inputs, compares it with the library,
returns None on success and otherwise raises ``AssertionError`` with a message that says what is
wrong (shape, value, gradient) and, for the usual mistakes (a sign error, a missing factor, a
tangent on the wrong input), which mistake it looks like. Student copies of the notebooks are
made by ``python -m tvmlib.apps.exercises``. Notebook 05's check, ``check_cmt_loss``, is in
``tvmlib.teach.exercises_cmt``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from tvmlib.teach import checking as ck
from tvmlib.teach.exercises_cmt import check_cmt_loss
from tvmlib.teach.exercises_losses import check_cfg_target, check_meanflow_target, check_tvm_terms

__all__ = ["check_attention_jvp", "check_cfg_target", "check_cmt_loss", "check_euler",
           "check_fm_loss", "check_meanflow_target", "check_terminal_velocity", "check_tvm_terms"]

# ---- flow matching loss ----------------------------------------------------------------------

def check_fm_loss(fn: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(net, x0, eps, t) -> loss``, the flow matching loss (TVM paper Sec. 2)

        L = mean || F(x_t, t, t) - (eps - x0) ||^2,   x_t = (1 - t) x0 + t eps,

    with the squared error averaged over all elements (as ``tvmlib.core.losses.FMLoss``), on an
    ``MLP2D`` with x0, eps: (64, 2) and t: (64,).
    """
    name = "check_fm_loss"
    net = ck.small_mlp(0)
    g = ck.gen(1)
    x0 = torch.randn(64, 2, generator=g) * 0.5 + torch.tensor([1.0, -1.0])
    eps = torch.randn(64, 2, generator=g)
    t = torch.rand(64, generator=g)
    tc = t[:, None]

    def fm(xt: Tensor, target: Tensor, reduce=lambda e: e.mean()) -> Tensor:
        return reduce((net(xt, t, t) - target).square())

    want = fm((1 - tc) * x0 + tc * eps, eps - x0)
    w_val = float(want.detach())
    got = fn(net, x0.clone(), eps.clone(), t.clone())
    if not torch.is_tensor(got):
        ck.fail(name, f"the loss must be a torch.Tensor, got {type(got).__name__}")
    if got.dim() != 0:
        ck.fail(name, f"the loss must be a scalar (0-d) tensor, got shape {tuple(got.shape)}: "
                    "average the squared error with .mean()")
    rtol, atol = 1e-4, 1e-6
    if not ck.close(got, want, rtol, atol):
        swapped = (tc * x0 + (1 - tc) * eps)  # data at t = 1
        wrong = {
            "the velocity target has the wrong sign: with x_t = (1 - t) x0 + t eps the "
            "target is v = eps - x0, not x0 - eps": fm((1 - tc) * x0 + tc * eps, x0 - eps),
            "t is mixed up: you put the data at t = 1 (x_t = t x0 + (1 - t) eps); the "
            "convention is t = 0 data, t = 1 noise, x_t = (1 - t) x0 + t eps":
                fm(swapped, eps - x0),
            "t is mixed up: you used the t = 1-data convention (x_t = t x0 + (1 - t) eps, "
            "v = x0 - eps); here t = 0 is data and t = 1 noise": fm(swapped, x0 - eps),
            "you summed the squared error over coordinates; average over all elements "
            "(.mean() of the squared error)":
                fm((1 - tc) * x0 + tc * eps, eps - x0, lambda e: e.sum(1).mean()),
            "you summed instead of averaging; use .mean()":
                fm((1 - tc) * x0 + tc * eps, eps - x0, lambda e: e.sum()),
        }
        for why, val in wrong.items():
            if ck.close(got, val, rtol, atol):
                ck.fail(name, f"{why} (expected {w_val:.6g}, got {float(got.detach()):.6g})")
        ck.fail(name, f"wrong value: expected {w_val:.6g}, got {float(got.detach()):.6g}")
    ck.check_grads(name, ck.grads(got, net), ck.grads(want, net),
                 "do not compute the loss under torch.no_grad() or .detach() the prediction",
                 1e-3, 1e-7)


# ---- Euler sampler ---------------------------------------------------------------------------

def _check_euler_calls(name: str, used: list[float], times: Tensor) -> None:
    """The times at which a student's Euler called the velocity: K calls, at t_0 .. t_{K-1}."""
    K = len(times) - 1
    if len(used) != K:
        hint = ("one step too many" if len(used) == K + 1 else
                "one step too few" if len(used) == K - 1 else "wrong number of steps")
        ck.fail(name, f"{hint}: a grid of {K + 1} times has {K} intervals, so Euler calls the "
                    f"velocity {K} times (at t_0 .. t_{K - 1}), but yours called it {len(used)} "
                    f"times")
    at = torch.tensor(used, dtype=torch.float64)
    if torch.allclose(at, times[1:].flip(0)) or torch.allclose(at, times[:-1].flip(0)):
        ck.fail(name, "wrong direction of time: sampling starts from noise at t = 1 and walks "
                    "the grid in the given order down to t = 0")
    if torch.allclose(at, times[1:]):
        ck.fail(name, "the velocity is evaluated at the end of each step (t_{k+1}); explicit "
                    "Euler uses the start of the step, u(x_k, t_k)")


def check_euler(fn: Callable[[Callable, Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(velocity, x, times) -> x`` at the end of the grid: explicit Euler
    x_{k+1} = x_k + (t_{k+1} - t_k) u(x_k, t_k) on a decreasing grid from t = 1 (noise) to 0,
    against ``tvmlib.core.solvers.euler`` on the exact Gaussian flow
    ``tvmlib.core.analytic.GaussianFlow`` (its velocity is closed-form), plus first-order
    convergence to the exact flow map.
    ``velocity(x, t)`` takes x: (B, 2) and t a (B,) tensor (or a float, or a 0-d tensor).
    """
    from tvmlib.core.analytic import GaussianFlow
    from tvmlib.core.solvers import euler, time_grid

    name = "check_euler"
    flow = GaussianFlow(torch.tensor([1.5, -0.5]), sigma=0.4)
    x1 = torch.randn(16, 2, generator=ck.gen(2), dtype=torch.float64)
    calls: list[float] = []

    def velocity(x: Tensor, t) -> Tensor:
        tt = torch.as_tensor(t, dtype=torch.float64)
        if tt.dim() > 1 or (tt.dim() == 1 and tt.numel() not in (1, x.shape[0])):
            ck.fail(name, f"velocity(x, t) needs t as a float or a ({x.shape[0]},) tensor, got "
                        f"shape {tuple(tt.shape)}")
        calls.append(float(tt.flatten()[0]))
        return flow.velocity(x, tt.flatten().expand(x.shape[0]))

    def run(times: Tensor) -> Tensor:
        calls.clear()
        out = fn(velocity, x1.clone(), times.clone())
        if torch.is_tensor(out) and out.dim() == 3 and out.shape[1:] == x1.shape:
            ck.fail(name, f"return only the final x, shape {tuple(x1.shape)}, not the whole "
                        f"trajectory {tuple(out.shape)}")
        if not torch.is_tensor(out):
            ck.fail(name, f"return the final x as a tensor of shape {tuple(x1.shape)}, got "
                        f"{type(out).__name__}")
        return ck.require_tensor(name, "the returned x", out, tuple(x1.shape))

    times = torch.tensor([1.0, 0.8, 0.55, 0.35, 0.2, 0.1, 0.0], dtype=torch.float64)
    got = run(times)
    _check_euler_calls(name, list(calls), times)
    want = euler(velocity, x1.clone(), times).x
    rtol, atol = 1e-7, 1e-9
    if not ck.close(got, want, rtol, atol):
        x_back = x1.clone()
        for t, t_next in zip(times[:-1], times[1:]):
            x_back = x_back - float(t_next - t) * flow.velocity(x_back, t.expand(16))
        if ck.close(got, x_back, rtol, atol):
            ck.fail(name, "wrong direction of time: the step is x + (t_{k+1} - t_k) u with "
                        "t_{k+1} - t_k < 0 (time decreases from noise to data); yours adds "
                        "(t_k - t_{k+1}) u")
        ck.fail(name, f"wrong final x: {ck.err(got, want)}")
    errors = []
    exact = flow.flow_map(x1, torch.ones(16, dtype=torch.float64),
                          torch.zeros(16, dtype=torch.float64))
    for steps in (8, 16, 32):
        errors.append(float((run(time_grid(steps)) - exact).abs().max()))
    ratios = [a / b for a, b in zip(errors[:-1], errors[1:])]
    if not all(1.6 < r < 2.5 for r in ratios):
        ck.fail(name, f"not first order: doubling the steps should halve the error against the "
                    f"exact flow, got errors {errors} (ratios {ratios})")


# ---- terminal velocity d/ds f ----------------------------------------------------------------

def check_terminal_velocity(fn: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(net, x_t, t, s) -> d/ds f_theta(x_t, t, s)`` for f = (s - t) F(x_t, t, s)
    (TVM paper Eq. 17: d/ds f = F + (s - t) d/ds F), computed with ``torch.func.jvp`` whose
    tangent is 1 on s and 0 on x and t; compared in float64 with
    ``tvmlib.core.flowmap.displacement_and_dfds``, gradients w.r.t. the parameters included.
    """
    from tvmlib.core.flowmap import displacement_and_dfds

    name = "check_terminal_velocity"
    net = ck.small_mlp(3, torch.float64)
    g = ck.gen(4)
    B = 32
    x = torch.randn(B, 2, generator=g, dtype=torch.float64)
    t = 0.2 + 0.8 * torch.rand(B, generator=g, dtype=torch.float64)
    s = t * torch.rand(B, generator=g, dtype=torch.float64)
    got = fn(net, x.clone(), t.clone(), s.clone())
    if isinstance(got, tuple):
        ck.fail(name, f"return only d/ds f, one tensor of shape {(B, 2)}, not a tuple of "
                    f"{len(got)} (torch.func.jvp returns (f, d/ds f))")
    got = ck.require_tensor(name, "d/ds f", got, (B, 2))
    _, want = displacement_and_dfds(net, x, t, s)
    rtol, atol = 1e-8, 1e-10
    if not ck.close(got, want, rtol, atol):
        col = (s - t)[:, None]
        F = lambda t_, s_, x_=x: net(x_, t_, s_)  # noqa: E731
        one = torch.ones(B, dtype=torch.float64)
        _, dFds = torch.func.jvp(lambda s_: F(t, s_), (s,), (one,))
        wrong = {
            "missing the (s - t) factor: you differentiated F, but f = (s - t) F, so "
            "d/ds f = F + (s - t) dF/ds": dFds,
            "missing the product rule's F term: d/ds [(s - t) F] = F + (s - t) dF/ds": col * dFds,
            "you returned F itself: differentiate f = (s - t) F with respect to s":
                F(t, s),
            "the tangent is on t, not s: use tangent 1 on s and 0 on x and t":
                torch.func.jvp(lambda t_: (s - t_)[:, None] * F(t_, s),
                               (t,), (one,))[1],
            "the tangent is on x, not s: use tangent 1 on s and 0 on x and t":
                torch.func.jvp(lambda x_: col * F(t, s, x_), (x,), (torch.ones_like(x),))[1],
            "the tangent has the wrong sign (or the displacement is (t - s) F): f = (s - t) F, "
            "tangent +1 on s": -want,
        }
        for why, val in wrong.items():
            if ck.close(got, val, rtol, atol):
                ck.fail(name, why)
        ck.fail(name, f"wrong d/ds f: {ck.err(got, want)}")
    weight = torch.randn(B, 2, generator=g, dtype=torch.float64)
    ck.check_grads(name, ck.grads(got, net, weight), ck.grads(want, net, weight),
                 "TVM trains through the JVP, so do not .detach() it or run it under "
                 "torch.no_grad()", 1e-6, 1e-12)


# ---- JVP of attention ------------------------------------------------------------------------

def check_attention_jvp(fn: Callable[..., tuple[Tensor, Tensor]]) -> None:
    """Check ``fn(q, k, v, tq, tk, tv) -> (O, Ȯ)``: softmax attention O = softmax(s Q K^T) V
    (s = 1/sqrt(d), no mask) and its tangent (docs/jvp_attention.md §1)

        Ṡ = s (Q̇ K^T + Q K̇^T),  μ = rowsum(P ∘ Ṡ),  Ȯ = (P ∘ Ṡ) V + P V̇ − μ ∘ O,

    in plain PyTorch, against ``tvmlib.kernels.jvp_ref`` in float64. Inputs (2, 2, 8, 4).
    """
    from tvmlib.kernels.reference import attention_ref, jvp_ref

    name = "check_attention_jvp"
    g = ck.gen(5)
    shape = (2, 2, 8, 4)
    q, k, v, tq, tk, tv = (torch.randn(shape, generator=g, dtype=torch.float64)
                           for _ in range(6))
    out = fn(*(a.clone() for a in (q, k, v, tq, tk, tv)))
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        ck.fail(name, "return a pair (O, Ȯ) of tensors")
    o = ck.require_tensor(name, "O", out[0], shape)
    to = ck.require_tensor(name, "Ȯ", out[1], shape)
    want_o, want_to = jvp_ref(q, k, v, tq, tk, tv)
    rtol, atol = 1e-7, 1e-9
    if not ck.close(o, want_o, rtol, atol):
        if ck.close(o, attention_ref(q, k, v, scale=1.0), rtol, atol):
            ck.fail(name, "wrong O: the scores need the scale s = 1/sqrt(d) (S = s Q K^T)")
        keys_dim = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-2) @ v
        if ck.close(o, keys_dim, rtol, atol):
            ck.fail(name, "wrong O: the softmax runs over keys (the last dim, dim=-1)")
        ck.fail(name, f"wrong O: {ck.err(o, want_o)}")
    if not ck.close(to, want_to, rtol, atol):
        sc = q.shape[-1] ** -0.5
        P = torch.softmax(sc * q @ k.transpose(-1, -2), dim=-1)  # (B, H, N, N)

        def tangent(sdot: Tensor, mu_sign: float = 1.0, with_tv: bool = True) -> Tensor:
            mu = (P * sdot).sum(-1, keepdim=True)  # (B, H, N, 1)
            res = (P * sdot) @ v - mu_sign * mu * want_o
            return res + P @ tv if with_tv else res

        sdot = sc * (tq @ k.transpose(-1, -2) + q @ tk.transpose(-1, -2))
        wrong = {
            "missing the μ correction: Ȯ = (P ∘ Ṡ) V + P V̇ − μ ∘ O with μ = rowsum(P ∘ Ṡ), "
            "the tangent of the softmax normaliser": tangent(sdot, 0.0),
            "the μ term has the wrong sign: Ȯ = (P ∘ Ṡ) V + P V̇ − μ ∘ O": tangent(sdot, -1.0),
            "missing the P V̇ term (the tangent of V)": tangent(sdot, with_tv=False),
            "Ṡ misses the scale s = 1/sqrt(d)": tangent(sdot / sc),
            "Ṡ misses the Q K̇^T term (the tangent of K)": tangent(sc * tq @ k.transpose(-1, -2)),
            "Ṡ misses the Q̇ K^T term (the tangent of Q)": tangent(sc * q @ tk.transpose(-1, -2)),
        }
        for why, val in wrong.items():
            if ck.close(to, val, rtol, atol):
                ck.fail(name, f"wrong tangent Ȯ: {why}")
        ck.fail(name, f"wrong tangent Ȯ (O is right): {ck.err(to, want_to)}")
