"""The check of notebook 05's exercise: CMT's flow-map loss on given teacher trajectories.

``check_cmt_loss`` works like the checks of ``tvmlib.teach.exercises`` (with the shared helpers of
``tvmlib.teach.checking``): it runs a student's function on fixed inputs, compares it with the
library in float64, gradients included, and names the usual mistake when the value matches one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from tvmlib.teach import checking as ck

__all__ = ["check_cmt_loss"]


def _image_student(seed: int) -> tuple[Callable, nn.Module]:
    """A tiny flow map F(x, t, s) for (B, 1, 4, 4) states (pixels and both times, one Linear),
    and the module holding its parameters."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lin = nn.Linear(18, 16, dtype=torch.float64)
    return (lambda x, t, s: torch.tanh(lin(torch.cat([x.flatten(1), t[:, None], s[:, None]],
                                                      1))).view_as(x)), lin


def _cmt_inputs(shape: tuple[int, ...], n: int = 5, P: int = 4, M: int = 6):
    """Trajectories (M+1, n, *shape), the log-SNR times (M+1,) and P pairs k < l each (n, P)."""
    from tvmlib.core.losses.cmt import all_pairs
    from tvmlib.core.solvers import time_grid

    g = ck.gen(9)
    traj = torch.randn(M + 1, n, *shape, generator=g, dtype=torch.float64)
    k_all, l_all = all_pairs(M)
    pick = torch.rand(n, len(k_all), generator=g).argsort(dim=1)[:, :P]  # (n, P)
    return traj, time_grid(M, "logsnr"), k_all[pick], l_all[pick]


def _cmt_loss(student, traj, times, k, l, rows=None, call="kl", sign=1.0, to_end=False,
              divide=True, reduce=None) -> Tensor:
    """The CMT loss, or (with the keywords) one of the usual mistakes in it."""
    from tvmlib.core.losses.cmt import cmt_targets

    n, P = k.shape
    r = torch.arange(n)[:, None].expand(n, P) if rows is None else rows  # (n, P) trajectory
    l = torch.full_like(l, len(times) - 1) if to_end else l
    x_k, x_l = (traj[k, r].reshape(n * P, *traj.shape[2:]),
                traj[l, r].reshape(n * P, *traj.shape[2:]))  # (n P, ...)
    t_k, t_l = times[k].reshape(-1), times[l].reshape(-1)  # (n P,)
    target = cmt_targets(x_k, x_l, t_k, t_l) if divide else x_l - x_k
    t_in, s_in = {"kl": (t_k, t_l), "lk": (t_l, t_k), "kk": (t_k, t_k)}[call]
    err = (student(x_k, t_in, s_in) - sign * target).square()
    return err.mean() if reduce is None else reduce(err)


_CMT_MISTAKES = {
    "the target has the wrong sign: it is (x_l - x_k) / (t_l - t_k), 'later minus earlier' "
    "in both differences": {"sign": -1.0},
    "you forgot to divide by the time gap t_l - t_k": {"divide": False},
    "t and s are swapped: the jump from t_k to t_l is F(x_k, t_k, t_l)": {"call": "lk"},
    "you regressed the velocity F(x_k, t_k, t_k): the jump needs its end time as s, "
    "F(x_k, t_k, t_l)": {"call": "kk"},
    "the pairs come from the wrong trajectories: pair (k[i, p], l[i, p]) belongs to trajectory i, "
    "so after flattening the trajectory index is i repeated P times (repeat_interleave, not "
    "repeat)": {"rows": "repeat"},
    "every state is paired with the trajectory's end (the consistency-model form); pair state k "
    "with state l": {"to_end": True},
    "you summed over the coordinates; average over all elements (.mean())":
        {"reduce": lambda e: e.flatten(1).sum(1).mean()},
    "you summed instead of averaging; use .mean()": {"reduce": lambda e: e.sum()},
}


def check_cmt_loss(fn: Callable[[nn.Module, Tensor, Tensor, Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(student, traj, times, k, l) -> loss``: CMT's flow-map loss
    mean || F(x_k, t_k, t_l) - (x_l - x_k) / (t_l - t_k) ||^2 over the pairs (k[i, p], l[i, p])
    of trajectory i (x_k = traj[k[i, p], i]) of traj (M+1, n, ...) at times (M+1,), as
    ``tvmlib.core.losses.CMTLoss``; 2D states on an MLP2D, then (1, 4, 4) images, in float64."""
    name = "check_cmt_loss"
    mlp = ck.small_mlp(7, torch.float64)
    for (student, params), shape in (((mlp, mlp), (2,)), (_image_student(8), (1, 4, 4))):
        traj, times, k, l = _cmt_inputs(shape)
        try:
            got = fn(student, traj.clone(), times.clone(), k.clone(), l.clone())
        except NotImplementedError:  # an unsolved exercise stub: let it say so
            raise
        except RuntimeError as e:
            ck.fail(name, f"for states of shape {tuple(traj.shape)} your function raised '{e}': "
                        "flatten the (n, P) pairs into one batch of n P states, and let the time "
                        "gap broadcast over the other dimensions of the states")
        if not torch.is_tensor(got) or got.dim() != 0:
            ck.fail(name, "return the loss as a scalar (0-d) tensor: average with .mean()")
        want = _cmt_loss(student, traj, times, k, l)
        if not ck.close(got, want, 1e-9, 1e-12):
            n, P = k.shape
            for why, kw in _CMT_MISTAKES.items():
                if kw.get("rows") == "repeat":
                    kw = {"rows": (torch.arange(n * P) % n).reshape(n, P)}
                if ck.close(got, _cmt_loss(student, traj, times, k, l, **kw), 1e-9, 1e-12):
                    ck.fail(name, why)
            ck.fail(name, f"wrong loss for states of shape {tuple(traj.shape)}: expected "
                        f"{float(want):.6g}, got {float(got.detach()):.6g}")
        ck.check_grads(name, ck.grads(got, params), ck.grads(want, params),
                     "do not compute the student's jump under torch.no_grad() or .detach() it",
                     1e-6, 1e-12)
