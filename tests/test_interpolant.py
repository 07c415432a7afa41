"""The linear path, its velocity target, and the time samplers against their formulas."""

import numpy as np
import pytest
import torch
from scipy import stats

from tvmlib.core.path import (
    interpolate,
    sample_gap_times,
    sample_logit_normal,
    sample_time,
    velocity_target,
)


def test_interpolate_matches_formula_on_images():
    x0, eps = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    t = torch.rand(5)
    xt = interpolate(x0, eps, t)
    for i in range(5):
        torch.testing.assert_close(xt[i], (1 - t[i]) * x0[i] + t[i] * eps[i])
    torch.testing.assert_close(interpolate(x0, eps, torch.zeros(5)), x0)  # t = 0 is data
    torch.testing.assert_close(interpolate(x0, eps, torch.ones(5)), eps)  # t = 1 is noise


def test_velocity_target_is_time_derivative_of_path():
    x0, eps, t = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64), \
        torch.rand(4, dtype=torch.float64)
    h = 1e-6
    fd = (interpolate(x0, eps, t + h) - interpolate(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(velocity_target(x0, eps), fd, atol=1e-8, rtol=0)


def test_interpolate_rejects_bad_shapes():
    with pytest.raises(ValueError, match="times must have shape"):
        interpolate(torch.randn(4, 2), torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="must match"):
        interpolate(torch.randn(4, 2), torch.randn(4, 3), torch.rand(4))


def test_logit_normal_distribution():
    g = torch.Generator().manual_seed(0)
    t = sample_logit_normal(20000, mean=-0.4, std=1.3, generator=g).double()
    z = torch.logit(t).numpy()
    assert stats.kstest(z, "norm", args=(-0.4, 1.3)).pvalue > 1e-3
    u = sample_time(20000, "uniform", generator=g).numpy()
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    with pytest.raises(ValueError, match="valid: 'uniform', 'logit_normal'"):
        sample_time(3, "beta")


def test_gap_sampler_support_and_distributions():
    g = torch.Generator().manual_seed(1)
    t, s = sample_gap_times(40000, generator=g)
    assert bool((s >= 0).all() and (s <= t).all() and (t <= 1).all())
    gap = (t - s).double()
    # gap = sigmoid(N(-0.8, 1)): its logit is N(-0.8, 1) (KS test).
    assert stats.kstest(torch.logit(gap).numpy(), "norm", args=(-0.8, 1.0)).pvalue > 1e-3
    # s | gap is logit-normal(-0.4, 1) truncated to s <= 1 - gap: the probability integral
    # transform Phi(z_s) / Phi(z_max) must be uniform on (0, 1).
    z_s = (torch.logit(s.double()) + 0.4).numpy()
    z_max = (torch.logit(1 - gap) + 0.4).numpy()
    pit = stats.norm.cdf(z_s) / stats.norm.cdf(z_max)
    assert stats.kstest(pit, "uniform").pvalue > 1e-3
    # Not the untruncated law: s is visibly shifted below logit-normal(-0.4, 1).
    assert stats.kstest(z_s, "norm").pvalue < 1e-6


def test_gap_sampler_fraction_equal():
    g = torch.Generator().manual_seed(2)
    t, s = sample_gap_times(20000, frac_equal=0.3, generator=g)
    frac = (t == s).float().mean().item()
    assert abs(frac - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 20000)
    t0, s0 = sample_gap_times(5000, generator=g)
    assert not bool((t0 == s0).any())  # paper default: no t = s pairs
    with pytest.raises(ValueError, match="frac_equal"):
        sample_gap_times(4, frac_equal=1.5)
