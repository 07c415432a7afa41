"""One training loop for every loss: AdamW, gradient clipping, an evaluation EMA, periodic
metrics (CSV + JSON), atomic checkpoints and exact resume, and a clear error on a NaN loss.

A loss is any callable ``loss_fn(net, batch) -> (loss, logs)``. If it also has
``after_step(net)`` (TVM's EMA target) the loop calls it after every optimizer step, and its
``state_dict`` / ``load_state_dict`` go into the checkpoint. A batch source is any object with
``next_batch()`` returning one *global* batch; with ``state_dict`` / ``load_state_dict`` too,
resuming replays the very same batches. Under ``torchrun`` every process draws the same global
batch and trains on its slice.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from tvmlib.ema import EMA
from tvmlib.graphs import GraphedLossBackward, check_graph_support


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
    micro_batches: int = 1  # gradient accumulation: micro-batches per process and step
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16"; "off"
    progress: bool | None = None  # None: on unless $CI or $TVMLIB_QUIET is set
    cuda_graph: bool = False  # replay loss + backward as one CUDA graph (tvmlib.graphs)


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
    if use:  # a CUDA graph must not hold autocast's per-context cache of casted weights
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not cfg.cuda_graph)
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


def _micro_seed(seed: int, step: int, index: int) -> int:
    """A seed for micro-batch ``index`` of ``step``: the loss's noise then depends only on
    (seed, step, index), not on how micro-batches are spread over processes."""
    return (seed * 1_000_003 + step) * 4099 + index


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _chunk(batch, i: int, n: int):
    """Micro-batch i of n from a global batch (x0 or (x0, y))."""
    if torch.is_tensor(batch):
        B = batch.shape[0]
        if B % n:
            raise ValueError(f"global batch {B} is not divisible into {n} micro-batches")
        return batch.chunk(n)[i]
    return type(batch)(None if b is None else _chunk(b, i, n) for b in batch)


def average_gradients(net: nn.Module, world: int) -> None:
    """Average gradients over processes with one all_reduce of a flat buffer.

    This plays DistributedDataParallel's role: DDP's forward cannot take the dual tensors of
    ``torch.func.jvp`` (TVM, MeanFlow), so the loop calls the plain module and syncs here.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


class _StopFlag:
    """Turns SIGTERM into a checkpoint at the next step boundary (cluster pre-emption)."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not in the main thread: leave signals alone
            self.previous = None
        return self

    def _handler(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


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

    Each step takes one global batch from ``source`` and splits it into
    world_size x ``cfg.micro_batches`` micro-batches; under ``torchrun`` (an initialised
    process group) this process handles its share and ``average_gradients`` all-reduces the
    gradients, so N processes give the same update as one process with N times the
    micro-batches. The loss's random draws are seeded per (seed, step, micro-batch).

    ``resume=True`` continues from ``cfg.ckpt_path`` if it exists. ``eval_fn(state)`` runs on
    rank 0 every ``eval_every`` steps and its dict is logged. ``callback(state, logs)`` runs
    after every step (it may raise, e.g. KeyboardInterrupt, to stop; the loop checkpoints
    first, as it does on SIGTERM). A non-finite loss raises FloatingPointError naming the step
    and the last finite loss.
    """
    device = next(net.parameters()).device
    rank, world = _world()
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay)
    state = TrainState(net, EMA(net, cfg.ema_decay), opt)
    if resume and cfg.ckpt_path and Path(cfg.ckpt_path).exists():
        load_checkpoint(cfg.ckpt_path, state, loss_fn, source)
    save = (lambda: save_checkpoint(cfg.ckpt_path, state, loss_fn, source)) \
        if cfg.ckpt_path and rank == 0 else (lambda: None)
    graphed = None
    if cfg.cuda_graph:
        check_graph_support(net, loss_fn, cfg.micro_batches)
        graphed = GraphedLossBackward(net, loss_fn, lambda: _autocast(cfg, device),
                                      cfg.micro_batches)
    last_finite = (None, None)  # (step, loss)
    sums: dict[str, float] = {}
    n_sum, t0 = 0, time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=state.step, disable=rank != 0 or (
        not cfg.progress if cfg.progress is not None else quiet()), mininterval=1.0)
    at_boundary = True  # False while a step is half done (then a checkpoint would be torn)
    n_micro = cfg.micro_batches
    try:
        with _StopFlag() as stop:
            while state.step < cfg.steps:
                at_boundary = False
                net.train()
                batch = source.next_batch()
                if graphed is None:
                    opt.zero_grad(set_to_none=True)
                else:
                    graphed.zero_grad()
                loss_sum = torch.zeros((), device=device)
                for k in range(n_micro):
                    index = rank * n_micro + k
                    seed = _micro_seed(cfg.seed, state.step, index)
                    micro = _to_device(_chunk(batch, index, world * n_micro), device)
                    if graphed is not None:  # the replay adds loss / n_micro's gradients
                        loss, logs = graphed(micro, seed)
                    else:
                        torch.manual_seed(seed)
                        with _autocast(cfg, device):
                            loss, logs = loss_fn(net, micro)
                        (loss / n_micro).backward()
                    loss_sum += loss.detach().float()
                if world > 1:
                    dist.all_reduce(loss_sum)
                    average_gradients(net, world)
                lv = float(loss_sum) / (n_micro * world)
                if not math.isfinite(lv):
                    raise FloatingPointError(
                        f"non-finite loss ({lv}) at step {state.step + 1}; last finite loss: "
                        f"{last_finite[1]} at step {last_finite[0]}. Lower the learning rate, "
                        "enable grad_clip, or check the data for NaNs.")
                last_finite = (state.step + 1, lv)
                grad_norm = nn.utils.clip_grad_norm_(
                    net.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf"))
                opt.step()
                state.ema.update(net)
                if hasattr(loss_fn, "after_step"):
                    loss_fn.after_step(net)
                state.step += 1
                at_boundary = True
                bar.update(1)
                for k, v in {**logs, "loss": lv, "grad_norm": grad_norm}.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_sum += 1
                row = {}
                if cfg.log_every and state.step % cfg.log_every == 0 or state.step == cfg.steps:
                    row = {"step": state.step, **{k: v / n_sum for k, v in sums.items()},
                           "seconds": time.perf_counter() - t0}
                    sums, n_sum = {}, 0
                if rank == 0 and eval_fn is not None and eval_every and (
                        state.step % eval_every == 0 or state.step == cfg.steps):
                    row = {"step": state.step, **row, **eval_fn(state)}
                if row:
                    state.history.append(row)
                    bar.set_postfix(loss=f"{row.get('loss', lv):.4g}")
                    if cfg.log_path and rank == 0:
                        write_log(state.history, cfg.log_path)
                if cfg.ckpt_every and state.step % cfg.ckpt_every == 0:
                    save()
                if callback is not None:
                    callback(state, logs)
                if stop.requested:
                    raise KeyboardInterrupt("SIGTERM")
    except KeyboardInterrupt:
        if cfg.ckpt_path and at_boundary:
            save()
            print(f"interrupted: checkpoint at step {state.step} written to {cfg.ckpt_path}")
        elif cfg.ckpt_path:
            print(f"interrupted mid-step {state.step + 1}: kept the last checkpoint")
        raise
    finally:
        bar.close()
    save()
    return state


if __name__ == "__main__":  # python -m tvmlib.train --config configs/X.yaml
    from tvmlib.runs import main

    main()
