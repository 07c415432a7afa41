"""The allowed values of every run-config key (``tvmlib.training.config``), checked before any
work starts. Each failure is one line naming the key: ``train.steps must be >= 1, got -3``.

The types (int, float, bool, str, lists of them) are checked by :func:`check_type` as the YAML is
read; the ranges and choices below once the config is merged.
"""

from __future__ import annotations

import math
import re
import types
import typing
from operator import attrgetter

from tvmlib.utils.checks import choice, fail, integer, number, plain_name

CHOICES = {  # string values from a fixed list
    "data.latent_norm": ("auto", "paper", "shards", "none"),
    "model.attn_backend": ("math", "sdpa", "triton"),
    "model.jvp": ("fused", "compiled", "func"),
    "loss.name": ("fm", "tvm", "meanflow", "cmt"),
    "loss.time_sampler": ("uniform", "logit_normal"),
    "loss.solver": ("euler", "heun", "dpm++2m"),
    "loss.grid": ("uniform", "logsnr"),
    "loss.space": ("velocity", "sample"),
    "loss.labels": ("batch", "random"),
    "train.amp": ("auto", "bf16", "off"),
    "eval.solver": ("auto", "euler", "heun", "dpm++2m", "flowmap"),
    "eval.grid": ("uniform", "logsnr"),
    "eval.metric": ("classifier_fd", "inception_fid", "features_fd", "w2", "none"),
    "eval.attn_backend": ("math", "sdpa", "triton"),
    "eval.precision": ("fp32", "fp64", "bf16"),
}
AT_LEAST = {  # integers: the smallest allowed value (a null, where the schema allows it, passes)
    "model.input_size": 1, "model.in_channels": 1, "model.num_classes": 0, "model.depth": 1,
    "model.hidden_size": 1, "model.num_heads": 1, "model.patch_size": 1, "model.freq_dim": 1,
    "loss.solver_steps": 1, "loss.points": 1, "loss.pool_batch": 1, "loss.pool_size": 1,
    "train.steps": 1, "train.global_batch": 1, "train.per_gpu_batch": 1, "train.warmup": 0,
    "train.log_every": 1, "train.seed": 0, "train.sync_every": 1,
    "eval.num_samples": 1, "eval.final_samples": 1, "eval.batch_size": 1, "eval.seed": 0,
    "eval.every": 0, "eval.probe_every": 0, "eval.probe_batch": 1, "eval.lipschitz_batch": 1,
    "eval.power_iters": 1, "eval.spike_window": 1, "eval.spike_warmup": 0,
}
POSITIVE, UNIT, PROBABILITY = {"positive": True}, {"low": 0, "high": 1, "below_high": True}, \
    {"low": 0, "high": 1}
NUMBERS = {  # finite numbers: keyword arguments of tvmlib.utils.checks.number
    "model.time_scale": POSITIVE, "loss.label_dropout": PROBABILITY, "loss.cfg_scale": POSITIVE,
    "loss.time_mean": {}, "loss.time_std": POSITIVE, "loss.target_decay": UNIT,
    "loss.frac_equal": PROBABILITY, "train.lr": POSITIVE, "train.weight_decay": {"low": 0},
    "train.ema_decay": UNIT, "train.time_budget_s": {"low": 0},
    "train.total_budget_s": {"low": 0}, "train.dist_timeout_s": POSITIVE,
    "eval.cfg_scale": POSITIVE, "eval.spike_k": POSITIVE,
}
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
FEATURES = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*|.+\.py:[A-Za-z_]\w*")


def check_type(key: str, value, tp) -> None:
    """``value`` (from YAML) has the schema's type ``tp`` (bool, int, float, str, a list of one
    of them, each maybe Optional); OmegaConf would read 3 or "maybe" as a flag, or fail without
    naming the key."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        tp = next(a for a in args if a is not type(None))
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            fail(key, "must be a list", value)
        for i, item in enumerate(value):
            check_type(f"{key}[{i}]", item, typing.get_args(tp)[0])
    elif tp is bool and not isinstance(value, bool):
        fail(key, "must be true or false", value)
    elif tp is int:
        integer(key, value)
    elif tp is float:
        number(key, value)
    elif tp is str and not isinstance(value, str):
        fail(key, "must be a string", value)


def positive_or_none(key: str, value, none: str) -> None:
    """``value`` is None or a finite number > 0; ``none`` says what None means."""
    if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
        fail(key, f"must be > 0 or {none}", value)


def check_values(cfg):
    """Raise ConfigError naming the key for values the types allow but a run does not: every key
    of :data:`CHOICES`, :data:`AT_LEAST` and :data:`NUMBERS`, the lists, and names that become
    paths (they stay in their folder) or that the build must know (data set, preset, device)."""
    from tvmlib.data.toy2d import TOY2D
    from tvmlib.nn.dit import DIT_PRESETS

    for key, allowed in CHOICES.items():
        choice(key, attrgetter(key)(cfg), allowed)
    for key, low in AT_LEAST.items():
        if (value := attrgetter(key)(cfg)) is not None:
            integer(key, value, low)
    for key, kw in NUMBERS.items():
        if (value := attrgetter(key)(cfg)) is not None:
            number(key, value, **kw)
    t, e, lc = cfg.train, cfg.eval, cfg.loss
    positive_or_none("train.grad_clip", t.grad_clip, "null (no clipping)")
    positive_or_none("train.flop_budget", t.flop_budget, "null (train.steps decides)")
    if t.ckpt_every < 0:
        fail("train.ckpt_every", "must be >= 1 (or 0: only at the end and on interruption)",
             t.ckpt_every)
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        fail("train.betas", "must be two numbers in [0, 1)", t.betas)
    if lc.cfg_range is not None and not (len(lc.cfg_range) == 2 and
                                         0 < lc.cfg_range[0] <= lc.cfg_range[1]):
        fail("loss.cfg_range", "must be null or [w_min, w_max] with 0 < w_min <= w_max",
             lc.cfg_range)
    if e.metric == "w2" and not cfg.data.dataset.startswith("toy:"):
        fail("eval.metric", "w2 scores the 2D toys (data.dataset toy:<name>)", e.metric)
    if not e.steps or min(e.steps) < 1:
        fail("eval.steps", "must be a non-empty list of step counts >= 1", e.steps)
    if any(not w > 0 for w in e.cfg_scales):
        fail("eval.cfg_scales", "must be guidance scales > 0", e.cfg_scales)
    if any(s not in CHOICES["eval.solver"][1:] for s in e.solvers):
        fail("eval.solvers", f"must be solvers of {', '.join(CHOICES['eval.solver'][1:])}",
             e.solvers)
    if not e.weights or any(w not in ("ema", "net", "target") for w in e.weights):
        fail("eval.weights", "must be a non-empty list of ema, net, target", e.weights)
    plain_name("name", cfg.name)
    choice("data.dataset", cfg.data.dataset,
           ["mnist", "fashion-mnist", "latents", *(f"toy:{n}" for n in TOY2D)])
    choice("model.preset", cfg.model.preset, ["MLP2D", "DiT", *DIT_PRESETS])
    if not DEVICE.fullmatch(cfg.device):
        fail("device", "must be auto, cpu, mps, cuda or cuda:N", cfg.device)
    if e.features is not None and not FEATURES.fullmatch(e.features):
        fail("eval.features", "must be module:function or file.py:function", e.features)
    return cfg


def check_experiment(exp):
    plain_name("name", exp.name)
    if exp.out is not None:
        plain_name("out", exp.out)
    if exp.num_threads is not None:
        integer("num_threads", exp.num_threads, 1)
    return exp
