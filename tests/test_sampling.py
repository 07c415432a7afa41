"""The sampler registry on an exact Gaussian flow: endpoint accuracy, convergence order, NFE
counting, guidance, batching, and every solver reachable through ``sample``."""

import math

import pytest
import torch

from tvmlib.core.analytic import GaussianFlow
from tvmlib.core.solvers import SOLVERS, euler, heun, sample, time_grid
from tvmlib.nn import MLP2D

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
        out = sample(FLOW, x1, k, solver="flowmap")
        assert out.nfe == k
        torch.testing.assert_close(out.x, exact, atol=1e-12, rtol=0)


@pytest.mark.parametrize("solver,nfe_per_step", [("euler", 1), ("heun", 2), ("dpm++2m", 1),
                                                 ("flowmap", 1)])
def test_every_registered_solver_counts_its_network_calls(solver, nfe_per_step):
    net = MLP2D(hidden=16, depth=2, num_classes=3)
    calls = []
    net.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    z, y = torch.randn(10, 2), torch.randint(0, 3, (10,))
    out = sample(net, z, 4, solver=solver, y=y, return_trajectory=True)
    assert out.nfe == len(calls) == 4 * nfe_per_step
    assert out.trajectory.shape == (5, 10, 2)
    torch.testing.assert_close(out.trajectory[0], z)
    torch.testing.assert_close(out.trajectory[-1], out.x)
    calls.clear()
    guided = sample(net, z, 4, solver=solver, y=y, cfg_scale=2.0)  # one doubled batch per call
    assert guided.nfe == 2 * len(calls) == 8 * nfe_per_step and set(calls) == {20}
    assert set(SOLVERS) == {"euler", "heun", "dpm++2m", "flowmap"}


def test_grids_and_errors():
    net = MLP2D(hidden=16, depth=2)
    z = torch.randn(10, 2)
    custom = torch.tensor([1.0, 0.7, 0.2, 0.0])
    assert sample(net, z, times=custom, solver="euler").nfe == 3
    torch.testing.assert_close(sample(net, z, 5, solver="heun", grid="logsnr").times,
                               time_grid(5, "logsnr"))
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(net, z, times=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="exactly one of steps or times"):
        sample(net, z)
    with pytest.raises(ValueError, match="valid: euler, heun, dpm\\+\\+2m, flowmap"):
        sample(net, z, 2, solver="rk4")
    with pytest.raises(ValueError, match="unknown grid"):
        time_grid(4, "cosine")


def test_classifier_free_guidance_and_the_scaled_guidance_input():
    net = MLP2D(hidden=16, depth=2, num_classes=3, guidance=True)
    y = torch.tensor([0, 1, 2, 0])
    z = torch.randn(4, 2)
    # w = 1 classifier-free guidance is plain conditional sampling (at twice the NFE).
    torch.testing.assert_close(sample(net, z, 5, "euler", y=y, cfg_scale=1.0).x,
                               sample(net, z, 5, "euler", y=y).x)
    # the scaled parameterization jumps with w F(x, t, s, y, w) (TVM Sec. 4)
    w = 1.7
    x1 = sample(net, z, 1, y=y, w=w, scale_param=True).x
    F = net(z, torch.ones(4), torch.zeros(4), y, torch.full((4,), w))
    torch.testing.assert_close(x1, z - w * F)
    with pytest.raises(ValueError, match="do not mix"):
        sample(net, z, 1, y=y, w=w, scale_param=True, cfg_scale=2.0)


def test_batched_sampling_equals_one_batch():
    net = MLP2D(hidden=16, depth=2, num_classes=3, guidance=True)
    z, y = torch.randn(10, 2), torch.randint(0, 3, (10,))
    w = torch.linspace(1.0, 2.0, 10)
    whole = sample(net, z, 3, y=y, w=w, scale_param=True, return_trajectory=True)
    parts = sample(net, z, 3, y=y, w=w, scale_param=True, return_trajectory=True, batch_size=4)
    torch.testing.assert_close(parts.x, whole.x)
    torch.testing.assert_close(parts.trajectory, whole.trajectory)
    assert parts.nfe == whole.nfe == 3
