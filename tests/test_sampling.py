"""Samplers on an exact Gaussian flow: endpoint accuracy, convergence order, NFE counting."""

import math

import pytest
import torch

from tvmlib.analytic import GaussianFlow
from tvmlib.nn import MLP2D
from tvmlib.sampling import euler, heun, sample_flowmap, sample_ode, time_grid

FLOW = GaussianFlow(torch.tensor([1.0, -2.0]), sigma=0.5)


def _endpoint_error(solver, steps: int, x1: torch.Tensor) -> float:
    out = solver(FLOW.velocity, x1, time_grid(steps))
    exact = FLOW.flow_map(x1, torch.ones(len(x1), dtype=torch.float64),
                          torch.zeros(len(x1), dtype=torch.float64))
    return (out.x - exact).abs().max().item()


@pytest.mark.parametrize("solver,order", [(euler, 1), (heun, 2)])
def test_convergence_order(solver, order):
    """Doubling the steps divides the global error by ~2^order."""
    x1 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errs = [_endpoint_error(solver, n, x1) for n in (16, 32, 64, 128)]
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(abs(r - order) < 0.15 for r in rates), (errs, rates)


def test_exact_flow_map_is_exact_in_one_step():
    x1 = torch.randn(32, 2, dtype=torch.float64)
    exact = FLOW.flow_map(x1, torch.ones(32, dtype=torch.float64),
                          torch.zeros(32, dtype=torch.float64))
    for k in (1, 3, 8):
        out = sample_flowmap(FLOW, x1, k)
        assert out.nfe == k
        torch.testing.assert_close(out.x, exact, atol=1e-12, rtol=0)


def test_trajectories_nfe_and_grids():
    net = MLP2D(hidden=16, depth=2)
    z = torch.randn(10, 2)
    out = sample_ode(net, z, 4, method="heun", return_trajectory=True)
    assert out.nfe == 8 and out.trajectory.shape == (5, 10, 2)
    torch.testing.assert_close(out.trajectory[0], z)
    torch.testing.assert_close(out.trajectory[-1], out.x)
    custom = torch.tensor([1.0, 0.7, 0.2, 0.0])
    assert sample_ode(net, z, times=custom).nfe == 3
    assert sample_flowmap(net, z, times=custom, return_trajectory=True).trajectory.shape[0] == 4
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_ode(net, z, times=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="exactly one of steps or times"):
        sample_ode(net, z)
    with pytest.raises(ValueError, match="valid: euler, heun"):
        sample_ode(net, z, 2, method="rk4")


def test_classifier_free_guidance_costs_two_nfe():
    net = MLP2D(hidden=16, depth=2, num_classes=3)
    y = torch.tensor([0, 1, 2, 0])
    z = torch.randn(4, 2)
    out = sample_ode(net, z, 5, y=y, cfg_scale=2.0)
    assert out.nfe == 10
    # w = 1 guidance is plain conditional sampling.
    torch.testing.assert_close(sample_ode(net, z, 5, y=y, cfg_scale=1.0).x,
                               sample_ode(net, z, 5, y=y).x)
