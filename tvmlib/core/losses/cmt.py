"""Consistency Mid-Training (CMT, Hu et al., arXiv 2509.24526) in flow-map form.

Mid-training learns the map along a known-good path before post-training learns it from
scratch. A frozen teacher ODE solver gives trajectories {x_k}_{k=0..M} from pure noise
(t_0 = 1 > ... > t_M = 0, ``tvmlib.core.solvers``); the student flow map regresses the jumps

    L_CMT-MF(theta) = E_{k<l} E_{x_1} || F_theta(x_k, t_k, t_l) - (x_l - x_k) / (t_l - t_k) ||^2

(paper's MF form, with our s <= t convention: t_l < t_k, so x_l = x_k + (t_l - t_k) F is the
jump the student should make). ``endpoint_only=True`` pairs every state with the trajectory's
clean end t_M = 0, the CM form L_CMT-CM = E_k d(f_theta(x_k, t_k), x_M). Targets are fixed:
no stop-grad, no EMA target, no JVP, no time weighting. The metric is L2 (element mean; the
paper's LPIPS needs downloaded weights). ``space="sample"`` measures it on the predicted state
x_k + (t_l - t_k) F instead of on F, i.e. weights each pair by (t_k - t_l)^2.

Batches: each step draws n = B / P trajectories (P = points per trajectory, default M) and
regresses P pairs from each, so the student sees B samples per step and the teacher spends
M NFE on n trajectories (about one teacher NFE per student sample; CMT pitfall 9). B < P
(``per_GPU_batch // NFE == 0`` in CMT's code, pitfall 2) is an error here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from tvmlib.core.losses.common import at_least_fp32, drop_labels, unpack_batch
from tvmlib.core.path import per_sample
from tvmlib.core.solvers import SOLVERS, T_MAX, T_MIN, sample, time_grid
from tvmlib.utils.shards import TrajectoryCache, module_fingerprint

LABEL_MODES = ("batch", "random")
SPACES = ("velocity", "sample")


def cmt_targets(x_start: Tensor, x_end: Tensor, t_start: Tensor, t_end: Tensor) -> Tensor:
    """Average velocity of a trajectory segment, (x_end - x_start) / (t_end - t_start): the
    flow-map output F(x_start, t_start, t_end) that jumps exactly onto x_end.
    x_*: (N, ...), t_*: (N,) with t_end < t_start."""
    return (x_end - x_start) / per_sample(t_end - t_start, x_start)


def all_pairs(M: int, device=None) -> tuple[Tensor, Tensor]:
    """All index pairs (k, l) with 0 <= k < l <= M of an (M+1)-state trajectory, as two
    (M (M+1) / 2,) tensors (t_k > t_l)."""
    return torch.triu_indices(M + 1, M + 1, offset=1, device=device).unbind()


class CMTLoss:
    """CMT mid-training loss; trajectories are made on the fly (or read from a cache).

    Args:
        teacher: the frozen FM teacher (put in eval mode with gradients off).
        steps: solver steps M (paper: 16). The trajectory has M + 1 states.
        solver, grid, t_max, t_min, exact_ends: see ``tvmlib.core.solvers`` (default
            DPM-Solver++(2M) on a log-SNR grid from exactly t = 1 to exactly t = 0).
        points: pairs P regressed per trajectory (default M). With ``endpoint_only`` it must
            be M: every state k < M is paired with the clean end (CMT's code).
        endpoint_only: the CM form, t_l = 0 for every pair.
        space: "velocity" (|| F - target ||^2, the MF form) or "sample" (the same error on the
            predicted state, i.e. times (t_k - t_l)^2).
        labels: "batch" (the first n labels of the batch) or "random" (uniform classes). Used
            only when the teacher is class-conditional (``teacher.num_classes > 0``).
        label_dropout: probability that a whole trajectory is made with the null class (teacher
            and student both see null), so the student also learns unconditional jumps.
        cfg_scale: teacher classifier-free guidance (None: none, as CMT's ImageNet-512 run).
        cache: folder of a :class:`~tvmlib.utils.shards.TrajectoryCache`. With
            ``cache_trajectories`` = N > 0 the first N trajectories made step by step are
            stored there, and once N are stored (in this run or an earlier one with the same
            settings) every step reads them instead of calling the teacher. :meth:`prefill`
            also writes to / reads from it.
        seed: seed of the order in which pooled (prefilled or cached) trajectories are read.

    Trajectories come from one of three places: fresh from the teacher every step (CMT's
    code; the default), a *pool* made up front by :meth:`prefill` in large batches (the
    teacher's M sequential evaluations then run at full width instead of on B / P samples,
    which matters when small evaluations are launch-bound), or the on-disk cache. A pool is read
    in a fresh random order each pass; a pool of steps * B / P trajectories uses each once,
    which has the statistics of on-the-fly generation.
    """

    def __init__(self, teacher: nn.Module, steps: int = 16, solver: str = "dpm++2m",
                 grid: str = "logsnr", t_max: float = T_MAX, t_min: float = T_MIN,
                 exact_ends: bool = True, points: int | None = None,
                 endpoint_only: bool = False, space: str = "velocity", labels: str = "batch",
                 label_dropout: float = 0.0, cfg_scale: float | None = None,
                 cache: str | Path | None = None, cache_trajectories: int = 0, seed: int = 0):
        if solver not in SOLVERS:
            raise ValueError(f"unknown teacher solver {solver!r}; valid: {', '.join(SOLVERS)}")
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        n_pairs = steps * (steps + 1) // 2
        if endpoint_only and points not in (None, steps):
            raise ValueError(f"endpoint_only pairs each of the {steps} states with the end, so "
                             f"points must be None or {steps}, got {points}")
        points = steps if points is None else points
        if not 1 <= points <= n_pairs:
            raise ValueError(f"points must be in [1, {n_pairs}] (the pairs k < l of {steps + 1} "
                             f"states), got {points}")
        if cache is None and cache_trajectories > 0:
            raise ValueError("cache_trajectories > 0 needs a cache folder")
        self.teacher = teacher.eval().requires_grad_(False)
        self.num_classes = int(getattr(teacher, "num_classes", 0) or 0)
        self.steps, self.solver, self.points = steps, solver, points
        self.grid_args = dict(grid=grid, t_max=t_max, t_min=t_min, exact_ends=exact_ends)
        self.times = time_grid(steps, **self.grid_args)  # (M+1,) float64; checks the grid
        self.endpoint_only, self.space = endpoint_only, space
        self.labels, self.label_dropout, self.cfg_scale = labels, label_dropout, cfg_scale
        self.cache_folder, self.cache_trajectories, self.seed = cache, cache_trajectories, seed
        self._cache: TrajectoryCache | None = None
        self._pool: tuple[Tensor, Tensor | None] | None = None  # (M+1, N, ...), (N,) on device
        self.cursor = 0  # trajectories read from the pool so far

    # -- shapes -----------------------------------------------------------------------------
    def num_trajectories(self, batch_size: int) -> int:
        """Trajectories per step, batch_size / points (must divide exactly)."""
        P = self.points
        if batch_size < P:
            raise ValueError(
                f"batch size {batch_size} is smaller than the {P} points regressed per "
                f"trajectory, so a step would hold no trajectory (CMT pitfall 2: per-GPU batch "
                f"must be >= NFE). Use a batch of at least {P} (per GPU) or fewer points.")
        if batch_size % P:
            lo = batch_size // P * P
            raise ValueError(f"batch size {batch_size} is not a multiple of the {P} points per "
                             f"trajectory; use {lo} or {lo + P}")
        return batch_size // P

    # -- trajectories -----------------------------------------------------------------------
    def _labels(self, n: int, y_batch: Tensor | None, device) -> Tensor | None:
        if self.num_classes == 0:
            return None
        if self.labels == "batch":
            if y_batch is None:
                raise ValueError("labels='batch' needs batches (x0, y) with labels; use "
                                 "labels='random' for a label-free source")
            y = y_batch[:n].to(device)
        else:
            y = torch.randint(0, self.num_classes, (n,), device=device)
        return drop_labels(y, self.label_dropout, self.num_classes)

    def make_trajectories(self, n: int, like: Tensor, y_batch: Tensor | None = None
                          ) -> tuple[Tensor, Tensor | None]:
        """n fresh teacher trajectories from pure noise: (M+1, n, ...) and labels (n,) or None.
        ``like`` gives the per-sample shape, dtype and device."""
        y = self._labels(n, y_batch, like.device)
        noise = torch.randn((n, *like.shape[1:]), device=like.device, dtype=like.dtype)
        out = sample(self.teacher, noise, solver=self.solver, times=self.times, y=y,
                     cfg_scale=self.cfg_scale, return_trajectory=True)
        return out.trajectory, y

    def cache_meta(self, like: Tensor) -> dict:
        """What a cached trajectory depends on (a cache is reused only if this matches)."""
        return {"teacher": module_fingerprint(self.teacher), "steps": self.steps,
                "solver": self.solver, **self.grid_args, "cfg_scale": self.cfg_scale,
                "labels": self.labels if self.num_classes else None,
                "label_dropout": self.label_dropout, "num_classes": self.num_classes,
                "sample_shape": list(like.shape[1:]), "dtype": str(like.dtype)}

    def open_cache(self, like: Tensor) -> TrajectoryCache:
        """The cache for samples shaped like ``like`` (checks its metadata)."""
        if self._cache is None:
            self._cache = TrajectoryCache(self.cache_folder, self.cache_meta(like))
        return self._cache

    @torch.no_grad()
    def prefill(self, n_total: int, like: Tensor, batch: int = 1024,
                y: Tensor | None = None) -> None:
        """Make a pool of ``n_total`` trajectories now, ``batch`` at a time, on ``like``'s device;
        every later step reads from it. Labels: ``y`` (n_total,) if given, else uniform random
        classes (with label dropout). With a cache folder only the trajectories it lacks are
        made (and appended), then the first n_total are read back."""
        if y is not None and (self.labels == "random" or y.shape != (n_total,)):
            raise ValueError(f"y must have shape ({n_total},) and needs labels='batch', got "
                             f"shape {tuple(y.shape)} with labels={self.labels!r}")
        if n_total < 1 or batch < 1:
            raise ValueError(f"n_total and batch must be >= 1, got {n_total}, {batch}")
        cache = self.open_cache(like) if self.cache_folder is not None else None
        start = len(cache) if cache is not None else 0
        parts, labels = [], []
        for i in range(start, n_total, batch):
            n = min(batch, n_total - i)
            y_i = None if y is None else y[i:i + n]
            if y_i is None and self.num_classes:
                y_i = torch.randint(0, self.num_classes, (n,), device=like.device)
            traj, y_i = self.make_trajectories(n, like, y_i)
            if cache is not None:
                cache.append(traj, self.times, y_i)
            else:
                parts.append(traj)
                labels.append(y_i)
        if cache is not None:
            traj, _, y_all = cache.load(n_total)
        else:
            traj = torch.cat(parts, dim=1)
            y_all = None if labels[0] is None else torch.cat(labels)
        self._pool = (traj.to(like.device), None if y_all is None else y_all.to(like.device))

    def _read_pool(self, n: int) -> tuple[Tensor, Tensor | None]:
        """The pool's trajectories at stream positions cursor .. cursor + n - 1; pass e reads
        ``randperm(N)`` seeded by (seed, e), so the order is reproducible and resumable from
        the cursor alone."""
        traj, y = self._pool
        N, parts, c = traj.shape[1], [], self.cursor
        while c < self.cursor + n:
            epoch, start = divmod(c, N)
            take = min(self.cursor + n - c, N - start)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            parts.append(torch.randperm(N, generator=g)[start:start + take])
            c += take
        idx = torch.cat(parts).to(traj.device)
        self.cursor += n
        return traj[:, idx], (None if y is None else y[idx])

    def trajectories(self, n: int, like: Tensor, y_batch: Tensor | None = None
                     ) -> tuple[Tensor, Tensor | None]:
        """n trajectories (M+1, n, ...) and labels (n,) or None: from the pool if there is one,
        else from the step-by-step cache once it is complete, else fresh from the teacher
        (and appended to that cache while it fills)."""
        if self._pool is None and self.cache_folder is not None:
            if self.cache_trajectories <= 0:
                raise ValueError("a cache folder without cache_trajectories is only used by "
                                 "prefill(); call prefill() first or set cache_trajectories")
            cache = self.open_cache(like)
            if len(cache) < self.cache_trajectories:
                traj, y = self.make_trajectories(n, like, y_batch)
                cache.append(traj, self.times, y)
                return traj, y
            traj, _, y = cache.load(self.cache_trajectories)
            self._pool = (traj.to(like.device), None if y is None else y.to(like.device))
        if self._pool is not None:
            return self._read_pool(n)
        return self.make_trajectories(n, like, y_batch)

    # -- pairs and the loss -----------------------------------------------------------------
    def sample_pairs(self, n: int, device=None) -> tuple[Tensor, Tensor]:
        """Index pairs (k, l), each (n, P), k < l (t_k > t_l): P pairs per trajectory drawn
        without replacement from all M (M+1) / 2, or with ``endpoint_only`` every k < M paired
        with l = M."""
        M, P = self.steps, self.points
        if self.endpoint_only:
            k = torch.arange(M, device=device).expand(n, M)
            return k, torch.full_like(k, M)
        k_all, l_all = all_pairs(M, device)
        pick = torch.rand(n, len(k_all), device=device).argsort(dim=1)[:, :P]  # (n, P)
        return k_all[pick], l_all[pick]

    def residual(self, net: nn.Module, x_start: Tensor, t_start: Tensor, x_end: Tensor,
                 t_end: Tensor, y: Tensor | None) -> Tensor:
        """Per-sample squared error (element mean) of the student's jump, (N,)."""
        F = net(x_start, t_start, t_end, y)
        err = at_least_fp32(F) - at_least_fp32(cmt_targets(x_start, x_end, t_start, t_end))
        if self.space == "sample":
            err = err * per_sample(t_start - t_end, err)
        return err.square().flatten(1).mean(1)

    def __call__(self, net: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        x0, y_batch = unpack_batch(batch)
        n = self.num_trajectories(x0.shape[0])
        traj, y = self.trajectories(n, x0, y_batch)  # (M+1, n, ...), (n,) or None
        k, l = self.sample_pairs(n, x0.device)  # (n, P) each
        r = torch.arange(n, device=x0.device)[:, None].expand_as(k)
        x_start, x_end = traj[k.flatten(), r.flatten()], traj[l.flatten(), r.flatten()]
        tdtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
        times = self.times.to(device=x0.device, dtype=tdtype)
        t_start, t_end = times[k.flatten()], times[l.flatten()]
        y_rep = None if y is None else y.repeat_interleave(self.points)
        loss = self.residual(net, x_start, t_start, x_end, t_end, y_rep).mean()
        return loss, {"loss": loss.detach()}

    # -- checkpoint hooks used by the training loop ---------------------------------------------
    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])
