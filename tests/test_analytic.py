"""The closed-form flows of ``tvmlib.core.analytic`` against independent references: the single
Gaussian flow, the continuity equation by finite differences, and sampling by the exact ODE."""

import math

import torch

from tvmlib.core.analytic import GaussianFlow, GaussianMixtureFlow
from tvmlib.core.solvers import sample
from tvmlib.data.toy2d import gaussian_mixture, sample_toy2d
from tvmlib.evaluation.metrics import w2

torch.set_num_threads(1)
F64 = torch.float64


def _mixture() -> GaussianMixtureFlow:
    means = torch.tensor([[1.5, 0.0], [-1.0, 1.0], [0.0, -2.0]], dtype=F64)
    return GaussianMixtureFlow(means, sigma=0.3, weights=torch.tensor([0.5, 0.3, 0.2]))


def _density(flow: GaussianMixtureFlow, x: torch.Tensor, t: float) -> torch.Tensor:
    """p_t(x) = sum_k pi_k N(x; (1 - t) m_k, sd(t)^2 I), written out independently."""
    sd2 = (1 - t) ** 2 * flow.sigma**2 + t**2
    d2 = (x[:, None] - (1 - t) * flow.m[None]).square().sum(-1)  # (B, K)
    gauss = torch.exp(-d2 / (2 * sd2)) / (2 * math.pi * sd2)
    return (gauss * flow.log_pi.exp()[None]).sum(1)


def test_one_component_is_the_gaussian_flow():
    m = torch.tensor([0.7, -1.2], dtype=F64)
    mix, single = GaussianMixtureFlow(m[None], 0.4), GaussianFlow(m, 0.4)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(64, 2, generator=g, dtype=F64) * 2, torch.rand(64, generator=g, dtype=F64)
    torch.testing.assert_close(mix(x, t), single.velocity(x, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mix(x, t, y=torch.zeros(64, dtype=torch.long)),
                               single.velocity(x, t), rtol=1e-12, atol=1e-12)


def test_marginal_velocity_solves_the_continuity_equation():
    """d/dt p_t + div(p_t u) = 0, both sides by central differences of the written-out density."""
    flow = _mixture()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 2, generator=g, dtype=F64) * 1.5
    h = 1e-5
    for t in (0.2, 0.5, 0.8):
        dp_dt = (_density(flow, x, t + h) - _density(flow, x, t - h)) / (2 * h)
        div = torch.zeros(32, dtype=F64)
        for i in range(2):
            e = torch.zeros(2, dtype=F64)
            e[i] = h
            flux = [(_density(flow, z, t) * flow(z, torch.full((32,), t, dtype=F64))[:, i])
                    for z in (x + e, x - e)]
            div += (flux[0] - flux[1]) / (2 * h)
        scale = dp_dt.abs().max()
        assert float((dp_dt + div).abs().max()) < 1e-5 * float(scale), t
        # and the residual is not small by accident: the conditional velocity of one component
        # (a wrong marginal velocity) breaks the equation
        wrong = flow(x, torch.full((32,), t, dtype=F64), y=torch.zeros(32, dtype=torch.long))
        assert not torch.allclose(wrong, flow(x, torch.full((32,), t, dtype=F64)))


def test_exact_ode_from_noise_samples_the_data_and_each_class():
    means, sigma = gaussian_mixture("8gaussians")
    flow = GaussianMixtureFlow(means, sigma)
    n, g = 800, torch.Generator().manual_seed(2)
    noise = torch.randn(n, 2, generator=g, dtype=F64)
    ode = sample(flow, noise, 200, "heun").x
    data = sample_toy2d("8gaussians", n, torch.Generator().manual_seed(3))[0]
    data2 = sample_toy2d("8gaussians", n, torch.Generator().manual_seed(4))[0]
    assert w2(ode, data) < 1.3 * w2(data2, data)  # within the finite-sample floor
    y = torch.full((n,), 3)
    one = sample(flow, noise, 200, "heun", y=y).x  # the class-conditional ODE
    torch.testing.assert_close(one.mean(0), means[3], atol=0.02, rtol=0)
    torch.testing.assert_close(one.std(0), torch.full((2,), sigma, dtype=F64), atol=0.015,
                               rtol=0)
    assert w2(sample(flow, noise, 100, "heun").x, ode) < 1e-3  # converged in the steps


def test_null_class_is_the_marginal_and_guidance_sharpens():
    means, sigma = gaussian_mixture("8gaussians")
    flow = GaussianMixtureFlow(means, sigma)
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(16, 2, generator=g, dtype=F64), torch.rand(16, generator=g, dtype=F64)
    torch.testing.assert_close(flow(x, t, y=torch.full((16,), 8)), flow(x, t))
    noise = torch.randn(2000, 2, generator=g, dtype=F64)
    y = torch.randint(0, 8, (2000,), generator=g)
    plain = sample(flow, noise, 100, "heun", y=y).x
    guided = sample(flow, noise, 100, "heun", y=y, cfg_scale=2.0).x
    spread = {k: (x_ - means[y]).norm(dim=1).mean() for k, x_ in (("plain", plain),
                                                                  ("guided", guided))}
    assert spread["guided"] < spread["plain"]


def test_box_mixture_velocity_matches_a_monte_carlo_posterior():
    """u(x, t) = E[eps - x0 | x_t = x], estimated by self-normalised importance weights over many
    checkerboard samples, agrees with the closed form; so does the posterior mean."""
    from tvmlib.core.analytic import BoxMixtureFlow
    from tvmlib.data.toy2d import checkerboard_boxes

    flow = BoxMixtureFlow(*checkerboard_boxes())
    x0 = sample_toy2d("checkerboard", 400_000, torch.Generator().manual_seed(6))[0].double()
    g = torch.Generator().manual_seed(7)
    for t in (0.3, 0.6, 0.9):
        x = (1 - t) * sample_toy2d("checkerboard", 12, g)[0].double() \
            + t * torch.randn(12, 2, generator=g, dtype=F64)
        logw = -(x[:, None] - (1 - t) * x0[None]).square().sum(-1) / (2 * t**2)  # (12, N)
        w = torch.softmax(logw, dim=1)
        mc = (x - w @ x0) / t
        ess = 1 / w.square().sum(1)
        assert float(ess.min()) > 2000
        err = (flow(x, torch.full((12,), t, dtype=F64)) - mc).abs().max()
        assert float(err) < 0.05 / t, (t, float(err))


def test_box_mixture_is_stable_far_from_the_boxes():
    from tvmlib.core.analytic import BoxMixtureFlow
    from tvmlib.data.toy2d import checkerboard_boxes

    flow = BoxMixtureFlow(*checkerboard_boxes())
    x = torch.tensor([[10.0, -9.0], [0.3, 0.2], [-1.5, 1.5], [0.0, 0.0]], dtype=F64)
    for t in (0.01, 0.05, 0.5, 0.99):
        m = flow.posterior_mean(x, torch.full((4,), t, dtype=F64))
        assert bool(torch.isfinite(m).all())
        assert bool((m >= -2 - 1e-9).all() and (m <= 2 + 1e-9).all())  # inside the board
    # at small t a point inside a square is its own posterior mean
    inside = torch.tensor([[0.3, 0.2], [-1.5, 0.5]], dtype=F64)  # in squares (2, 2) and (0, 2)
    torch.testing.assert_close(flow.posterior_mean(inside * 0.999, torch.full((2,), 0.001,
                                                                              dtype=F64)),
                               inside, atol=5e-3, rtol=0)
