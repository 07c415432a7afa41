"""One training loop for every loss: AdamW with linear warm-up, gradient clipping, an evaluation
EMA, periodic metrics (CSV + JSON), atomic checkpoints with exact resume, a time budget, and
clear errors on a non-finite loss or gradient.

A loss is any callable ``loss_fn(net, batch) -> (loss, logs)``. If it also has
``after_step(net)`` (TVM's EMA target) the loop calls it after every optimizer step, and its
``state_dict`` / ``load_state_dict`` go into the checkpoint. A batch source is any object with
``next_batch()`` returning one *global* batch; with ``state_dict`` / ``load_state_dict`` too,
resuming replays the very same batches. Under ``torchrun`` every process draws the same global
batch and trains on its slice (``tvmlib.training.distributed``).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from tvmlib.core.ema import EMA
from tvmlib.training.checkpoint import load_checkpoint, run_lock, save_checkpoint
from tvmlib.training.distributed import average_gradients, collective, world
from tvmlib.training.graphs import GraphedLossBackward, check_graph_support, map_batch
from tvmlib.training.rules import positive_or_none
from tvmlib.utils.atomic import atomic_write_json, atomic_write_text
from tvmlib.utils.checks import choice, fail, flag, integer, number
from tvmlib.utils.cuda import GpuClock


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings (defaults suit the 2D toys on a CPU)."""

    steps: int = 2000
    lr: float = 1e-3
    warmup: int = 0  # steps of linear learning-rate warm-up
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay_n = min(ema_decay, (1 + n) / (10 + n)) (tvmlib.core.ema)
    log_every: int = 100
    ckpt_every: int = 0  # 0: checkpoint only at the end and on interruption
    ckpt_path: str | None = None
    log_path: str | None = None  # writes <log_path>.csv and <log_path>.json
    seed: int = 0
    micro_batches: int = 1  # gradient accumulation: micro-batches per process and step
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16"; "off"
    progress: bool | None = None  # None: on unless $CI or $TVMLIB_QUIET is set
    cuda_graph: bool = False  # replay loss + backward as one CUDA graph
    sync_every: int = 1  # read loss and gradient norm back every N steps (see train())
    time_budget_s: float | None = None  # stop (checkpointed) after this many training seconds


@dataclass
class TrainState:
    """What a run leaves behind: the network, its EMA, the optimizer, and the metric history.
    ``train_seconds`` counts CUDA-synchronised training time (evaluations and checkpoint writes
    excluded); ``timings`` holds what it excludes or contains: ``ckpt_s``, the seconds spent
    writing checkpoints, and ``first_step_s``, the seconds of each process's first step
    (compilation, autotuning, a CUDA graph's capture; inside the training time); ``stopped``
    says why a run ended before ``steps`` ("time budget"), else None; ``log_window`` sums the
    step logs since the last history row (checkpointed, so a resumed run's rows average the
    same steps)."""

    net: nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    step: int = 0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    stopped: str | None = None
    log_window: dict = field(default_factory=lambda: {"sums": {}, "n": 0})  # since the last row
    timings: dict = field(default_factory=lambda: {"ckpt_s": 0.0, "first_step_s": []})


RESUME_SETTINGS = ("lr", "warmup", "betas", "weight_decay", "grad_clip", "ema_decay", "ema_warmup",
                   "seed", "amp")  # a resumed run must have the checkpoint's


def check_train_config(cfg: TrainConfig) -> TrainConfig:
    """Raise ConfigError naming the field (``TrainConfig.lr must be > 0, got 0``) for a value the
    loop cannot train with; 0 for ``log_every`` / ``ckpt_every`` means only at the end."""
    prefix = "TrainConfig."
    for name, low in (("steps", 1), ("micro_batches", 1), ("warmup", 0), ("log_every", 0),
                      ("ckpt_every", 0), ("seed", 0), ("sync_every", 1)):
        integer(prefix + name, getattr(cfg, name), low)
    number(prefix + "lr", cfg.lr, positive=True)
    number(prefix + "weight_decay", cfg.weight_decay, low=0)
    number(prefix + "ema_decay", cfg.ema_decay, low=0, high=1, below_high=True)
    if len(cfg.betas) != 2:
        fail(prefix + "betas", "must be two numbers in [0, 1)", cfg.betas)
    for b in cfg.betas:
        number(prefix + "betas", b, low=0, high=1, below_high=True)
    positive_or_none(prefix + "grad_clip", cfg.grad_clip, "None (no clipping)")
    if cfg.time_budget_s is not None:
        number(prefix + "time_budget_s", cfg.time_budget_s, low=0)  # 0: spent, no step
    choice(prefix + "amp", cfg.amp, ("auto", "bf16", "off"))
    flag(prefix + "ema_warmup", cfg.ema_warmup)
    flag(prefix + "cuda_graph", cfg.cuda_graph)
    return cfg


def quiet() -> bool:
    """True in CI logs (``$CI``) or when ``$TVMLIB_QUIET`` is set: no progress bars."""
    return any(os.environ.get(k, "") not in ("", "0", "false") for k in ("CI", "TVMLIB_QUIET"))


def autocast(amp: str, device: torch.device, cuda_graph: bool = False):
    """The precision policy of every run: bf16 autocast on CUDA (``amp`` "auto") or anywhere
    (``"bf16"``), else full precision (``"off"``). A CUDA graph must not hold autocast's weight
    cache."""
    choice("amp", amp, ("auto", "bf16", "off"))
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not cuda_graph)
    return contextlib.nullcontext()


def phase(name: str):
    """Label a part of the step for the PyTorch profiler (``tvmlib.apps.bench.loop_profile``);
    nothing at all while no profiler runs."""
    if torch.autograd._profiler_enabled():
        return torch.profiler.record_function(f"loop/{name}")
    return contextlib.nullcontext()


def write_log(history: list[dict], log_path: str) -> None:
    """Write the metric history as ``<log_path>.json`` and ``<log_path>.csv`` (atomically)."""
    atomic_write_json(history, f"{log_path}.json")
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys) for row in history]
    atomic_write_text("\n".join(lines) + "\n", f"{log_path}.csv")


def _micro_seed(seed: int, step: int, index: int) -> int:
    """A seed for micro-batch ``index`` of ``step``: the loss's noise then depends only on
    (seed, step, index), not on how micro-batches are spread over processes."""
    return (seed * 1_000_003 + step) * 4099 + index


def _chunk(batch, i: int, n: int):
    """Micro-batch i of n from a global batch (x0 or (x0, y))."""
    def part(b: torch.Tensor) -> torch.Tensor:
        if b.shape[0] % n:
            raise ValueError(f"global batch {b.shape[0]} is not divisible into {n} micro-batches")
        return b.chunk(n)[i]

    return map_batch(part, batch)


class _StopFlag:
    """Turns SIGTERM (cluster pre-emption) and a first Ctrl-C (SIGINT) into a checkpoint at the
    next step boundary; a second Ctrl-C stops at once, keeping the last checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.requested, self.previous = None, {}
        try:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not in the main thread: leave signals alone
            pass
        return self

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt("second Ctrl-C")
        self.requested = signal.Signals(signum).name
        if signum == signal.SIGINT:  # os.write: a print could re-enter a print it interrupted
            os.write(2, b"Ctrl-C: stopping after this step with a checkpoint "
                        b"(Ctrl-C again: at once)\n")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class _Pending:
    """A step's logs not yet read back from the device: ``values`` holds (loss sum, gradient
    norm, the loss's tensor logs) as one float32 vector; ``numbers`` the logs that were plain
    numbers; ``keys`` the loss's log names in their order."""

    step: int
    lr: float
    values: torch.Tensor
    keys: tuple[str, ...]
    numbers: dict[str, float]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The logs as 0-d device tensors (reading one synchronises)."""
        names = ("loss_sum", "grad_norm", *(k for k in self.keys if k not in self.numbers))
        return dict(zip(names, self.values))


class _Step:
    """One optimizer step: micro-batches, gradient all-reduce, checks, clipping, AdamW, EMAs."""

    def __init__(self, state: TrainState, loss_fn: Callable, cfg: TrainConfig):
        self.state, self.loss_fn, self.cfg = state, loss_fn, cfg
        self.device = next(state.net.parameters()).device
        self.rank, self.world = world()
        self.autocast = lambda: autocast(cfg.amp, self.device, cfg.cuda_graph)
        self.graphed = None
        if cfg.cuda_graph:
            check_graph_support(state.net, loss_fn, cfg.micro_batches)
            self.graphed = GraphedLossBackward(state.net, loss_fn, self.autocast,
                                               cfg.micro_batches)
        self.last_finite = (None, None)  # (step, loss)
        self.sync = average_gradients  # (net, world, loss_sum); a benchmark may time it

    def gradients(self, batch) -> tuple[torch.Tensor, dict]:
        """Accumulate this process's micro-batch gradients; returns (the sum of the micro-batch
        losses (a tensor, not read back), the last micro-batch's logs)."""
        net, n_micro, step = self.state.net, self.cfg.micro_batches, self.state.step
        if self.graphed is None:
            self.state.opt.zero_grad(set_to_none=True)
        else:
            self.graphed.zero_grad()
        loss_sum = torch.zeros((), device=self.device)
        for k in range(n_micro):
            index = self.rank * n_micro + k
            seed = _micro_seed(self.cfg.seed, step, index)
            micro = map_batch(lambda b: b.to(self.device, non_blocking=True),
                              _chunk(batch, index, self.world * n_micro))
            if self.graphed is not None:  # the replay adds loss / n_micro's gradients
                loss, logs = self.graphed(micro, seed)
            else:
                torch.manual_seed(seed)
                with self.autocast():
                    loss, logs = self.loss_fn(net, micro)
                (loss / n_micro).backward()
            loss_sum += loss.detach().float()
        if self.world > 1:
            with collective("gradient all-reduce", step + 1, self.cfg.ckpt_path):
                self.sync(net, self.world, loss_sum)  # loss_sum becomes the mean over processes
        return loss_sum, logs

    def __call__(self, batch) -> dict[str, float] | _Pending:
        """Take one step; returns its logs (loss, gradient norm before clipping, lr, ...), or
        with ``sync_every`` > 1 the same still on the device (:meth:`read_back` reads them)."""
        state, cfg = self.state, self.cfg
        if cfg.warmup and state.step <= cfg.warmup:  # later steps keep what a callback sets
            for group in state.opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (state.step + 1) / cfg.warmup)
        lr = state.opt.param_groups[0]["lr"]
        with phase("loss_backward"):
            loss_sum, logs = self.gradients(batch)
        with phase("clip_and_checks"):
            norm = nn.utils.clip_grad_norm_(
                state.net.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf"))
            out = self.pending(loss_sum, norm, logs, lr)
            if cfg.sync_every == 1:  # read now: a bad value stops the run before its update
                out = self.read_back([out])[0]
        with phase("optimizer"):
            state.opt.step()
        with phase("emas"):
            state.ema.update(state.net)
            if hasattr(self.loss_fn, "after_step"):
                self.loss_fn.after_step(state.net)
        state.step += 1
        return out

    def pending(self, loss_sum: torch.Tensor, norm: torch.Tensor, logs: dict, lr: float
                ) -> _Pending:
        """This step's logs gathered into one new device vector (a CUDA graph's outputs are
        overwritten by its next replay), nothing read back."""
        tensors = {k: v for k, v in logs.items() if isinstance(v, torch.Tensor)}
        values = torch.stack([loss_sum, norm.to(loss_sum.device, torch.float32),
                              *(v.detach().to(loss_sum.device, torch.float32).reshape(())
                                for v in tensors.values())])
        return _Pending(self.state.step + 1, lr, values, tuple(logs),
                        {k: float(v) for k, v in logs.items() if k not in tensors})

    def read_back(self, entries: list) -> list[dict[str, float]]:
        """The logs of ``entries`` (:class:`_Pending`, or logs already read) as numbers, with
        one synchronisation for all; raises FloatingPointError at the first step, in order,
        whose loss or gradient norm is not finite."""
        waiting = [e for e in entries if isinstance(e, _Pending)]
        rows = iter(torch.stack([e.values for e in waiting]).tolist() if waiting else [])
        out = []
        for e in entries:
            if not isinstance(e, _Pending):
                out.append(e)
                continue
            loss_sum, grad_norm, *rest = next(rows)
            loss = loss_sum / self.cfg.micro_batches
            self.check_finite(e.step, loss, grad_norm)
            read = dict(zip((k for k in e.keys if k not in e.numbers), rest))
            out.append({**{k: e.numbers.get(k, read.get(k)) for k in e.keys}, "loss": loss,
                        "grad_norm": grad_norm, "lr": e.lr})
        return out

    def check_finite(self, step: int, loss: float, grad_norm: float) -> None:
        """Raise FloatingPointError on a non-finite loss or gradient norm at ``step``, naming
        it and the last finite loss (with ``sync_every`` 1, before that step's update)."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss) else f"gradient norm (loss {loss:.4g})"
            raise FloatingPointError(
                f"non-finite {what} at step {step}; last finite loss: "
                f"{self.last_finite[1]} at step {self.last_finite[0]}. Lower the learning rate, "
                "enable grad_clip, or check the data for NaNs.")
        self.last_finite = (step, loss)


def _new_state(net: nn.Module, cfg: TrainConfig) -> TrainState:
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                            weight_decay=cfg.weight_decay)
    return TrainState(net, EMA(net, cfg.ema_decay, cfg.ema_warmup), opt)


def optimizer_step(net: nn.Module, loss_fn: Callable, cfg: TrainConfig) -> _Step:
    """The loop's own step on a fresh state (``.state``), for benchmarks: call it with one
    global batch; its ``.sync`` is the gradient all-reduce (wrap it to time it)."""
    return _Step(_new_state(net, check_train_config(cfg)), loss_fn, cfg)


def train(net: nn.Module, loss_fn: Callable, source, cfg: TrainConfig, resume: bool = False,
          eval_fn: Callable[[TrainState], dict] | None = None, eval_every: int = 0,
          callback: Callable[[TrainState, dict], None] | None = None) -> TrainState:
    """Train ``net`` for ``cfg.steps`` optimizer steps and return the final ``TrainState``.

    Each step takes one global batch from ``source`` and splits it into world size x
    ``cfg.micro_batches`` micro-batches; under ``torchrun`` this process handles its share and
    the gradients are all-reduced, so N processes give the update of one process with N times
    the micro-batches. The loss's random draws are seeded per (seed, step, micro-batch).

    ``resume=True`` continues from ``cfg.ckpt_path`` if it exists, the same run only (same
    classes of network, loss and source, same :data:`RESUME_SETTINGS`; ValueError otherwise).
    While it trains, the checkpoint is locked (``<ckpt_path>.lock``): a second process training
    into it fails at once. ``eval_fn(state)`` runs on rank 0 every ``eval_every`` steps (and at
    the end), outside the training clock, and its dict is logged. ``callback(state, logs)``
    runs after every step; it may raise (e.g. KeyboardInterrupt) to stop, and the loop
    checkpoints first, as on SIGTERM or a first Ctrl-C (both finish the step under way). A run
    that reaches ``cfg.time_budget_s`` stops with ``state.stopped = "time budget"``.

    Each step reads its loss and gradient norm back from the device and checks them before its
    update. With ``cfg.sync_every`` N > 1 they are read back every N steps (and at every step
    that logs a row, evaluates, checkpoints or stops), so the host need not wait for the device
    each step: the updates and the history are the same; a non-finite value is found up to N
    steps late, still named by its step, and no checkpoint is written past it; the callback's
    logs between read-backs are device tensors; the training clock is synchronised at the
    read-backs and where its unsynchronised reading reaches the time budget.
    """
    check_train_config(cfg)
    torch.manual_seed(cfg.seed)
    state = _new_state(net, cfg)
    settings = {k: getattr(cfg, k) for k in RESUME_SETTINGS}
    locked = cfg.ckpt_path and world()[0] == 0
    with run_lock(cfg.ckpt_path) if locked else contextlib.nullcontext():
        if resume and cfg.ckpt_path and Path(cfg.ckpt_path).exists():
            load_checkpoint(cfg.ckpt_path, state, loss_fn, source, settings)
        return _Loop(state, loss_fn, source, cfg, eval_fn, eval_every, callback, settings).run()


class _Loop:
    """The loop of :func:`train`: steps, logs, evaluations, checkpoints, interruptions."""

    def __init__(self, state, loss_fn, source, cfg, eval_fn, eval_every, callback, settings):
        self.state, self.source, self.cfg = state, source, cfg
        self.eval_fn, self.eval_every, self.callback = eval_fn, eval_every, callback
        self.step, self.rank = _Step(state, loss_fn, cfg), world()[0]
        self.clock = GpuClock(self.step.device)
        self.save = (lambda: save_checkpoint(cfg.ckpt_path, state, loss_fn, source, settings)) \
            if cfg.ckpt_path and self.rank == 0 else (lambda: None)
        self.bar = tqdm(total=cfg.steps, initial=state.step, mininterval=1.0,
                        disable=self.rank != 0 or (not cfg.progress if cfg.progress is not None
                                                   else quiet()))
        self.pending: list[tuple[int, dict | _Pending]] = []  # (step, logs) not yet logged
        self.first, self.done_before, self.stop = state.step, state.train_seconds, None

    def run(self) -> TrainState:
        state, cfg, at_boundary = self.state, self.cfg, True  # False while a step is half done
        first, done_before = self.first, self.done_before
        try:
            with _StopFlag() as stop:
                self.stop = stop
                self.clock.begin()
                while state.step < cfg.steps and state.stopped is None:
                    if self.over_budget():
                        break
                    at_boundary = False
                    state.net.train()
                    with phase("batch"):
                        batch = self.source.next_batch()
                    logs = self.step(batch)
                    at_boundary = True
                    with phase("clock"):
                        state.train_seconds = done_before + self.reading()
                    if state.step == first + 1:
                        state.timings["first_step_s"].append(state.train_seconds - done_before)
                    with phase("bookkeeping"):
                        self.after_step(logs)
                    if self.callback is not None:
                        with self.clock.pause():
                            self.callback(state, logs.tensors() if isinstance(logs, _Pending)
                                          else logs)
                    if stop.requested:
                        raise KeyboardInterrupt(stop.requested)
        except KeyboardInterrupt:
            if cfg.ckpt_path and at_boundary:
                self.flush()
                self.save()
                print(f"interrupted: checkpoint at step {state.step} written to {cfg.ckpt_path}")
            elif cfg.ckpt_path:
                print(f"interrupted mid-step {state.step + 1}: kept the last checkpoint")
            raise
        finally:
            self.bar.close()
        self.flush()
        if state.step != first or not (cfg.ckpt_path and Path(cfg.ckpt_path).exists()):
            self.save()  # a resumed run with nothing left to do leaves its checkpoint alone
        return state

    def sync_due(self) -> bool:
        """Whether this step's logs are read back now: every ``sync_every`` steps, and at every
        step that logs a row, evaluates, checkpoints, stops, or is this process's first."""
        s, cfg = self.state.step, self.cfg
        every = [cfg.sync_every, cfg.log_every, cfg.ckpt_every]
        return (any(n and s % n == 0 for n in every) or s in (cfg.steps, self.first + 1)
                or self.state.stopped is not None or self.eval_due()
                or bool(self.stop and self.stop.requested))

    def eval_due(self) -> bool:
        s = self.state.step
        return (self.rank == 0 and self.eval_fn is not None and bool(self.eval_every)
                and (s % self.eval_every == 0 or s == self.cfg.steps
                     or self.state.stopped is not None))

    def reading(self) -> float:
        """The training clock after this step: synchronised every step with ``sync_every`` 1,
        else only where the logs are read back and where the unsynchronised reading reaches the
        time budget (the device may still be finishing queued steps)."""
        if self.cfg.sync_every == 1 or self.sync_due():
            return self.clock.seconds()
        t, budget = self.clock.seconds(sync=False), self.cfg.time_budget_s
        if budget is not None and self.done_before + t >= budget:
            t = self.clock.seconds()
        return t

    def read_pending(self) -> list[tuple[int, dict[str, float]]]:
        """(step, logs) of the steps not yet logged, read back with one synchronisation."""
        if not self.pending:
            return []
        steps, entries = zip(*self.pending)
        self.pending = []
        return list(zip(steps, self.step.read_back(list(entries))))

    def flush(self) -> None:
        """Log the pending steps in order (before a checkpoint of an interrupted run)."""
        for step, logs in self.read_pending():
            self.log(logs, None, step)

    def over_budget(self) -> bool:
        """True (and ``state.stopped`` set) once the training seconds reach the budget."""
        budget = self.cfg.time_budget_s
        if budget is not None and self.state.train_seconds >= budget:
            self.state.stopped = "time budget"
        return self.state.stopped is not None

    def after_step(self, logs: dict | _Pending) -> None:
        """Budget, evaluation, the log row, progress bar and checkpoint of a step."""
        state, cfg = self.state, self.cfg
        self.over_budget()
        self.bar.update(1)
        self.pending.append((state.step, logs))
        if not self.sync_due():
            return
        *before, (_, logs) = self.read_pending()
        for step, earlier in before:
            self.log(earlier, None, step)
        extra = None
        if self.eval_due():
            with self.clock.pause():
                extra = self.eval_fn(state)
        row = self.log(logs, extra, state.step, force=state.stopped is not None)
        if row:
            self.bar.set_postfix(loss=f"{row.get('loss', logs['loss']):.4g}")
        if cfg.ckpt_every and state.step % cfg.ckpt_every == 0:
            with self.clock.pause() as paused:  # I/O, not training: its frequency is arbitrary
                self.save()
            state.timings["ckpt_s"] += paused()

    def log(self, logs: dict[str, float], extra: dict | None, step: int,
            force: bool = False) -> dict:
        """Average step logs over ``log_every`` steps into a history row (and the log files);
        the window in progress lives in ``state.log_window``, so it survives a resume. A row
        falls only on a step whose logs were read back at once (:meth:`sync_due`)."""
        sums, window = self.state.log_window["sums"], self.state.log_window
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        window["n"] += 1
        every = self.cfg.log_every
        row = {}
        if (every and step % every == 0) or step == self.cfg.steps or force:
            row = {"step": step, **{k: v / window["n"] for k, v in sums.items()},
                   "seconds": self.state.train_seconds}
            self.state.log_window = {"sums": {}, "n": 0}
        if extra:
            row = {"step": step, **row, **extra}
        if row:
            self.state.history.append(row)
            if self.cfg.log_path and self.rank == 0:
                write_log(self.state.history, self.cfg.log_path)
        return row
