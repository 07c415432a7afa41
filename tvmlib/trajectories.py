"""Teacher trajectories for Consistency Mid-Training (CMT, arXiv 2509.24526, Sec. 3) and an
on-disk cache for them.

A flow-matching teacher (any network in the project signature, velocity u(x, t) = F(x, t, t, y))
is integrated from pure noise at t = 1 down to t = 0 with a few-step ODE solver, and *every*
intermediate state is kept: the trajectory {x_{t_k}}_{k=0..M} with t_0 = 1 > t_1 > ... > t_M = 0.
CMT regresses a student flow map onto jumps along these trajectories (``tvmlib.losses.cmt``).

Time grid. CMT's teacher runs DPM-Solver++ on a grid uniform in log-SNR (geometric in the EDM
sigma, from sigma = 80 to 0.002). For x_t = (1 - t) x0 + t eps the EDM sigma is t / (1 - t) and

    logSNR(t) = log((1 - t)^2 / t^2) = 2 log((1 - t) / t),

which is -inf at t = 1 and +inf at t = 0, so a grid uniform in log-SNR needs finite ends
t_max < 1 and t_min > 0 (defaults: EDM's sigma_max = 80 and sigma_min = 0.002, i.e.
t_max = 80/81 and t_min = 0.002/1.002). :func:`logsnr_grid` takes the M + 1 points uniform in
log-SNR between them and, with ``exact_ends=True`` (the default), moves its first and last point
to exactly t = 1 and t = 0: the trajectory starts at true pure noise x_1 = eps (not at a
t_max treated as noise, CMT pitfall 5) and ends at t = 0 (no sigma_min left over), so the student
sees the jump 1 -> 0 that 1-step sampling uses. The solvers in :data:`SOLVERS` take the two
end steps exactly (Euler / Heun in the velocity, DPM-Solver++ with its infinite-h rule).
The interior points t_1..t_{M-1} stay uniform in log-SNR.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from tvmlib.sampling import Samples, _check_grid, dpm_solver_2m, euler, heun, net_velocity
from tvmlib.train import atomic_save, atomic_write_text

T_MAX = 80.0 / 81.0  # EDM sigma_max = 80 as t = sigma / (1 + sigma)
T_MIN = 0.002 / 1.002  # EDM sigma_min = 0.002
GRIDS = ("logsnr", "uniform")
SOLVERS = ("euler", "heun", "dpm++2m", "flowmap")
_VELOCITY_SOLVERS = {"euler": euler, "heun": heun, "dpm++2m": dpm_solver_2m}


# ---- time grids ------------------------------------------------------------------------------

def logsnr(t: Tensor) -> Tensor:
    """logSNR(t) = 2 log((1 - t) / t) for x_t = (1 - t) x0 + t eps (float64 in, float64 out)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return 2.0 * (torch.log1p(-t) - torch.log(t))


def t_of_logsnr(lam: Tensor) -> Tensor:
    """Inverse of :func:`logsnr`: t = sigmoid(-logSNR / 2)."""
    return torch.sigmoid(-0.5 * torch.as_tensor(lam, dtype=torch.float64))


def logsnr_grid(steps: int, t_max: float = T_MAX, t_min: float = T_MIN,
                exact_ends: bool = True) -> Tensor:
    """``steps + 1`` decreasing times uniform in log-SNR from t_max to t_min (float64).

    With ``exact_ends`` the first and last point become exactly 1 and 0 (module docstring); the
    interior points are those of the uniform log-SNR grid. ``steps=1`` with exact ends is [1, 0].
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < t_min < t_max < 1.0:
        raise ValueError(f"need 0 < t_min < t_max < 1 for a log-SNR grid, got t_min={t_min}, "
                         f"t_max={t_max}")
    lam = torch.linspace(float(logsnr(t_max)), float(logsnr(t_min)), steps + 1,
                         dtype=torch.float64)  # increasing log-SNR = decreasing t
    times = t_of_logsnr(lam)
    if exact_ends:
        times[0], times[-1] = 1.0, 0.0
    return times


def teacher_grid(steps: int, grid: str = "logsnr", t_max: float = T_MAX, t_min: float = T_MIN,
                 exact_ends: bool = True) -> Tensor:
    """The teacher's time grid by name: ``"logsnr"`` (:func:`logsnr_grid`) or ``"uniform"``
    (linspace from 1 to 0, or from t_max to t_min without exact ends)."""
    if grid == "logsnr":
        return logsnr_grid(steps, t_max, t_min, exact_ends)
    if grid == "uniform":
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        lo, hi = (0.0, 1.0) if exact_ends else (t_min, t_max)
        return torch.linspace(hi, lo, steps + 1, dtype=torch.float64)
    raise ValueError(f"unknown grid {grid!r}; valid: {', '.join(GRIDS)}")


# ---- trajectories ----------------------------------------------------------------------------

def _time_vec(t: float, x: Tensor) -> Tensor:
    """(B,) times on x's device; float64 if x is float64 (exact tests), else float32."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), t, device=x.device, dtype=dtype)


def flowmap_solver(net: nn.Module, x: Tensor, times: Tensor, y: Tensor | None = None,
                   w: Tensor | float | None = None) -> Samples:
    """Use a flow-map network as the solver: x <- x + (s - t) F(x, t, s, y, w) for consecutive
    (t, s) of the grid (TVM Fig. 3). For an exact flow map (``tvmlib.analytic.GaussianFlow``)
    this is the exact trajectory; for a trained flow map, k-step flow-map sampling. NFE = steps.
    """
    times = _check_grid(times)
    traj = [x]
    for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
        x = x + (s - t) * net(x, _time_vec(t, x), _time_vec(s, x), y, w)
        traj.append(x)
    return Samples(x, len(times) - 1, times, torch.stack(traj))


@torch.no_grad()
def teacher_trajectory(teacher: nn.Module, noise: Tensor, steps: int = 16,
                       solver: str = "dpm++2m", grid: str = "logsnr",
                       times: Tensor | None = None, y: Tensor | None = None,
                       cfg_scale: float | None = None, t_max: float = T_MAX,
                       t_min: float = T_MIN, exact_ends: bool = True) -> Samples:
    """Integrate the teacher from ``noise`` (the state at times[0], normally t = 1) to the end of
    the grid and keep every state.

    Returns ``Samples`` with ``trajectory`` (M+1, B, ...) (trajectory[0] = noise,
    trajectory[-1] = x), ``times`` (M+1,) float64 and ``nfe``. ``solver`` in :data:`SOLVERS`;
    the grid is ``times`` if given, else ``teacher_grid(steps, grid, ...)``. ``cfg_scale`` applies
    classifier-free guidance u_null + w (u_y - u_null) with the null class
    ``teacher.num_classes`` (2 NFE per step). Runs under ``torch.no_grad``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown teacher solver {solver!r}; valid: {', '.join(SOLVERS)}")
    if times is None:
        times = teacher_grid(steps, grid, t_max, t_min, exact_ends)
    if solver == "flowmap":
        if cfg_scale is not None:
            raise ValueError("cfg_scale needs a velocity solver (euler, heun, dpm++2m); a flow-map "
                             "teacher folds guidance into its input w instead")
        return flowmap_solver(teacher, noise, times, y)
    velocity, cost = net_velocity(teacher, y, None, cfg_scale)
    return _VELOCITY_SOLVERS[solver](velocity, noise, times, True, nfe_per_call=cost)


# ---- on-disk cache ---------------------------------------------------------------------------

def module_fingerprint(net: nn.Module) -> str:
    """sha256 (first 16 hex digits) of a module's state_dict: names, shapes, dtypes and values."""
    h = hashlib.sha256()
    for name, value in net.state_dict().items():
        v = value.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(v.shape)}:{v.dtype}".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


class TrajectoryCache:
    """A folder of trajectory shards, written atomically and reused when present.

    Layout: ``meta.json`` (how the trajectories were made; a cache is only reused by a run with
    the same meta, otherwise :class:`ValueError` names the differing keys) and shards
    ``shard_<index>_n<count>.pt``, each {"trajectory": (M+1, n, ...), "times": (M+1,),
    "y": (n,) or None}. A shard appears under its final name only once fully written
    (``tvmlib.train.atomic_save``), so a run killed mid-write leaves no torn shard. Tensors are
    stored as given (exact round trip).
    """

    SHARD = re.compile(r"shard_(\d{6})_n(\d+)\.pt")

    def __init__(self, folder: str | Path, meta: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta = json.loads(json.dumps(meta))  # JSON-normalised (tuples -> lists)
        meta_path = self.folder / "meta.json"
        if meta_path.exists():
            stored = json.loads(meta_path.read_text())
            diff = sorted(k for k in set(stored) | set(self.meta)
                          if stored.get(k) != self.meta.get(k))
            if diff:
                detail = "; ".join(f"{k}: cache {stored.get(k)!r} vs run {self.meta.get(k)!r}"
                                   for k in diff)
                raise ValueError(f"trajectory cache {self.folder} was made with different "
                                 f"settings ({detail}). Use another folder or delete this one.")
        else:
            atomic_write_text(json.dumps(self.meta, indent=1, sort_keys=True), meta_path)

    def shards(self) -> list[tuple[Path, int]]:
        """Complete shards in write order: (path, number of trajectories)."""
        found = []
        for p in self.folder.iterdir():
            m = self.SHARD.fullmatch(p.name)
            if m:
                found.append((int(m.group(1)), p, int(m.group(2))))
        return [(p, n) for _, p, n in sorted(found)]

    def __len__(self) -> int:
        """Number of stored trajectories."""
        return sum(n for _, n in self.shards())

    def append(self, trajectory: Tensor, times: Tensor, y: Tensor | None) -> Path:
        """Store one shard: trajectory (M+1, n, ...), times (M+1,), labels (n,) or None."""
        n = trajectory.shape[1]
        if y is not None and y.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
        shards = self.shards()
        index = int(self.SHARD.fullmatch(shards[-1][0].name).group(1)) + 1 if shards else 0
        path = self.folder / f"shard_{index:06d}_n{n}.pt"
        atomic_save({"trajectory": trajectory.detach().cpu(), "times": times.detach().cpu(),
                     "y": None if y is None else y.detach().cpu()}, path)
        return path

    def load(self, limit: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """All (or the first ``limit``) stored trajectories: (M+1, N, ...), times, y (N,) or
        None, on the CPU."""
        shards = self.shards()
        if not shards:
            raise FileNotFoundError(f"trajectory cache {self.folder} holds no shards")
        parts, times, labels = [], None, []
        total = 0
        for path, _ in shards:
            d = torch.load(path, map_location="cpu", weights_only=True)
            if times is not None and not torch.equal(times, d["times"]):
                raise ValueError(f"{path} has a different time grid from the shards before it")
            times = d["times"]
            parts.append(d["trajectory"])
            labels.append(d["y"])
            total += d["trajectory"].shape[1]
            if limit is not None and total >= limit:
                break
        traj = torch.cat(parts, dim=1)
        y = None if labels[0] is None else torch.cat(labels)
        if limit is not None:
            traj, y = traj[:, :limit], (None if y is None else y[:limit])
        return traj, times, y

