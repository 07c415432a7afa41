"""One training loop for every loss: AdamW with linear warm-up, gradient clipping, an evaluation
EMA, periodic metrics (CSV + JSON), atomic checkpoints with exact resume, a time budget, and
clear errors on a non-finite loss or gradient.

A loss is any callable ``loss_fn(net, batch) -> (loss, logs)``. If it also has
``after_step(net)`` (TVM's EMA target) the loop calls it after every optimizer step, and its
``state_dict`` / ``load_state_dict`` go into the checkpoint. A batch source is any object with
``next_batch()`` returning one *global* batch; with ``state_dict`` / ``load_state_dict`` too,
resuming replays the very same batches. Under ``torchrun`` every process draws the same global
batch and trains on its slice (``tvmlib.training.distributed``). One step (micro-batches,
clipping, the read-back of its logs, AdamW, EMAs) is ``tvmlib.training.step``; the settings and
the state are ``tvmlib.training.state``.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from tvmlib.training.checkpoint import load_checkpoint, run_lock, save_checkpoint
from tvmlib.training.distributed import world
from tvmlib.training.state import RESUME_SETTINGS, TrainConfig, TrainState, check_train_config
from tvmlib.training.step import Pending, Step, new_state, phase
from tvmlib.utils.atomic import atomic_write_json, atomic_write_text
from tvmlib.utils.cuda import GpuClock


def quiet() -> bool:
    """True in CI logs (``$CI``) or when ``$TVMLIB_QUIET`` is set: no progress bars."""
    return any(os.environ.get(k, "") not in ("", "0", "false") for k in ("CI", "TVMLIB_QUIET"))


def write_log(history: list[dict], log_path: str) -> None:
    """Write the metric history as ``<log_path>.json`` and ``<log_path>.csv`` (atomically)."""
    atomic_write_json(history, f"{log_path}.json")
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys) for row in history]
    atomic_write_text("\n".join(lines) + "\n", f"{log_path}.csv")


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
    read-backs and where its unsynchronised reading reaches the time budget (so, with a time
    budget, N > 1 needs one process: ValueError otherwise).
    """
    check_train_config(cfg)
    torch.manual_seed(cfg.seed)
    state = new_state(net, cfg)
    settings = {k: getattr(cfg, k) for k in RESUME_SETTINGS}
    locked = cfg.ckpt_path and world()[0] == 0
    with run_lock(cfg.ckpt_path) if locked else contextlib.nullcontext():
        if resume and cfg.ckpt_path and Path(cfg.ckpt_path).exists():
            load_checkpoint(cfg.ckpt_path, state, loss_fn, source, settings)
        return _Loop(state, loss_fn, source, cfg, eval_fn, eval_every, callback, settings).run()


class _Loop:
    """The loop of :func:`train`: steps, logs, evaluations, checkpoints, interruptions."""

    def __init__(self, state, loss_fn, source, cfg, eval_fn, eval_every, callback, settings):
        if cfg.sync_every > 1 and cfg.time_budget_s is not None and world()[1] > 1:
            raise ValueError(
                "TrainConfig.sync_every > 1 with a time_budget_s needs one process: each process "
                "would read its own unsynchronised clock and could stop at another step than the "
                "others. Use sync_every: 1, or train.steps / train.flop_budget")
        self.state, self.source, self.cfg = state, source, cfg
        self.eval_fn, self.eval_every, self.callback = eval_fn, eval_every, callback
        self.step, self.rank = Step(state, loss_fn, cfg), world()[0]
        self.clock = GpuClock(self.step.device)
        self.save = (lambda: save_checkpoint(cfg.ckpt_path, state, loss_fn, source, settings)) \
            if cfg.ckpt_path and self.rank == 0 else (lambda: None)
        self.bar = tqdm(total=cfg.steps, initial=state.step, mininterval=1.0,
                        disable=self.rank != 0 or (not cfg.progress if cfg.progress is not None
                                                   else quiet()))
        self.pending: list[tuple[int, dict | Pending]] = []  # (step, logs) not yet logged
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
                            self.callback(state, logs.named(logs.values)
                                          if isinstance(logs, Pending) else logs)
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

    def after_step(self, logs: dict | Pending) -> None:
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
