"""Shared helpers of the exercise checks (``tvmlib.teach.exercises``): fixed generators, a small
float64-capable MLP, tolerant comparisons, gradient checks, and failures that name the check."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def fail(check: str, msg: str) -> None:
    raise AssertionError(f"{check}: {msg}")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def close(got: Tensor, want: Tensor, rtol: float, atol: float) -> bool:
    return got.shape == want.shape and torch.allclose(got.detach().to(want.dtype), want.detach(),
                                                       rtol=rtol, atol=atol)


def err(got: Tensor, want: Tensor) -> str:
    diff = (got.detach().to(want.dtype) - want.detach()).abs().max()
    return f"max |got - expected| = {float(diff):.3g} (max |expected| = " \
           f"{float(want.detach().abs().max()):.3g})"


def require_tensor(check: str, what: str, out, shape: tuple[int, ...]) -> Tensor:
    if not torch.is_tensor(out):
        fail(check, f"{what} must be a torch.Tensor of shape {shape}, got {type(out).__name__}")
    if tuple(out.shape) != shape:
        fail(check, f"{what} has shape {tuple(out.shape)}, expected {shape}")
    if not bool(torch.isfinite(out).all()):
        fail(check, f"{what} contains NaN or inf")
    return out


def small_mlp(seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    from tvmlib.nn.mlp import MLP2D

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MLP2D(dim=2, hidden=32, depth=2, emb_dim=8, time_scale=10.0)
    return net.to(dtype)


def grads(out: Tensor, net: nn.Module, weight: Tensor | None = None) -> list[Tensor] | None:
    """Gradients of sum(weight * out) w.r.t. the net's parameters (None if none reach them)."""
    if not out.requires_grad:
        return None
    params = list(net.parameters())
    obj = out.sum() if weight is None else (out * weight).sum()
    gs = torch.autograd.grad(obj, params, allow_unused=True, retain_graph=True)
    if all(g is None or not bool(g.any()) for g in gs):
        return None
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def check_grads(check: str, got: list[Tensor] | None, want: list[Tensor], how: str,
                 rtol: float, atol: float) -> None:
    if got is None:
        fail(check, f"no gradient reaches the network's parameters: {how}")
    worst = max(float((g - w).abs().max() / (w.abs().max() + atol)) for g, w in zip(got, want))
    if worst > rtol:
        fail(check, f"the value is right but the gradient w.r.t. the parameters is not "
                     f"(worst relative error {worst:.3g}): part of the computation is detached")
