"""Measuring how Lipschitz a network is: Jacobian power iteration, perturbation ratios, d/ds f,
adaLN modulation norms and loss-spike detection (TVM paper section 3-4, Theorem 1, Fig. 4).

TVM's W2 bound (Theorem 1) holds when the learned velocity u_theta(., s) is L(s)-Lipschitz in x,
and the bound carries the Gronwall factor exp(int_0^s L(r) dr). These helpers estimate such
constants empirically, locally around given inputs:

* :func:`jacobian_spectral_norm`: ||J||_2 of J = d fn / d x at x by power iteration on J^T J,
  each iterate a lower bound that rises to it;
* :func:`perturbation_ratio`: max over random d of ||fn(x + d) - fn(x)|| / ||d||, also a lower
  bound; in high dimension random directions see the *typical* singular value, far below the
  largest.
* :func:`block_lipschitz`, :func:`velocity_lipschitz`: these applied to DiT blocks (or their
  attention / MLP branches) and to x -> u_theta(x, t).
* :func:`dfds_rms`: the size of TVM's JVP term d/ds f_theta (Eq. 17).
* :func:`modulation_rms`: adaLN modulation sizes ([P] Fig. 4 plots the modulation of the last
  time-embedding-driven layer).
* :func:`first_spike`: first point of a curve exceeding k x its running median.

"Per sample" estimates need a function that treats the samples of a batch independently (its
Jacobian is block-diagonal over the batch), as a DiT does: then one batched power iteration runs
B independent ones and returns (B,) values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tvmlib.core.flowmap import displacement_and_dfds, velocity
from tvmlib.core.path import interpolate, sample_gap_times
from tvmlib.nn.dit import DiT, DiTBlock, modulate

Fn = Callable[[Tensor], Tensor]
PARTS = ("block", "attn", "mlp")


def _norms(v: Tensor, per_sample: bool) -> Tensor:
    """Euclidean norm per sample (B,) or of the whole tensor (0-d)."""
    return v.flatten(1).norm(dim=1) if per_sample else v.norm()


def _unit(v: Tensor, per_sample: bool) -> Tensor:
    n = _norms(v, per_sample)
    n = n.view(-1, *([1] * (v.dim() - 1))) if per_sample else n
    return v / n.clamp_min(torch.finfo(v.dtype).tiny)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype,
                       device=generator.device if generator is not None else x.device).to(x.device)


def jacobian_spectral_norm(fn: Fn, x: Tensor, iters: int = 20, per_sample: bool = True,
                           generator: torch.Generator | None = None,
                           return_vector: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Largest singular value of J = d fn / d x at x, by power iteration on J^T J.

    v_0 is random; v_{k+1} = J^T J v_k / ||J^T J v_k||. Returns sigma = ||J v_K|| for the last
    unit vector v_K: a lower bound of ||J||_2 for every K, converging to it at the rate
    (sigma_2 / sigma_1)^(2K). ``per_sample``: x is (B, ...), fn treats samples independently,
    and (B,) values are returned (one power iteration per sample, batched); else a 0-d tensor
    for the Jacobian of the whole tensor. ``return_vector`` also returns v_K (x's shape).

    Cost per iteration: one JVP (``torch.func.jvp``, a forward pass with tangents) and one VJP
    (``torch.autograd.grad`` through the graph of one recorded forward pass).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if per_sample and x.dim() < 2:
        raise ValueError(f"per_sample=True needs x of shape (B, ...), got {tuple(x.shape)}")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)

    def vjp(u: Tensor) -> Tensor:  # ordinary reverse mode (the Triton attention has no func.vjp)
        (g,) = torch.autograd.grad(y, x, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(x) if g is None else g

    v = _unit(_randn_like(x, generator), per_sample)
    for _ in range(iters):
        Jv = torch.func.jvp(fn, (x.detach(),), (v,))[1]
        v = _unit(vjp(Jv), per_sample)
    sigma = _norms(torch.func.jvp(fn, (x.detach(),), (v,))[1], per_sample).detach()
    return (sigma, v.detach()) if return_vector else sigma


@torch.no_grad()
def perturbation_ratio(fn: Fn, x: Tensor, radius: float = 1e-3, n_dirs: int = 8,
                       per_sample: bool = True, generator: torch.Generator | None = None,
                       directions: Sequence[Tensor] | None = None) -> Tensor:
    """max_d ||fn(x + d) - fn(x)|| / ||d|| over random directions d of norm ``radius``.

    By the mean-value inequality each ratio is at most sup ||J|| over the segment [x, x + d],
    so this is a lower bound of fn's Lipschitz constant on the ball of that radius (for a
    linear fn: of ||J||_2 exactly). ``directions`` replaces the random ones (each x's shape;
    rescaled to ``radius``). Returns (B,) per sample, or a 0-d tensor.
    """
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    fx = fn(x)
    dirs = list(directions) if directions is not None else [
        _randn_like(x, generator) for _ in range(n_dirs)]
    if not dirs:
        raise ValueError("need at least one direction (n_dirs >= 1)")
    dirs = [radius * _unit(d.to(x), per_sample) for d in dirs]
    return torch.stack([_norms(fn(x + d) - fx, per_sample) / _norms(d, per_sample)
                        for d in dirs]).amax(0)


# ---------------------------------------------------------------------------- DiT measurements
def _as_dit(net: nn.Module) -> DiT:
    if not isinstance(net, DiT):
        raise TypeError(f"expected a tvmlib.nn.dit.DiT, got {type(net).__name__}")
    return net


def rms(v: Tensor) -> Tensor:
    """Root mean square per sample over all non-batch dims: (B, ...) -> (B,)."""
    return v.to(torch.promote_types(v.dtype, torch.float32)).flatten(1).square().mean(1).sqrt()


@torch.no_grad()
def block_inputs(net: DiT, x: Tensor, t, s=None, y=None, w=None) -> tuple[list[Tensor], Tensor]:
    """The token states h_i (B, N, D) entering each block in one forward pass, and c (B, D)."""
    net, store = _as_dit(net), []
    hooks = [b.register_forward_pre_hook(lambda m, args: store.append(args[0].detach()))
             for b in net.blocks]
    try:
        net(x, t, s, y, w)
    finally:
        for h in hooks:
            h.remove()
    return store, net.conditioning(x, t, s, y, w).detach()


def block_part(block: DiTBlock, c: Tensor, part: str = "block",
               backend: str | None = None) -> Fn:
    """h (B, N, D) -> one part of ``block`` at fixed conditioning c (B, D):

    * "block": the whole residual block h + g_a attn(...) + g_m mlp(...) (its forward);
    * "attn": the attention branch attn(modulate(norm1(h), shift, scale)), before its gate;
    * "mlp": the MLP branch mlp(modulate(norm2(h), shift, scale)), before its gate.

    At DiT's zero init the gates are 0, so every block is the identity; the branches show
    what the norms, QK-norm and init do before training has moved the gates.
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; valid: {', '.join(PARTS)}")
    c = c.detach()
    if part == "block":
        return lambda h: block(h, c, backend)
    shift_a, scale_a, _, shift_m, scale_m, _ = block.modulation(c)
    if part == "attn":
        return lambda h: block.attn(modulate(block.norm1(h), shift_a, scale_a), backend)
    return lambda h: block.mlp(modulate(block.norm2(h), shift_m, scale_m))


def block_lipschitz(net: DiT, x: Tensor, t, s=None, y=None, w=None, part: str = "block",
                    iters: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Jacobian spectral norm of each block (or branch, see :func:`block_part`) w.r.t. its token
    input, at the states of a forward pass on (x, t, s, y, w): (depth, B)."""
    hs, c = block_inputs(net, x, t, s, y, w)
    return torch.stack([
        jacobian_spectral_norm(block_part(b, c, part, net.attn_backend), h, iters,
                               generator=generator)
        for b, h in zip(net.blocks, hs)])


def velocity_lipschitz(net: nn.Module, x: Tensor, t: Tensor, y: Tensor | None = None,
                       w: Tensor | float | None = None, scale_param: bool = False,
                       iters: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample ||d u_theta(x, t) / d x||_2 for u_theta = [w] F(x, t, t): the L(t) of TVM's
    Theorem 1, measured locally at x (B, ...). Returns (B,)."""
    return jacobian_spectral_norm(lambda z: velocity(net, z, t, y, w, scale_param), x, iters,
                                  generator=generator)


def dfds_rms(net: nn.Module, x: Tensor, t: Tensor, s: Tensor, y: Tensor | None = None,
             w: Tensor | float | None = None, scale_param: bool = False) -> Tensor:
    """RMS per sample of d/ds f_theta(x, t, s) = [w] (F + (s - t) d/ds F) (Eq. 17), (B,).

    The target of TVM's terminal term is a velocity, so a healthy d/ds f has the RMS of a
    velocity (about sqrt(2) for data and noise of unit scale); growth signals a steep s-map.
    """
    with torch.no_grad():
        _, dfds = displacement_and_dfds(net, x, t, s, y, w, scale_param)
    return rms(dfds)


@torch.no_grad()
def modulation_rms(net: DiT, x: Tensor, t, s=None, y=None, w=None,
                   normalized: bool = False) -> dict[str, Tensor]:
    """RMS per sample (B,) of each layer's adaLN output, all its chunks together.

    Keys "block0", ..., "block{depth-1}", "final". ``normalized=False`` (default) measures the
    raw adaLN Linear outputs, before ``mod_norm`` ([P] Fig. 4); ``True`` what the forward pass
    uses (each chunk RMS-normalized to about 1 if ``mod_norm``).
    """
    mods = _as_dit(net).modulations(x, t, s, y, w, normalized=normalized)
    names = [f"block{i}" for i in range(len(mods) - 1)] + ["final"]
    return {name: rms(torch.cat(list(m.values()), dim=-1)) for name, m in zip(names, mods)}


# ------------------------------------------------------------------------------ the probes
@dataclass
class Probe:
    """A fixed batch for the probes of :func:`measure`: noised images x_t, (t, s), labels, w."""

    xt: Tensor
    t: Tensor
    s: Tensor
    y: Tensor
    w: Tensor


def make_probe(x_test: Tensor, y_test: Tensor, n: int, w: float, seed: int,
               device: torch.device) -> Probe:
    """``n`` random images of (x_test, y_test), noised to gap-sampled (t, s), with guidance w."""
    g = torch.Generator().manual_seed(seed + 777)
    idx = torch.randperm(len(x_test), generator=g)[:n]
    x0, y = x_test[idx], y_test[idx]
    eps = torch.randn(x0.shape, generator=g)
    t, s = sample_gap_times(n, generator=g)
    t, s = t.float(), s.float()
    xt = interpolate(x0, eps, t)
    return Probe(*(v.to(device) for v in (xt, t, s, y, torch.full((n,), w))))


def measure(net: DiT, probe: Probe, lipschitz_batch: int = 8, power_iters: int = 8,
            seed: int = 0) -> dict:
    """The ablation's probes of ``net`` on a fixed batch, in fp32: the RMS of d/ds f (Eq. 17), the
    raw adaLN modulation RMS of the final layer and of the last block (before ``mod_norm``;
    [P] Fig. 4), the RMS of the conditioning vector, and the Jacobian spectral norms of x ->
    u_theta(x, t) and of each block (power iteration, on the first ``lipschitz_batch``
    samples)."""
    p, m = probe, lipschitz_batch
    g = torch.Generator(device=p.xt.device).manual_seed(seed + 99)
    mods = modulation_rms(net, p.xt, p.t, p.s, p.y, p.w, normalized=False)
    last_block = f"block{len(net.blocks) - 1}"
    lip_u = velocity_lipschitz(net, p.xt[:m], p.t[:m], p.y[:m], p.w[:m], scale_param=True,
                               iters=power_iters, generator=g)
    lip_blocks = block_lipschitz(net, p.xt[:m], p.t[:m], p.s[:m], p.y[:m], p.w[:m],
                                 iters=power_iters, generator=g)  # (depth, m)
    return {
        "dfds_rms": float(dfds_rms(net, p.xt, p.t, p.s, p.y, p.w, scale_param=True).mean()),
        "mod_raw_rms_final": float(mods["final"].mean()),
        "mod_raw_rms_last_block": float(mods[last_block].mean()),
        "cond_rms": float(rms(net.conditioning(p.xt, p.t, p.s, p.y, p.w).detach()).mean()),
        "lip_velocity": float(lip_u.mean()),
        "lip_velocity_max": float(lip_u.max()),
        "lip_blocks": [float(v) for v in lip_blocks.mean(1)],
    }


# ------------------------------------------------------------------------------ spike detection
def first_spike(values: Sequence[float], k: float = 4.0, window: int = 50,
                warmup: int = 20) -> int | None:
    """Index of the first value above k x the median of the ``window`` values before it, or
    None. Points before ``warmup`` (the early transient) are never flagged, and need at least
    ``warmup`` earlier values as history; a NaN or inf value counts as a spike."""
    if k <= 1 or window < 1 or warmup < 1:
        raise ValueError(f"need k > 1, window >= 1, warmup >= 1; got {k}, {window}, {warmup}")
    vals = [float(v) for v in values]
    for i in range(warmup, len(vals)):
        if not math.isfinite(vals[i]):
            return i
        past = [v for v in vals[max(0, i - window):i] if math.isfinite(v)]
        if past and vals[i] > k * statistics.median(past):
            return i
    return None

