"""MeanFlowLoss against exact references (issue 15): the exact average velocity of a Gaussian
flow is a fixed point of the loss, and training converges to it; on a two-mode mixture the
adaptive weight (power 1) moves the fixed point away from the exact velocity, plain MSE (power
0) does not."""

import torch
from torch import nn

from tvmlib.core.analytic import GaussianFlow, GaussianMixtureFlow
from tvmlib.core.losses import MeanFlowLoss
from tvmlib.core.solvers import sample
from tvmlib.training import TrainConfig, train

torch.set_num_threads(1)
F64 = torch.float64


class Perturbed(nn.Module):
    """F = (1 + b) F_exact + a with learnable a (2,) and b: the exact model at a = b = 0."""

    def __init__(self, exact: nn.Module, a=(0.0, 0.0), b: float = 0.0):
        super().__init__()
        self.exact, self.num_classes = exact, 0
        self.a = nn.Parameter(torch.tensor(a, dtype=F64))
        self.b = nn.Parameter(torch.tensor(b, dtype=F64))

    def forward(self, x, t, s=None, y=None, w=None):
        return (1 + self.b) * self.exact(x, t, s) + self.a


def mean_gradient(model: Perturbed, loss: MeanFlowLoss, data, batches: int = 16,
                  batch: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over batches of the loss gradient w.r.t. (a, b): (3,), (3,)."""
    grads = []
    for i in range(batches):
        torch.manual_seed(100 + i)
        x0 = data(batch, torch.Generator().manual_seed(200 + i))
        value, _ = loss(model, x0)
        ga, gb = torch.autograd.grad(value, [model.a, model.b])
        grads.append(torch.cat([ga, gb[None]]))
    g = torch.stack(grads)
    return g.mean(0), g.std(0) / batches**0.5


GAUSS = GaussianFlow(torch.tensor([1.0, -0.5]), 0.5)


def gauss_data(n, g):
    return GAUSS.sample_data(n, g)


def test_exact_average_velocity_is_a_fixed_point():
    """E[grad] = 0 at the exact model (both weightings: the residual given x_t is a symmetric
    Gaussian there), and not at a perturbed one. With plain MSE an offset a gives the residual
    a in expectation (the JVP of a constant is 0), so E[grad_a] = 2 a exactly."""
    for power in (0.0, 1.0):
        loss = MeanFlowLoss(frac_unequal=0.5, power=power)
        g, se = mean_gradient(Perturbed(GAUSS), loss, gauss_data)
        assert bool((g.abs() < 4 * se + 1e-6).all()), (power, g, se)
        g, se = mean_gradient(Perturbed(GAUSS, a=(0.3, -0.2), b=0.1), loss, gauss_data, 4)
        assert bool((g.abs() > 6 * se).any()), (power, g, se)
        g, se = mean_gradient(Perturbed(GAUSS, a=(0.3, -0.2)), loss, gauss_data, 4)
        assert float(g[0]) > 6 * float(se[0]) and float(g[1]) < -6 * float(se[1])
        if power == 0.0:
            torch.testing.assert_close(g[:2], torch.tensor([0.6, -0.4], dtype=F64),
                                       atol=float(4 * se[:2].max()), rtol=0)


def test_adaptive_weight_biases_the_fixed_point_on_a_mixture():
    """At r = t MeanFlow is flow matching; on a two-mode mixture the conditional velocity given
    x_t is bimodal, and the adaptive weight 1 / (||Delta||^2 + c) makes the loss prefer the
    nearer mode: the exact marginal velocity is no longer a fixed point."""
    mix = GaussianMixtureFlow(torch.tensor([[1.5, 0.0], [-1.5, 0.0]]), 0.2,
                              weights=torch.tensor([0.7, 0.3]))

    def data(n, g):
        return mix.sample_data(n, g)[0]

    plain = MeanFlowLoss(frac_unequal=0.0, power=0.0)
    g, se = mean_gradient(Perturbed(mix), plain, data)
    assert bool((g.abs() < 4 * se + 1e-6).all()), (g, se)
    adaptive = MeanFlowLoss(frac_unequal=0.0, power=1.0)
    g, se = mean_gradient(Perturbed(mix), adaptive, data)
    assert float(g.abs().max() / se[g.abs().argmax()]) > 8, (g, se)


class AffineInX(nn.Module):
    """F(x, t, r) = a(t, t - r) x + b(t, t - r) with a, b from a small MLP: the exact average
    velocity of a Gaussian flow has this form, so the fixed point is reachable."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.num_classes = 0
        self.body = nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                  nn.SiLU(), nn.Linear(hidden, 3))

    def forward(self, x, t, r=None, y=None, w=None):
        r = t if r is None else r
        out = self.body(torch.stack([t, t - r], 1).to(x.dtype))
        return out[:, :1] * x + out[:, 1:]


class GaussSource:
    def __init__(self, batch: int = 256):
        self.generator, self.batch = torch.Generator().manual_seed(0), batch

    def next_batch(self):
        return GAUSS.sample_data(self.batch, self.generator).float()


def average_velocity_error(net) -> float:
    """Relative RMS error of F(x_t, t, s) against the exact average velocity, x_t ~ p_t."""
    g = torch.Generator().manual_seed(7)
    t = 0.05 + 0.95 * torch.rand(2000, generator=g, dtype=F64)
    s = t * torch.rand(2000, generator=g, dtype=F64)
    xt = (1 - t[:, None]) * GAUSS.sample_data(2000, g) \
        + t[:, None] * torch.randn(2000, 2, generator=g, dtype=F64)
    want = GAUSS(xt, t, s)
    with torch.no_grad():
        got = net(xt.float(), t.float(), s.float()).double()
    return float((got - want).square().mean().sqrt() / want.square().mean().sqrt())


def test_training_converges_to_the_exact_average_velocity():
    """Trained with MeanFlowLoss on Gaussian data, F(x_t, t, s) approaches the exact flow's
    average velocity (to the noise level of the stochastic target), and one jump from noise
    samples the data's mean and spread."""
    torch.manual_seed(0)
    net = AffineInX()
    before = average_velocity_error(net)
    state = train(net, MeanFlowLoss(power=0.0), GaussSource(),
                  TrainConfig(steps=1000, lr=2e-3, ema_decay=0.99, progress=False))
    net = state.ema.module.eval()
    after = average_velocity_error(net)
    assert before > 0.8 and after < 0.15, (before, after)
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(8))
    one_jump = sample(net, noise, 1).x.double()
    exact = GAUSS.flow_map(noise.double(), torch.ones(4000, dtype=F64), torch.zeros(4000,
                                                                                   dtype=F64))
    jump_error = float((one_jump - exact).norm(dim=1).mean() / exact.std(0).norm())
    assert jump_error < 0.25, (jump_error, one_jump.mean(0), one_jump.std(0))
