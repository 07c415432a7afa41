"""The check_* helpers of the classroom exercises (tvmlib.teach.exercises): a right answer
passes, and each typical mistake gets its documented message. The nbgrader pipeline around them
(student copies, grading) is tested in tests/test_grading.py."""

from __future__ import annotations

import math

import pytest
import torch

from tvmlib.teach import exercises as checks
from tvmlib.teach import exercises_cmt as checks_cmt

torch.set_num_threads(1)


# ---- check helpers: a right answer passes, typical mistakes get the documented message ------

def fm_right(net, x0, eps, t):
    tc = t[:, None]
    return (net((1 - tc) * x0 + tc * eps, t, t) - (eps - x0)).square().mean()


def fm_sign(net, x0, eps, t):
    tc = t[:, None]
    return (net((1 - tc) * x0 + tc * eps, t, t) - (x0 - eps)).square().mean()


def fm_data_at_one(net, x0, eps, t):
    tc = t[:, None]
    return (net(tc * x0 + (1 - tc) * eps, t, t) - (eps - x0)).square().mean()


def fm_detached(net, x0, eps, t):
    with torch.no_grad():
        return fm_right(net, x0, eps, t)


def fm_per_sample(net, x0, eps, t):
    tc = t[:, None]
    return (net((1 - tc) * x0 + tc * eps, t, t) - (eps - x0)).square().mean(1)


def test_check_fm_loss():
    assert checks.check_fm_loss(fm_right) is None
    with pytest.raises(AssertionError, match="wrong sign.*eps - x0"):
        checks.check_fm_loss(fm_sign)
    with pytest.raises(AssertionError, match="t is mixed up.*data at t = 1"):
        checks.check_fm_loss(fm_data_at_one)
    with pytest.raises(AssertionError, match="no gradient reaches"):
        checks.check_fm_loss(fm_detached)
    with pytest.raises(AssertionError, match=r"scalar.*shape \(64,\)"):
        checks.check_fm_loss(fm_per_sample)
    with pytest.raises(AssertionError, match="wrong value: expected"):
        checks.check_fm_loss(lambda *a: 1.5 * fm_right(*a))


def euler_right(velocity, x, times):
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * velocity(x, t)
    return x


def euler_backwards(velocity, x, times):
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t - t_next) * velocity(x, t)
    return x


def euler_extra_step(velocity, x, times):
    for t, t_next in zip(times, torch.cat([times[1:], times[-1:]])):
        x = x + (t_next - t) * velocity(x, t)
    return x


def test_check_euler():
    assert checks.check_euler(euler_right) is None
    with pytest.raises(AssertionError, match="wrong direction of time"):
        checks.check_euler(euler_backwards)
    with pytest.raises(AssertionError, match="one step too many"):
        checks.check_euler(euler_extra_step)
    with pytest.raises(AssertionError, match="not the whole trajectory"):
        checks.check_euler(lambda u, x, times: torch.stack([x] * len(times)))
    with pytest.raises(AssertionError, match=r"shape \(16, 1\), expected \(16, 2\)"):
        checks.check_euler(lambda u, x, times: euler_right(u, x, times)[:, :1])


def dfds_right(net, x, t, s):
    return torch.func.jvp(lambda s_: (s_ - t)[:, None] * net(x, t, s_), (s,),
                          (torch.ones_like(s),))[1]


def dfds_no_factor(net, x, t, s):
    return torch.func.jvp(lambda s_: net(x, t, s_), (s,), (torch.ones_like(s),))[1]


def dfds_tangent_on_x(net, x, t, s):
    return torch.func.jvp(lambda x_: (s - t)[:, None] * net(x_, t, s), (x,),
                          (torch.ones_like(x),))[1]


def test_check_terminal_velocity():
    assert checks.check_terminal_velocity(dfds_right) is None
    with pytest.raises(AssertionError, match=r"missing the \(s - t\) factor"):
        checks.check_terminal_velocity(dfds_no_factor)
    with pytest.raises(AssertionError, match="tangent is on x, not s"):
        checks.check_terminal_velocity(dfds_tangent_on_x)
    with pytest.raises(AssertionError, match="no gradient reaches.*detach"):
        checks.check_terminal_velocity(lambda *a: dfds_right(*a).detach())


def attention_jvp(q, k, v, tq, tk, tv, mu_term=True):
    """O and Ȯ written out (independently of tvmlib's reference)."""
    sc = 1.0 / math.sqrt(q.shape[-1])
    P = torch.softmax(sc * q @ k.transpose(-1, -2), dim=-1)
    o = P @ v
    sdot = sc * (tq @ k.transpose(-1, -2) + q @ tk.transpose(-1, -2))
    to = (P * sdot) @ v + P @ tv
    if mu_term:
        to = to - (P * sdot).sum(-1, keepdim=True) * o
    return o, to


def test_check_attention_jvp():
    assert checks.check_attention_jvp(attention_jvp) is None
    with pytest.raises(AssertionError, match="missing the μ correction"):
        checks.check_attention_jvp(lambda *a: attention_jvp(*a, mu_term=False))
    with pytest.raises(AssertionError, match="wrong O: the scores need the scale"):
        checks.check_attention_jvp(
            lambda q, k, v, *t: (torch.softmax(q @ k.transpose(-1, -2), -1) @ v,
                                 attention_jvp(q, k, v, *t)[1]))
    with pytest.raises(AssertionError, match="wrong tangent"):
        checks.check_attention_jvp(lambda *a: (attention_jvp(*a)[0], 2 * attention_jvp(*a)[1]))


def cmt_loss_right(student, traj, times, k, l, flip=1.0, rows=None, call="kl", detach=False):
    n, P = k.shape
    r = torch.arange(n).repeat_interleave(P) if rows is None else rows  # (n P,) trajectory
    x_k, x_l = traj[k.flatten(), r], traj[l.flatten(), r]  # (n P, ...)
    t_k, t_l = times[k.flatten()], times[l.flatten()]
    gap = (t_l - t_k).reshape(-1, *[1] * (x_k.dim() - 1))
    F = student(x_k, t_k, t_l) if call == "kl" else student(x_k, t_k, t_k)
    F = F.detach() if detach else F
    return (F - flip * (x_l - x_k) / gap).square().mean()


def test_check_cmt_loss_accepts_the_loss_and_names_the_usual_mistakes():
    assert checks_cmt.check_cmt_loss(cmt_loss_right) is None
    with pytest.raises(AssertionError, match="wrong sign"):
        checks_cmt.check_cmt_loss(lambda *a: cmt_loss_right(*a, flip=-1.0))
    with pytest.raises(AssertionError, match="regressed the velocity"):
        checks_cmt.check_cmt_loss(lambda *a: cmt_loss_right(*a, call="kk"))
    with pytest.raises(AssertionError, match="wrong trajectories"):
        checks_cmt.check_cmt_loss(lambda s, x, t, k, l: cmt_loss_right(
            s, x, t, k, l, rows=torch.arange(k.shape[0]).repeat(k.shape[1])))
    with pytest.raises(AssertionError, match="no gradient reaches"):
        checks_cmt.check_cmt_loss(lambda *a: cmt_loss_right(*a, detach=True))


def test_check_cmt_loss_asks_for_images_too():
    def flat_2d_only(student, traj, times, k, l):  # the gap does not broadcast over images
        r = torch.arange(k.shape[0]).repeat_interleave(k.shape[1])
        x_k, x_l = traj[k.flatten(), r], traj[l.flatten(), r]
        t_k, t_l = times[k.flatten()], times[l.flatten()]
        return (student(x_k, t_k, t_l) - (x_l - x_k) / (t_l - t_k)[:, None]).square().mean()

    with pytest.raises(AssertionError, match=r"states of shape \(7, 5, 1, 4, 4\).*broadcast"):
        checks_cmt.check_cmt_loss(flat_2d_only)
    with pytest.raises(AssertionError, match="scalar"):
        checks_cmt.check_cmt_loss(lambda *a: cmt_loss_right(*a).reshape(1))

    def stub(*args):
        raise NotImplementedError("Exercise 1: the mid-training loss")

    with pytest.raises(NotImplementedError, match="Exercise 1"):  # not read as a shape error
        checks_cmt.check_cmt_loss(stub)


# ---- notebook 02's loss exercises (tvmlib.teach.exercises_losses) -------------------------------

def _jvp_s(net, xt, t, s):
    """(f, d/ds f) for f = (s - t) F(x_t, t, s), written out."""
    return torch.func.jvp(lambda s_: (s_ - t)[:, None] * net(xt, t, s_), (s,),
                          (torch.ones_like(s),))


def tvm_terms_right(net, target, x0, eps, t, s, s_fm, detach_end=True, mask=True,
                    at_start=False, fm_sign=1.0):
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    f, dfds = _jvp_s(net, xt, t, s)
    end = xt if at_start else xt + (f.detach() if detach_end else f)
    terminal = (dfds - target(end, s, s)).square().mean(1)
    if mask:
        terminal = terminal * ~torch.isclose(t, s)
    x_fm = (1 - s_fm[:, None]) * x0 + s_fm[:, None] * eps
    fm = (net(x_fm, s_fm, s_fm) - fm_sign * (eps - x0)).square().mean(1)
    return terminal, fm


def test_check_tvm_terms():
    assert checks.check_tvm_terms(tvm_terms_right) is None
    with pytest.raises(AssertionError, match="at the start point x_t"):
        checks.check_tvm_terms(lambda *a: tvm_terms_right(*a, at_start=True))
    with pytest.raises(AssertionError, match=r"not zeroed where t = s"):
        checks.check_tvm_terms(lambda *a: tvm_terms_right(*a, mask=False))
    with pytest.raises(AssertionError, match="detach the end point"):
        checks.check_tvm_terms(lambda *a: tvm_terms_right(*a, detach_end=False))
    with pytest.raises(AssertionError, match="FM target has the wrong sign"):
        checks.check_tvm_terms(lambda *a: tvm_terms_right(*a, fm_sign=-1.0))
    with pytest.raises(AssertionError, match="use the EMA target"):
        checks.check_tvm_terms(lambda net, target, *a: tvm_terms_right(
            net, lambda *b: net(*b).detach(), *a))
    with pytest.raises(AssertionError, match="no gradient reaches"):
        checks.check_tvm_terms(lambda *a: tuple(v.detach() for v in tvm_terms_right(*a)))
    with pytest.raises(AssertionError, match=r"shape \(32, 2\), expected \(32,\)"):
        checks.check_tvm_terms(lambda *a: (torch.zeros(32, 2), torch.zeros(32)))


def cfg_target_right(target, x_s, s, y, v, w, null=None, w_uncond=1.0, swap=False):
    null = torch.full_like(y, target.num_classes) if null is None else null
    with torch.no_grad():
        w_in = torch.full_like(w, w_uncond) if isinstance(w_uncond, float) else w_uncond
        u = w_in[:, None] * target(x_s, s, s, null, w_in)  # scaled parameterization
    a = (1 - w if swap else w)[:, None]
    return a * v + (1 - a) * u


def test_check_cfg_target():
    assert checks.check_cfg_target(cfg_target_right) is None
    with pytest.raises(AssertionError, match="weights are swapped"):
        checks.check_cfg_target(lambda *a: cfg_target_right(*a, swap=True))
    with pytest.raises(AssertionError, match="null class.*not the labels y"):
        checks.check_cfg_target(lambda tg, x, s, y, v, w: cfg_target_right(tg, x, s, y, v, w,
                                                                            null=y))
    with pytest.raises(AssertionError, match="evaluates it at w = 1"):
        checks.check_cfg_target(lambda tg, x, s, y, v, w: cfg_target_right(tg, x, s, y, v, w,
                                                                            w_uncond=w))
    with pytest.raises(AssertionError, match=r"num_classes \(here 4\), not 0"):
        checks.check_cfg_target(lambda tg, x, s, y, v, w: cfg_target_right(
            tg, x, s, y, v, w, null=torch.zeros_like(y)))

    def with_grad(target, x_s, s, y, v, w):
        null = torch.full_like(y, target.num_classes)
        return w[:, None] * v + (1 - w[:, None]) * target(x_s, s, s, null, torch.ones_like(w))

    with pytest.raises(AssertionError, match="under torch.no_grad"):
        checks.check_cfg_target(with_grad)


def meanflow_right(net, x, t, r, v, tangents=None, sign=-1.0, detach=True):
    tangents = tangents or (v, torch.ones_like(t), torch.zeros_like(r))
    u, dudt = torch.func.jvp(lambda a, b, c: net(a, b, c), (x, t, r), tangents)
    tgt = v + sign * (t - r)[:, None] * dudt
    return u, (tgt.detach() if detach else tgt)


def test_check_meanflow_target():
    assert checks.check_meanflow_target(meanflow_right) is None
    with pytest.raises(AssertionError, match="wrong sign"):
        checks.check_meanflow_target(lambda *a: meanflow_right(*a, sign=1.0))
    with pytest.raises(AssertionError, match="tangent is on r, not t"):
        checks.check_meanflow_target(lambda n, x, t, r, v: meanflow_right(
            n, x, t, r, v, (v, torch.zeros_like(t), torch.ones_like(r))))
    with pytest.raises(AssertionError, match=r"misses v \. d_x F"):
        checks.check_meanflow_target(lambda n, x, t, r, v: meanflow_right(
            n, x, t, r, v, (torch.zeros_like(v), torch.ones_like(t), torch.zeros_like(r))))
    with pytest.raises(AssertionError, match="MeanFlow stops it"):
        checks.check_meanflow_target(lambda *a: meanflow_right(*a, detach=False))
    with pytest.raises(AssertionError, match="average velocity F"):
        checks.check_meanflow_target(lambda n, x, t, r, v: (n(x, t, t),
                                                              meanflow_right(n, x, t, r, v)[1]))
