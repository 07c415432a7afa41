"""Checks for notebook 02's loss exercises: TVM's two terms with the EMA target, classifier-free
guidance folded into the FM target, and MeanFlow's regression target.

Like every ``check_*`` (``tvmlib.teach.exercises`` re-exports these), each calls the student's
function on fixed float64 inputs, compares values and gradients with the library, and for the
usual mistakes says which one it looks like.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tvmlib.teach import checking as ck

F64 = torch.float64
B = 32


def _diagnose(name: str, got: Tensor, want: Tensor, wrong: dict, what: str,
              rtol: float = 1e-8, atol: float = 1e-10) -> None:
    """Fail naming the first mistake in ``wrong`` ({message: the value it gives}) that ``got``
    matches, or with the size of the error."""
    if ck.close(got, want, rtol, atol):
        return
    for why, val in wrong.items():
        if ck.close(got, val, rtol, atol):
            ck.fail(name, f"{what}: {why}")
    ck.fail(name, f"wrong {what}: {ck.err(got, want)}")


def _times(g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(t, s) with s < t, and s = t in the last 4 rows (the TVM loss zeroes those)."""
    t = 0.2 + 0.8 * torch.rand(B, generator=g, dtype=F64)
    s = t * torch.rand(B, generator=g, dtype=F64)
    s[-4:] = t[-4:]
    return t, s


# ---- TVM's two terms -------------------------------------------------------------------------

def _tvm_reference(net, target, x0, eps, t, s, s_fm):
    """(terminal, fm) per sample from ``TVMLoss`` with ``target`` as its EMA target."""
    from tvmlib.core.losses import TVMLoss

    loss = TVMLoss(net)
    loss.target.module.load_state_dict(target.state_dict())
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    terminal = loss.terminal_residual(net, xt, t, s, None, None) * ~torch.isclose(t, s)
    return terminal, loss.fm_residual(net, x0, eps, s_fm, None, None)


def _tvm_mistakes(net, target, x0, eps, t, s, s_fm) -> tuple[dict, dict]:
    """Per-sample values of the usual mistakes: ({terminal}, {fm})."""
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    keep = ~torch.isclose(t, s)
    f, dfds = torch.func.jvp(lambda s_: (s_ - t)[:, None] * net(xt, t, s_), (s,),
                             (torch.ones_like(s),))
    end = xt + f.detach()

    def mse(a, b, reduce=lambda e: e.mean(1)):
        return reduce((a - b).square())

    with torch.no_grad():
        u_end = target(end, s, s)
        term = {
            "the target velocity is taken at the start point x_t; TVM evaluates it at the "
            "model's own end point x_t + sg(f(x_t, t, s))": mse(dfds, target(xt, s, s)) * keep,
            "the target velocity is taken at time t; the end point lives at time s, so use "
            "u_target(x_t + sg(f), s)": mse(dfds, target(end, t, t)) * keep,
            "the target velocity comes from the network being trained; use the EMA target "
            "(stop-gradient copy) `target`": mse(dfds, net(end, s, s)) * keep,
            "the terminal term compares F(x_t, t, s) itself, not d/ds f (Exercise 1)":
                mse(net(xt, t, s), u_end) * keep,
            "the terminal term is not zeroed where t = s (multiply by 1[t != s])":
                mse(dfds, u_end),
            "you summed the squared error over coordinates; TVM uses the element mean":
                mse(dfds, u_end, lambda e: e.sum(1)) * keep,
        }
    x_fm = (1 - s_fm[:, None]) * x0 + s_fm[:, None] * eps
    v = eps - x0
    fm = {
        "the FM target has the wrong sign: v = eps - x0": mse(net(x_fm, s_fm, s_fm), -v),
        "the FM term is evaluated at x_t and t; it uses its own time s' and x_s'":
            mse(net(xt, t, t), v),
        "the FM term uses s' for the velocity but x_t for the point: build x_s' = (1 - s') x0 "
        "+ s' eps": mse(net(xt, s_fm, s_fm), v),
        "you summed the squared error over coordinates; TVM uses the element mean":
            mse(net(x_fm, s_fm, s_fm), v, lambda e: e.sum(1)),
    }
    return term, fm


def _undetached_terminal(net, target, x0, eps, t, s) -> Tensor:
    """The terminal term with the end point x_t + f *not* detached (a usual mistake)."""
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    f, dfds = torch.func.jvp(lambda s_: (s_ - t)[:, None] * net(xt, t, s_), (s,),
                             (torch.ones_like(s),))
    return (dfds - target(xt + f, s, s)).square().mean(1) * ~torch.isclose(t, s)


def check_tvm_terms(fn: Callable[..., tuple[Tensor, Tensor]]) -> None:
    """Check ``fn(net, target, x0, eps, t, s, s_fm) -> (terminal, fm)``, the two per-sample terms
    of TVM's unconditional loss (TVM paper Eq. 12 and 15), each (B,):

        terminal = || d/ds f(x_t, t, s) - u_target(x_t + sg(f(x_t, t, s)), s) ||^2 1[t != s]
        fm       = || F(x_s', s', s') - (eps - x0) ||^2

    with f = (s - t) F(x_t, t, s), x_t = (1 - t) x0 + t eps, element-mean squared errors and the
    EMA target's velocity under stop-gradient; against ``TVMLoss.terminal_residual`` and
    ``fm_residual`` in float64, gradients w.r.t. the network included (4 rows have t = s).
    """
    name = "check_tvm_terms"
    net, target = ck.small_mlp(7, F64), ck.small_mlp(8, F64).requires_grad_(False)
    g = ck.gen(9)
    x0 = torch.randn(B, 2, generator=g, dtype=F64) * 0.5 + 1.0
    eps = torch.randn(B, 2, generator=g, dtype=F64)
    t, s = _times(g)
    s_fm = torch.rand(B, generator=g, dtype=F64)
    args = (x0, eps, t, s, s_fm)
    out = fn(net, target, *(a.clone() for a in args))
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        ck.fail(name, "return a pair (terminal, fm) of per-sample tensors, each of shape (B,)")
    term = ck.require_tensor(name, "the terminal term", out[0], (B,))
    fm = ck.require_tensor(name, "the FM term", out[1], (B,))
    want_term, want_fm = _tvm_reference(net, target, *args)
    wrong_term, wrong_fm = _tvm_mistakes(net, target, *args)
    _diagnose(name, term, want_term, wrong_term, "terminal term")
    _diagnose(name, fm, want_fm, wrong_fm, "FM term")
    weight = torch.randn(B, generator=g, dtype=F64)
    how = "TVM trains through d/ds f and F; do not compute them under torch.no_grad()"
    got_g = ck.grads(term, net, weight)
    undetached = ck.grads(_undetached_terminal(net, target, x0, eps, t, s), net, weight)
    if got_g is not None and all(ck.close(a, b, 1e-6, 1e-12) for a, b in zip(got_g, undetached)):
        ck.fail(name, "the terminal value is right but its gradient is not: detach the end point "
                    "(x_t + f.detach()) before the target velocity, it is sg(f) in the loss")
    ck.check_grads(name, got_g, ck.grads(want_term, net, weight), how, 1e-6, 1e-12)
    ck.check_grads(name, ck.grads(fm, net, weight), ck.grads(want_fm, net, weight), how, 1e-6,
                   1e-12)


# ---- classifier-free guidance folded into the FM target --------------------------------------

def check_cfg_target(fn: Callable[..., Tensor]) -> None:
    """Check ``fn(target, x_s, s, y, v, w) -> w v + (1 - w) u_target(x_s, s | null, w = 1)``, TVM's
    guided FM target (TVM paper Eq. 14): the EMA target's *unconditional* velocity (null class
    ``target.num_classes``, guidance input 1, scaled parameterization u = w F = F) mixed with the
    conditional velocity v, under stop-gradient; against ``tvmlib.core.losses.tvm`` in float64
    on a class- and guidance-conditional ``MLP2D``. x_s, v: (B, 2); s, w: (B,); y: (B,).
    """
    from tvmlib.core.flowmap import velocity
    from tvmlib.core.losses.tvm import cfg_velocity_target
    from tvmlib.nn.mlp import MLP2D

    name = "check_cfg_target"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10)
        target = MLP2D(hidden=32, depth=2, emb_dim=8, num_classes=4, guidance=True,
                       time_scale=10.0).to(F64)
    g = ck.gen(11)
    x = torch.randn(B, 2, generator=g, dtype=F64)
    s = torch.rand(B, generator=g, dtype=F64)
    y = torch.randint(0, 4, (B,), generator=g)
    v = torch.randn(B, 2, generator=g, dtype=F64)
    w = 1.0 + 2.0 * torch.rand(B, generator=g, dtype=F64)
    got = ck.require_tensor(name, "the guided target", fn(target, *(a.clone() for a in
                                                               (x, s, y, v, w))), (B, 2))
    if got.requires_grad:
        ck.fail(name, "the target carries a gradient: compute the unconditional velocity of the "
                    "EMA target under torch.no_grad() (it is a stop-gradient target)")
    null, one = torch.full_like(y, 4), torch.ones_like(w)
    with torch.no_grad():
        def mix(u, a=w[:, None]):
            return a * v + (1 - a) * u

        u_null = velocity(target, x, s, null, one, scale_param=True)
        want = cfg_velocity_target(v, u_null, w)
        wrong = {
            "the weights are swapped: w multiplies the conditional v, (1 - w) the "
            "unconditional velocity": mix(u_null, 1 - w[:, None]),
            "the unconditional velocity must use the null class (target.num_classes), not the "
            "labels y": mix(velocity(target, x, s, y, one, scale_param=True)),
            "the unconditional velocity is evaluated at guidance w; TVM evaluates it at w = 1":
                mix(velocity(target, x, s, null, w, scale_param=True)),
            "the null class is target.num_classes (here 4), not 0":
                mix(velocity(target, x, s, torch.zeros_like(y), one, scale_param=True)),
            "the second term has the wrong sign: w v + (1 - w) u_uncond":
                w[:, None] * v - (1 - w[:, None]) * u_null,
        }
    _diagnose(name, got, want, wrong, "guided target")


# ---- MeanFlow's target -----------------------------------------------------------------------

def check_meanflow_target(fn: Callable[..., tuple[Tensor, Tensor]]) -> None:
    """Check ``fn(net, x_t, t, r, v) -> (u, u_tgt)``: the prediction u = F(x_t, t, r) and
    MeanFlow's target u_tgt = sg(v - (t - r) d/dt F) with the total derivative along the path,
    d/dt F = v . d_x F + d_t F, from one ``torch.func.jvp`` with tangents (v, 1, 0) on (x, t, r);
    against ``tvmlib.core.losses.meanflow.meanflow_target`` in float64. x_t, v: (B, 2); t, r: (B,)
    with r <= t.
    """
    from tvmlib.core.losses.meanflow import meanflow_target

    name = "check_meanflow_target"
    net = ck.small_mlp(12, F64)
    g = ck.gen(13)
    x = torch.randn(B, 2, generator=g, dtype=F64)
    t, r = _times(g)
    v = torch.randn(B, 2, generator=g, dtype=F64)
    out = fn(net, *(a.clone() for a in (x, t, r, v)))
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        ck.fail(name, "return a pair (u, u_tgt) of tensors of shape (B, 2)")
    u = ck.require_tensor(name, "u", out[0], (B, 2))
    u_tgt = ck.require_tensor(name, "u_tgt", out[1], (B, 2))
    want_u, want_tgt = meanflow_target(net, x, t, r, v)
    _diagnose(name, u, want_u, {"u is F(x_t, t, t), the velocity; MeanFlow predicts the "
                                "average velocity F(x_t, t, r)": net(x, t, t)}, "u")
    if u_tgt.requires_grad:
        ck.fail(name, "u_tgt carries a gradient: MeanFlow stops it (return u_tgt.detach()); "
                    "only u is trained")

    def tangent(tx, tt, tr):
        return torch.func.jvp(lambda a, b, c: net(a, b, c), (x, t, r), (tx, tt, tr))[1]

    gap, zero, one = (t - r)[:, None], torch.zeros_like(t), torch.ones_like(t)
    with torch.no_grad():
        dFdt = tangent(v, one, zero)
        wrong = {
            "the JVP term has the wrong sign: u_tgt = v - (t - r) d/dt F": v + gap * dFdt,
            "the (t - r) factor is missing: u_tgt = v - (t - r) d/dt F": v - dFdt,
            "d/dt F misses v . d_x F: the tangent on x is v (the path moves with velocity v)":
                v - gap * tangent(torch.zeros_like(v), one, zero),
            "the tangent is on r, not t: tangents (v, 1, 0) on (x, t, r)":
                v - gap * tangent(v, zero, one),
            "tangents on both t and r: r stays fixed, tangents (v, 1, 0) on (x, t, r)":
                v - gap * tangent(v, one, one),
            "the tangent on x is 1, not v": v - gap * tangent(torch.ones_like(v), one, zero),
        }
    _diagnose(name, u_tgt, want_tgt, wrong, "u_tgt")
    ck.check_grads(name, ck.grads(u, net), ck.grads(want_u, net),
                 "u = F(x_t, t, r) must carry the network's gradient", 1e-6, 1e-12)
