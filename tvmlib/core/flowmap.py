"""The flow map and its s-derivative (TVM paper Sec. 2-4).

A network F_theta(x, t, s) defines the displacement from time t to an earlier time s <= t,

    f_theta(x_t, t, s) = (s - t) F_theta(x_t, t, s)          (Eq. 4)
    f_theta(x_t, t, s) = (s - t) w F_theta(x_t, t, s, c, w)  (scaled parameterization, Sec. 4)

so that x_s = x_t + f_theta. Its velocity is u_theta(x, t) = d/ds f_theta |_{s=t} = F_theta(x, t, t)
(times w when scaled). TVM's terminal-velocity term needs d/ds f_theta = F + (s - t) d/ds F
(Eq. 17), computed here with one forward-mode JVP whose tangent is 1 on s and 0 on x and t.
Gradients flow through the JVP output (TVM's choice; MeanFlow and sCM stop them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tvmlib.core.path import per_sample
from tvmlib.utils.cuda import capturing


def check_times(t: Tensor, s: Tensor) -> None:
    """Flow maps jump backwards in time: require finite 0 <= s <= t <= 1 (elementwise)."""
    if t.shape != s.shape:
        raise ValueError(f"t {tuple(t.shape)} and s {tuple(s.shape)} must have the same shape")
    if capturing():  # a CUDA graph cannot read values back to the host
        return
    bad = ~((s <= t) & (s >= 0) & (t <= 1))  # NaN fails every comparison
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"flow maps need finite times 0 <= s <= t <= 1; sample {i} has "
                         f"t={float(t[i]):.4g}, s={float(s[i]):.4g}")


def check_finite(**times: Tensor) -> None:
    """Times must be finite (NaN or inf would flow silently through the network)."""
    if capturing():
        return
    for name, v in times.items():
        v = torch.as_tensor(v).flatten()
        bad = ~torch.isfinite(v)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"times must be finite; {name} is {float(v[i])} at sample {i}")


def check_guidance(w: Tensor | float | None) -> None:
    """Guidance scales must be positive (the loss is weighted by 1/w^2 and beta = 1/w)."""
    if w is None or capturing():
        return
    w_t = torch.as_tensor(w)
    if bool((w_t <= 0).any()) or not bool(torch.isfinite(w_t).all()):
        raise ValueError(f"guidance scale w must be finite and > 0, got min {float(w_t.min())}")


def output_scale(w: Tensor | float | None, scale_param: bool, x: Tensor) -> Tensor | float:
    """The factor [w] of the scaled parameterization (Sec. 4), shaped to broadcast against x;
    1 without ``scale_param`` or w."""
    if not scale_param or w is None:
        return 1.0
    w = torch.as_tensor(w, dtype=x.dtype, device=x.device)
    return per_sample(w, x) if w.dim() == 1 else w


def displacement(net: nn.Module, x: Tensor, t: Tensor, s: Tensor, y: Tensor | None = None,
                 w: Tensor | float | None = None, scale_param: bool = False) -> Tensor:
    """f_theta(x, t, s) = (s - t) [w] F_theta(x, t, s, y, w).   x: (B, ...), t, s: (B,).
    Raises ValueError unless t and s are finite and w (if given) finite and > 0; any s is
    allowed (finite differences in s step past s = 0), :func:`flow_map` wants s <= t."""
    check_finite(t=t, s=s)
    check_guidance(w)
    F = net(x, t, s, y, w)
    return per_sample(s - t, x) * output_scale(w, scale_param, x) * F


def flow_map(net: nn.Module, x: Tensor, t: Tensor, s: Tensor, y: Tensor | None = None,
             w: Tensor | float | None = None, scale_param: bool = False) -> Tensor:
    """x_s = x_t + f_theta(x_t, t, s); ValueError unless 0 <= s <= t <= 1 and w (if given) is
    finite and > 0."""
    check_times(t, s)
    return x + displacement(net, x, t, s, y, w, scale_param)


def velocity(net: nn.Module, x: Tensor, t: Tensor, y: Tensor | None = None,
             w: Tensor | float | None = None, scale_param: bool = False,
             check: bool = True) -> Tensor:
    """u_theta(x, t) = [w] F_theta(x, t, t, y, w): the instantaneous velocity of the flow map.
    t must be finite and w finite and > 0; ``check=False`` skips the checks (a host sync on a
    GPU) for callers whose t and w are valid by construction, such as the losses."""
    if check:
        check_finite(t=t)
        check_guidance(w)
    return output_scale(w, scale_param, x) * net(x, t, t, y, w)


def displacement_and_dfds(net: nn.Module, x: Tensor, t: Tensor, s: Tensor,
                          y: Tensor | None = None, w: Tensor | float | None = None,
                          scale_param: bool = False, detach_tangent: bool = False
                          ) -> tuple[Tensor, Tensor]:
    """(f_theta(x, t, s), d/ds f_theta(x, t, s)) (Eq. 17), in one of two ways, chosen by the
    network's ``jvp`` attribute (the same numbers up to rounding):

    - "fused" (the DiT's default) or "compiled" (the same through torch.compile): the
      network's own ``forward_and_dfds`` returns F and dF/ds from one pass that carries the
      tangent (:mod:`tvmlib.nn.dit_jvp`), and d/ds f = [w] (F + (s - t) dF/ds).
    - "func" (any network without a ``jvp`` attribute, e.g. ``MLP2D``): one ``torch.func.jvp``
      of f in s, with tangent 1 on s and 0 on x and t, so it differentiates only through the
      network's gap input t - s and the (s - t) prefactor.

    Both outputs carry gradients w.r.t. the network parameters (reverse through forward). With
    ``detach_tangent`` the value of d/ds f = [w] F + (s - t) [w] dF/ds is the same but its
    gradient flows only through the network output [w] F, not through the JVP's
    (s - t) dF/ds (sCM's and MeanFlow's choice: no backward through the JVP).
    """
    check_times(t, s)
    check_guidance(w)
    mode = getattr(net, "jvp", "func")
    if mode in ("fused", "compiled"):
        F, dFds = net.forward_and_dfds(x, t, s, y, w)
        gap, scale = per_sample(s - t, x), output_scale(w, scale_param, x)
        F = scale * F  # [w] F
        tangent = gap * scale * dFds  # (s - t) [w] dF/ds
        return gap * F, F + (tangent.detach() if detach_tangent else tangent)
    if mode != "func":
        raise ValueError(f"net.jvp must be 'fused', 'compiled' or 'func', got {mode!r}")

    def f_of_s(s_: Tensor) -> tuple[Tensor, Tensor]:
        F = output_scale(w, scale_param, x) * net(x, t, s_, y, w)  # [w] F
        return per_sample(s_ - t, x) * F, F

    f, dfds, F = torch.func.jvp(f_of_s, (s,), (torch.ones_like(s),), has_aux=True)
    if detach_tangent:
        dfds = F + (dfds - F).detach()
    return f, dfds
