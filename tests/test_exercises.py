"""The check_* helpers of the classroom exercises (tvmlib.teach.exercises): a right answer
passes, and each typical mistake gets its documented message. The nbgrader pipeline around them
(student copies, grading) is tested in tests/test_grading.py."""

from __future__ import annotations

import math

import pytest
import torch

from tvmlib.teach import exercises as checks

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


def cmt_right(x_i, t_i, x_j, t_j):
    gap = (t_j - t_i).view(-1, *([1] * (x_i.dim() - 1)))
    return (x_j - x_i) / gap


def test_check_cmt_target():
    assert checks.check_cmt_target(cmt_right) is None
    with pytest.raises(AssertionError, match="sign error"):
        checks.check_cmt_target(lambda x_i, t_i, x_j, t_j: cmt_right(x_j, t_i, x_i, t_j))
    with pytest.raises(AssertionError, match="forgot to divide"):
        checks.check_cmt_target(lambda x_i, t_i, x_j, t_j: x_j - x_i)
    with pytest.raises(AssertionError, match=r"reshape the time gap to \(6, 1\)"):
        checks.check_cmt_target(lambda x_i, t_i, x_j, t_j: (x_j - x_i) / (t_j - t_i))
