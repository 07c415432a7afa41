"""Flow map, TVM loss and MeanFlow target against independent references (float64, FD,
closed-form Gaussian flows)."""

import pytest
import torch
from torch import nn

from tvmlib.core.analytic import GaussianFlow
from tvmlib.core.flowmap import displacement, displacement_and_dfds, flow_map, velocity
from tvmlib.core.losses import TVMLoss
from tvmlib.core.losses.meanflow import meanflow_target, sample_meanflow_times
from tvmlib.core.losses.tvm import cfg_velocity_target
from tvmlib.nn import MLP2D

D = torch.float64


def _mlp(**kw):
    torch.manual_seed(0)
    return MLP2D(hidden=32, depth=2, time_scale=10.0, **kw).double()


def test_dfds_matches_central_finite_difference():
    net = _mlp()
    x = torch.randn(6, 2, dtype=D)
    t = torch.rand(6, dtype=D) * 0.5 + 0.5
    s = t * torch.rand(6, dtype=D)
    f, dfds = displacement_and_dfds(net, x, t, s)
    h = 1e-6
    fd = (displacement(net, x, t, s + h) - displacement(net, x, t, s - h)) / (2 * h)
    torch.testing.assert_close(f, displacement(net, x, t, s))
    torch.testing.assert_close(dfds, fd, rtol=1e-6, atol=1e-8)
    # At s = t the derivative is the velocity u(x, t) = F(x, t, t) (Eq. 4).
    _, dfds_tt = displacement_and_dfds(net, x, t, t.clone())
    torch.testing.assert_close(dfds_tt, velocity(net, x, t))


def test_scaled_parameterization_multiplies_by_w():
    net = _mlp(guidance=True)
    x, t = torch.randn(4, 2, dtype=D), torch.full((4,), 0.9, dtype=D)
    s, w = torch.full((4,), 0.3, dtype=D), torch.full((4,), 2.0, dtype=D)
    torch.testing.assert_close(displacement(net, x, t, s, w=w, scale_param=True),
                               2.0 * displacement(net, x, t, s, w=w))
    torch.testing.assert_close(flow_map(net, x, t, s, w=w), x + displacement(net, x, t, s, w=w))


def test_terminal_residual_vanishes_like_gap_squared_as_t_to_s():
    """With theta* = theta the terminal term is O(gap^2) and zero at t = s: TVM -> FM."""
    net = _mlp()
    loss = TVMLoss(net)  # the target starts as an exact copy
    x = torch.randn(64, 2, dtype=D)
    s = torch.full((64,), 0.4, dtype=D)
    res = [loss.terminal_residual(net, x, s + g, s, None, None).mean().item()
           for g in (0.0, 1e-2, 5e-3)]
    assert res[0] < 1e-20
    assert 3.0 < res[1] / res[2] < 5.0  # quadratic in the gap


def test_tvm_loss_with_all_pairs_equal_is_the_fm_loss():
    net = _mlp()
    loss = TVMLoss(net, frac_equal=1.0, label_dropout=0.0)
    x0 = torch.randn(32, 2, dtype=D)
    torch.manual_seed(5)
    value, logs = loss(net, x0)
    assert logs["terminal"].item() == 0.0
    # Replay the same random draws by hand: eps, then (t, s) with gap 0, then s'.
    torch.manual_seed(5)
    eps = torch.randn_like(x0)
    torch.randn(32, dtype=D), torch.rand(32, dtype=D), torch.rand(32, dtype=D)  # gap sampler
    s_fm = torch.sigmoid(torch.randn(32) * 1.0 - 0.4).to(D)
    xs = (1 - s_fm[:, None]) * x0 + s_fm[:, None] * eps
    fm = (net(xs, s_fm, s_fm) - (eps - x0)).square().mean()
    torch.testing.assert_close(value, fm)


def test_gradient_flows_through_the_jvp():
    """b only shapes F's dependence on s: F = g(x, t) + b (t - s). It reaches the loss only
    through d/ds f (the FM term has t = s and the target point is stop-grad)."""

    class GapNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.g = nn.Linear(3, 2).double()
            self.b = nn.Parameter(torch.tensor([0.3, -0.2], dtype=D))
            self.num_classes = 0

        def forward(self, x, t, s=None, y=None, w=None):
            s = t if s is None else s
            return self.g(torch.cat([x, t[:, None]], 1)) + self.b * (t - s)[:, None]

    x0 = torch.randn(16, 2, dtype=D)
    grads = {}
    for detach in (False, True):  # the same weights and the same random draws
        torch.manual_seed(11)
        net = GapNet()
        torch.manual_seed(12)
        loss, _ = TVMLoss(net, detach_jvp=detach)(net, x0)
        loss.backward()
        grads[detach] = net.b.grad
    # F depends on b through b (t - s), d/ds f = F + (s - t) dF/ds through 2 b (t - s); the FM
    # term (t = s) does not see b. So the full gradient is twice the one through F alone.
    assert grads[False] is not None and grads[False].abs().sum() > 1e-6
    torch.testing.assert_close(grads[False], 2 * grads[True])


def test_cfg_target_formula_and_guided_fm_term():
    v, u = torch.randn(5, 2, dtype=D), torch.randn(5, 2, dtype=D)
    w = torch.tensor([1.0, 1.5, 2.0, 3.0, 0.5], dtype=D)
    torch.testing.assert_close(cfg_velocity_target(v, u, w), w[:, None] * v + (1 - w[:, None]) * u)
    torch.testing.assert_close(cfg_velocity_target(v, u, torch.ones(5, dtype=D)), v)

    class ClassConst(nn.Module):  # F = c[y], independent of x, t, s, w
        num_classes = 2

        def __init__(self):
            super().__init__()
            self.c = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]], dtype=D))

        def forward(self, x, t, s=None, y=None, w=None):
            return self.c[y]

    net = ClassConst()
    loss = TVMLoss(net, num_classes=2, cfg_scale=2.0, scale_param=True)
    x0, eps = torch.randn(3, 2, dtype=D), torch.randn(3, 2, dtype=D)
    y = torch.tensor([0, 1, 2])
    s, w = torch.full((3,), 0.5, dtype=D), torch.full((3,), 2.0, dtype=D)
    got = loss.fm_residual(net, x0, eps, s, y, w)
    u_uncond = net.c[2]  # null class, w = 1
    target = 2.0 * (eps - x0) + (1 - 2.0) * u_uncond
    expected = (2.0 * net.c[y] - target).square().mean(1)
    torch.testing.assert_close(got, expected)


def test_meanflow_target_identity_on_exact_flow():
    """For the exact average velocity F(x, t, r) of a Gaussian flow and the exact marginal
    velocity v, MeanFlow's target v - (t - r) dF/dt reproduces F itself."""
    flow = GaussianFlow(torch.tensor([0.5, -1.0]), sigma=0.3)
    x = torch.randn(16, 2, dtype=D)
    t = torch.rand(16, dtype=D) * 0.5 + 0.5
    r = t * torch.rand(16, dtype=D)
    u, target = meanflow_target(flow, x, t, r, flow.velocity(x, t))
    torch.testing.assert_close(target, u, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(u, (flow.flow_map(x, t, r) - x) / (r - t)[:, None])
    tt, rr = sample_meanflow_times(4000)
    assert bool((rr <= tt).all()) and abs((rr < tt).float().mean().item() - 0.25) < 0.03


def test_bad_inputs_raise_clear_errors():
    net = _mlp(guidance=True)
    x = torch.randn(3, 2, dtype=D)
    t, s = torch.full((3,), 0.2, dtype=D), torch.full((3,), 0.5, dtype=D)
    with pytest.raises(ValueError, match="s <= t"):
        displacement_and_dfds(net, x, t, s)
    with pytest.raises(ValueError, match="s <= t"):
        flow_map(net, x, t, s)
    with pytest.raises(ValueError, match="w must be finite and > 0"):
        displacement_and_dfds(net, x, s, t, w=torch.tensor([1.0, -1.0, 2.0], dtype=D))
    with pytest.raises(ValueError, match="cfg_scale"):
        TVMLoss(net, cfg_scale=0.0)
    with pytest.raises(ValueError, match="cfg_scale"):
        TVMLoss(net, cfg_scale=(3.0, 2.0))
