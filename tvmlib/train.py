"""One training loop for every loss: AdamW, gradient clipping, an evaluation EMA, periodic
metrics (CSV + JSON), atomic checkpoints and exact resume, and a clear error on a NaN loss.

A loss is any callable ``loss_fn(net, batch) -> (loss, logs)``. If it also has
``after_step(net)`` (TVM's EMA target) the loop calls it after every optimizer step, and its
``state_dict`` / ``load_state_dict`` go into the checkpoint. A batch source is any object with
``next_batch()``; with ``state_dict`` / ``load_state_dict`` too, resuming replays the very same
batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from tvmlib.ema import EMA


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings (defaults suit the 2D toys on a CPU)."""

    steps: int = 2000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    log_every: int = 100
    ckpt_every: int = 0  # 0: checkpoint only at the end and on interruption
    ckpt_path: str | None = None
    log_path: str | None = None  # writes <log_path>.csv and <log_path>.json
    seed: int = 0
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16"; "off"
    progress: bool | None = None  # None: on unless $CI or $TVMLIB_QUIET is set


@dataclass
class TrainState:
    """What a run leaves behind: the network, its EMA, the optimizer, and the metric history."""

    net: nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    step: int = 0
    history: list[dict] = field(default_factory=list)


def quiet() -> bool:
    """True in CI logs (``$CI``) or when ``$TVMLIB_QUIET`` is set: no progress bars."""
    return any(os.environ.get(k, "") not in ("", "0", "false") for k in ("CI", "TVMLIB_QUIET"))


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _autocast(cfg: TrainConfig, device: torch.device):
    use = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    if cfg.amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {cfg.amp!r}")
    if use:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    return type(batch)(None if b is None else b.to(device, non_blocking=True) for b in batch)


def save_checkpoint(path, state: TrainState, loss_fn, source) -> None:
    """Everything needed to continue bit-for-bit: weights, EMAs, optimizer, RNG, data cursor."""
    atomic_save({
        "step": state.step,
        "net": state.net.state_dict(),
        "ema": state.ema.state_dict(),
        "opt": state.opt.state_dict(),
        "loss": loss_fn.state_dict() if hasattr(loss_fn, "state_dict") else None,
        "source": source.state_dict() if hasattr(source, "state_dict") else None,
        "rng": _rng_state(),
        "history": state.history,
    }, path)


def load_checkpoint(path, state: TrainState, loss_fn, source) -> None:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state.net.load_state_dict(ckpt["net"])
    state.ema.load_state_dict(ckpt["ema"])
    state.opt.load_state_dict(ckpt["opt"])
    if ckpt["loss"] is not None and hasattr(loss_fn, "load_state_dict"):
        loss_fn.load_state_dict(ckpt["loss"])
    if ckpt["source"] is not None and hasattr(source, "load_state_dict"):
        source.load_state_dict(ckpt["source"])
    _set_rng_state(ckpt["rng"])
    state.step, state.history = ckpt["step"], ckpt["history"]


def write_log(history: list[dict], log_path: str) -> None:
    """Write the metric history as ``<log_path>.json`` and ``<log_path>.csv`` (atomically)."""
    atomic_write_text(json.dumps(history, indent=1), f"{log_path}.json")
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys) for row in history]
    atomic_write_text("\n".join(lines) + "\n", f"{log_path}.csv")


def train(
    net: nn.Module,
    loss_fn: Callable,
    source,
    cfg: TrainConfig,
    resume: bool = False,
    eval_fn: Callable[[TrainState], dict] | None = None,
    eval_every: int = 0,
    callback: Callable[[TrainState, dict], None] | None = None,
) -> TrainState:
    """Train ``net`` for ``cfg.steps`` optimizer steps and return the final ``TrainState``.

    ``resume=True`` continues from ``cfg.ckpt_path`` if it exists. ``eval_fn(state)`` runs
    every ``eval_every`` steps and its dict is logged. ``callback(state, logs)`` runs after every
    step (it may raise, e.g. KeyboardInterrupt, to stop; the loop checkpoints first).
    A non-finite loss raises FloatingPointError naming the step and the last finite loss.
    """
    device = next(net.parameters()).device
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay)
    state = TrainState(net, EMA(net, cfg.ema_decay), opt)
    if resume and cfg.ckpt_path and Path(cfg.ckpt_path).exists():
        load_checkpoint(cfg.ckpt_path, state, loss_fn, source)
    last_finite = (None, None)  # (step, loss)
    sums: dict[str, float] = {}
    n_sum, t0 = 0, time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=state.step, disable=(
        not cfg.progress if cfg.progress is not None else quiet()), mininterval=1.0)
    at_boundary = True  # False while a step is half done (then a checkpoint would be torn)
    try:
        while state.step < cfg.steps:
            at_boundary = False
            net.train()
            batch = _to_device(source.next_batch(), device)
            with _autocast(cfg, device):
                loss, logs = loss_fn(net, batch)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(
                    f"non-finite loss ({lv}) at step {state.step + 1}; last finite loss: "
                    f"{last_finite[1]} at step {last_finite[0]}. Lower the learning rate, "
                    "enable grad_clip, or check the data for NaNs.")
            last_finite = (state.step + 1, lv)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(
                net.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf"))
            opt.step()
            state.ema.update(net)
            if hasattr(loss_fn, "after_step"):
                loss_fn.after_step(net)
            state.step += 1
            at_boundary = True
            bar.update(1)
            for k, v in {**logs, "grad_norm": grad_norm}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_sum += 1
            row = {}
            if cfg.log_every and state.step % cfg.log_every == 0 or state.step == cfg.steps:
                row = {"step": state.step, **{k: v / n_sum for k, v in sums.items()},
                       "seconds": time.perf_counter() - t0}
                sums, n_sum = {}, 0
            if eval_fn is not None and eval_every and (
                    state.step % eval_every == 0 or state.step == cfg.steps):
                row = {"step": state.step, **row, **eval_fn(state)}
            if row:
                state.history.append(row)
                bar.set_postfix(loss=f"{row.get('loss', lv):.4g}")
                if cfg.log_path:
                    write_log(state.history, cfg.log_path)
            if cfg.ckpt_path and cfg.ckpt_every and state.step % cfg.ckpt_every == 0:
                save_checkpoint(cfg.ckpt_path, state, loss_fn, source)
            if callback is not None:
                callback(state, logs)
    except KeyboardInterrupt:
        if cfg.ckpt_path and at_boundary:
            save_checkpoint(cfg.ckpt_path, state, loss_fn, source)
            print(f"interrupted: checkpoint at step {state.step} written to {cfg.ckpt_path}")
        elif cfg.ckpt_path:
            print(f"interrupted mid-step {state.step + 1}: kept the last checkpoint")
        raise
    finally:
        bar.close()
    if cfg.ckpt_path:
        save_checkpoint(cfg.ckpt_path, state, loss_fn, source)
    return state

