"""What the training loop (``tvmlib.training.loop``) trains with and leaves behind: its
settings (:class:`TrainConfig`, checked with errors that name the field) and its state
(:class:`TrainState`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tvmlib.core.ema import EMA
from tvmlib.training.rules import positive_or_none
from tvmlib.utils.checks import choice, fail, flag, integer, number


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
    fused_adamw: bool = False  # AdamW as one fused kernel per step (torch's fused=True)
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
    flag(prefix + "fused_adamw", cfg.fused_adamw)
    return cfg
