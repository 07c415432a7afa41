"""Lipschitz ablation: TVM training of a class-conditional DiT on Fashion-MNIST 32x32 with each of
TVM's Lipschitz changes ([P] section 4: RMSNorm, QK-norm, modulation norm, spectral init) off,
alone, or all on, under one or more optimiser settings (e.g. a stress setting with a high
learning rate and AdamW beta2 = 0.999, where [P] Fig. 5 reports a noisy d/ds loss).

    python -m tvmlib.experiments.lipschitz --config configs/lipschitz_ablation.yaml \\
        [--out figures/03_lipschitz_ablation.json] [--set steps=500]

Per run (one optimiser setting x one variant), with ``tvmlib.training.loop.train`` (bf16 autocast on
CUDA, math attention so that the JVP works):

* curves every ``log_every`` steps: loss, terminal and FM terms, gradient norm (before clipping);
* probes every ``probe_every`` steps on a fixed batch of test images, in fp32: the RMS of d/ds f
  (Eq. 17), the raw adaLN modulation RMS of the final layer and of the last block (before
  ``mod_norm``; [P] Fig. 4), the RMS of the conditioning vector, the per-block Jacobian spectral
  norms and that of x -> u_theta(x, t) (power iteration, ``tvmlib.evaluation.lipschitz``);
* the first spike of the loss and of the gradient norm (``tvmlib.evaluation.lipschitz.first_spike``) and,
  if the loss became non-finite, the step;
* at the end: the classifier Frechet distance (``tvmlib.metrics.classifier_fd``, the project's
  Fashion-MNIST CNN features, not Inception FID) of 1- and 2-step samples of the evaluation EMA
  and of the raw weights, against the real test split.

Runs go round-robin over the settings (setting 1 variant 1, setting 2 variant 1, setting 1
variant 2, ...), so the first runs already compare "off" and "on" in every setting. The JSON is
rewritten atomically after each run, and a run that would end after ``time_budget_s`` is
skipped (a run still going at the budget is stopped and evaluated), so a timeout still leaves
results. Output: {"provenance": {...}, "results": {"config", "settings", "reference_fd",
"runs": {setting: {variant: {...}}}, "skipped": [...], "wall_s"}}.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor

from tvmlib.data.images import TensorSource, load_mnist
from tvmlib.core.path import interpolate, sample_gap_times
from tvmlib.evaluation.lipschitz import (
    block_lipschitz,
    dfds_rms,
    first_spike,
    modulation_rms,
    rms,
    velocity_lipschitz,
)
from tvmlib.core.losses import TVMLoss
from tvmlib.metrics import classifier_fd
from tvmlib.nn.dit import DiT, LipschitzConfig, dit_from_preset
from tvmlib.utils.paths import figures_dir
from tvmlib.utils.provenance import provenance
from tvmlib.core.solvers import sample_flowmap
from tvmlib.training.loop import TrainConfig, TrainState, atomic_write_text, train

DEFAULT_OUT = "03_lipschitz_ablation.json"
SWITCHES = ("rmsnorm", "qk_norm", "mod_norm", "spectral_init")
# "off": the standard DiT; one name per change alone; "on": all of TVM's changes.
VARIANTS: dict[str, LipschitzConfig] = {
    "off": LipschitzConfig.off(),
    **{name: dataclasses.replace(LipschitzConfig.off(), **{name: True}) for name in SWITCHES},
    "on": LipschitzConfig(),
}
CURVE_KEYS = ("loss", "terminal", "fm", "grad_norm")


# ---- configuration ------------------------------------------------------------------------------

@dataclass
class Setting:
    """One optimiser setting; every listed variant is trained with it."""

    name: str
    lr: float
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    steps: int | None = None  # None: the top-level ``steps``


@dataclass
class AblationConfig:
    """Everything the ablation does; loaded from YAML (unknown keys are errors)."""

    name: str = "lipschitz_ablation"
    dataset: str = "fashion-mnist"
    model: dict = field(default_factory=lambda: {"preset": "DiT-S/2"})  # preset + DiT kwargs
    attn_backend: str = "math"  # training (needs JVP): math or triton
    sample_attn_backend: str = "sdpa"  # sampling and FD (no JVP)
    cfg_scale: float = 2.0  # TVM's constant training w (folded CFG)
    target_decay: float = 0.99
    label_dropout: float = 0.1
    batch_size: int = 128
    steps: int = 1500
    settings: list[Setting] = field(default_factory=lambda: [Setting("base", 1e-4)])
    weight_decay: float = 0.0
    grad_clip: float | None = None  # None: no clipping (the gradient norm is logged anyway)
    ema_decay: float = 0.995  # evaluation EMA
    amp: str = "auto"  # bf16 autocast on CUDA
    cuda_graph: bool = False  # replay TVM's loss + backward as a CUDA graph (tvmlib.training.graphs)
    log_every: int = 2
    probe_every: int = 100
    probe_batch: int = 32  # fixed test images for d/ds f and modulation norms
    lipschitz_batch: int = 8  # the first images of the probe batch, for power iteration
    power_iters: int = 8
    spike_k: float = 4.0
    spike_window: int = 50
    spike_warmup: int = 25
    fd_samples: int = 2000
    fd_steps: list[int] = field(default_factory=lambda: [1, 2])  # []: no FD (nor its floor)
    fd_batch: int = 500
    seed: int = 0
    device: str = "auto"  # auto: cuda if available
    num_threads: int | None = None  # torch.set_num_threads on CPU
    time_budget_s: float | None = None  # skip / stop runs beyond this many seconds

    def runs(self) -> list[tuple[Setting, str]]:
        """(setting, variant) pairs, round-robin over the settings."""
        longest = max(len(s.variants) for s in self.settings)
        return [(s, s.variants[i]) for i in range(longest) for s in self.settings
                if i < len(s.variants)]


def _coerce(value, tp, key: str):
    """value checked against a (simple) type hint; YAML's "1e-3" strings become floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if tp is Setting:
        return _build(Setting, value, f"{key}.")
    if tp is str and isinstance(value, bool):
        raise ValueError(f"{key}: expected a string, got the boolean {value!r}; YAML reads "
                         'unquoted off/on/yes/no as booleans: quote them ("off", "on")')
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, values: dict, prefix: str = ""):
    if not isinstance(values, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown key; valid keys: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in values.items()})


def config_from_dict(values: dict) -> AblationConfig:
    """Validate a dict (e.g. parsed YAML) into an :class:`AblationConfig`."""
    cfg = _build(AblationConfig, values or {})
    if not cfg.settings:
        raise ValueError("settings: need at least one optimiser setting")
    names = [s.name for s in cfg.settings]
    if len(set(names)) != len(names):
        raise ValueError(f"settings: names must be unique, got {names}")
    for s in cfg.settings:
        bad = [v for v in s.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"settings.{s.name}.variants: unknown {bad}; valid: {list(VARIANTS)}")
        if len(s.betas) != 2:
            raise ValueError(f"settings.{s.name}.betas: need two numbers, got {s.betas}")
    if cfg.lipschitz_batch > cfg.probe_batch:
        raise ValueError(f"lipschitz_batch ({cfg.lipschitz_batch}) must be <= probe_batch "
                         f"({cfg.probe_batch})")
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> AblationConfig:
    """Read a YAML config; ``overrides`` are top-level "key=value" strings (value as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}; see configs/lipschitz_ablation*.yaml")
    values = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        values[key.strip()] = yaml.safe_load(raw)
    return config_from_dict(values)


# ---- building blocks ----------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(cfg: AblationConfig, variant: str, num_classes: int) -> DiT:
    """The DiT of ``cfg.model`` ({"preset": name or None, **DiT kwargs}) with the variant's
    LipschitzConfig, guidance-conditioned, built on the CPU with seed ``cfg.seed``."""
    kwargs = {k: v for k, v in cfg.model.items() if k != "preset"}
    kwargs.update(input_size=32, in_channels=1, num_classes=num_classes, guidance=True,
                  lipschitz=VARIANTS[variant], attn_backend=cfg.attn_backend)
    torch.manual_seed(cfg.seed)
    preset = cfg.model.get("preset")
    return dit_from_preset(preset, **kwargs) if preset else DiT(**kwargs)


def build_loss(cfg: AblationConfig, net: DiT, num_classes: int) -> TVMLoss:
    """TVM's loss as the ablation trains ``net``: constant w = ``cfg.cfg_scale`` (folded CFG),
    the scaled parameterization, label dropout and the EMA target."""
    return TVMLoss(net, target_decay=cfg.target_decay, num_classes=num_classes,
                   label_dropout=cfg.label_dropout, cfg_scale=cfg.cfg_scale, scale_param=True)


@dataclass
class Probe:
    """A fixed batch for measurements: test images, noise, (t, s), labels and w."""

    x0: Tensor
    xt: Tensor
    t: Tensor
    s: Tensor
    y: Tensor
    w: Tensor


def make_probe(x_test: Tensor, y_test: Tensor, n: int, w: float, seed: int,
               device: torch.device) -> Probe:
    g = torch.Generator().manual_seed(seed + 777)
    idx = torch.randperm(len(x_test), generator=g)[:n]
    x0, y = x_test[idx], y_test[idx]
    eps = torch.randn(x0.shape, generator=g)
    t, s = sample_gap_times(n, generator=g)
    t, s = t.float(), s.float()
    xt = interpolate(x0, eps, t)
    return Probe(*(v.to(device) for v in (x0, xt, t, s, y, torch.full((n,), w))))


def measure(net: DiT, probe: Probe, cfg: AblationConfig) -> dict:
    """Probe measurements in fp32 (see the module docstring)."""
    p, m = probe, cfg.lipschitz_batch
    g = torch.Generator(device=p.xt.device).manual_seed(cfg.seed + 99)
    mods = modulation_rms(net, p.xt, p.t, p.s, p.y, p.w, normalized=False)
    last_block = f"block{len(net.blocks) - 1}"
    lip_u = velocity_lipschitz(net, p.xt[:m], p.t[:m], p.y[:m], p.w[:m], scale_param=True,
                               iters=cfg.power_iters, generator=g)
    lip_blocks = block_lipschitz(net, p.xt[:m], p.t[:m], p.s[:m], p.y[:m], p.w[:m],
                                 iters=cfg.power_iters, generator=g)  # (depth, m)
    return {
        "dfds_rms": float(dfds_rms(net, p.xt, p.t, p.s, p.y, p.w, scale_param=True).mean()),
        "mod_raw_rms_final": float(mods["final"].mean()),
        "mod_raw_rms_last_block": float(mods[last_block].mean()),
        "cond_rms": float(rms(net.conditioning(p.xt, p.t, p.s, p.y, p.w).detach()).mean()),
        "lip_velocity": float(lip_u.mean()),
        "lip_velocity_max": float(lip_u.max()),
        "lip_blocks": [float(v) for v in lip_blocks.mean(1)],
    }


@torch.no_grad()
def fd_at_steps(net: DiT, cfg: AblationConfig, num_classes: int, device: torch.device) -> dict:
    """{str(k): classifier FD} of k-step flow-map samples (fixed noise, balanced labels); None
    (with a reason under "error") if the samples are not finite."""
    old = net.attn_backend
    net.attn_backend = cfg.sample_attn_backend
    out: dict = {}
    try:
        for k in cfg.fd_steps:
            g = torch.Generator().manual_seed(cfg.seed + 4242)
            images = []
            for i in range(0, cfg.fd_samples, cfg.fd_batch):
                n = min(cfg.fd_batch, cfg.fd_samples - i)
                noise = torch.randn(n, 1, 32, 32, generator=g).to(device)
                y = (torch.arange(i, i + n) % num_classes).to(device)
                images.append(sample_flowmap(net, noise, k, y=y, w=cfg.cfg_scale,
                                             scale_param=True).x.float())
            x = torch.cat(images)
            if not bool(torch.isfinite(x).all()):
                out[str(k)], out["error"] = None, f"non-finite {k}-step samples"
                continue
            out[str(k)] = classifier_fd(x, None, cfg.dataset)
    finally:
        net.attn_backend = old
    return out


def _round(v: float) -> float | None:
    v = float(v)
    return float(f"{v:.5g}") if math.isfinite(v) else None


def _round_any(v):
    """_round for numbers and lists of numbers; ints (steps) unchanged."""
    if isinstance(v, int):
        return v
    return [_round(a) for a in v] if isinstance(v, list) else _round(v)


class _OutOfTime(Exception):
    """Raised from the training callback when the time budget is spent."""


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---- one run -----------------------------------------------------------------------------------

def run_variant(cfg: AblationConfig, setting: Setting, variant: str, source_xy: tuple,
                probe: Probe, device: torch.device, deadline: float | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Train one (setting, variant) and return its record (config, curves, probes, spikes, FD)."""
    x, y = source_xy
    num_classes = int(y.max()) + 1
    steps = setting.steps or cfg.steps
    net = build_model(cfg, variant, num_classes).to(device)
    loss_fn = build_loss(cfg, net, num_classes)
    source = TensorSource(x, y, cfg.batch_size, seed=cfg.seed)
    tcfg = TrainConfig(steps=steps, lr=setting.lr, betas=tuple(setting.betas),
                       weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                       ema_decay=cfg.ema_decay, log_every=cfg.log_every, seed=cfg.seed,
                       amp=cfg.amp, progress=False, cuda_graph=cfg.cuda_graph)
    probes = [{"step": 0, **measure(net, probe, cfg)}]
    holder: dict = {}
    tag = f"[{setting.name}/{variant}]"
    t0 = _sync(device)

    def callback(state: TrainState, logs: dict) -> None:
        holder["state"] = state
        if state.step % cfg.probe_every == 0 or state.step == steps:
            probes.append({"step": state.step, **measure(state.net, probe, cfg)})
            row = state.history[-1] if state.history else {}
            log(f"{tag} step {state.step}/{steps}: loss {row.get('loss', float('nan')):.4g} "
                f"grad_norm {row.get('grad_norm', float('nan')):.3g} "
                f"dfds_rms {probes[-1]['dfds_rms']:.3g} "
                f"mod_raw_final {probes[-1]['mod_raw_rms_final']:.3g} "
                f"lip_u {probes[-1]['lip_velocity']:.3g} "
                f"({state.step / (time.perf_counter() - t0):.1f} steps/s)")
        if deadline is not None and time.perf_counter() > deadline:
            raise _OutOfTime

    stopped, diverged = None, None
    try:
        train(net, loss_fn, source, tcfg, callback=callback)
    except FloatingPointError as err:
        diverged = holder["state"].step + 1 if "state" in holder else 1
        log(f"{tag} diverged: {err}")
    except _OutOfTime:
        stopped = holder["state"].step
        log(f"{tag} stopped at step {stopped}: time budget spent")
    train_s = _sync(device) - t0
    state = holder.get("state")
    history = [r for r in (state.history if state else []) if "loss" in r]
    curves = {"step": [int(r["step"]) for r in history],
              **{k: [_round(r[k]) for r in history] for k in CURVE_KEYS}}
    spike_kw = dict(k=cfg.spike_k, window=cfg.spike_window, warmup=cfg.spike_warmup)
    spikes = {}
    for key in ("loss", "grad_norm"):
        i = first_spike([math.nan if v is None else v for v in curves[key]], **spike_kw)
        spikes[key] = None if i is None else curves["step"][i]
    found = [v for v in spikes.values() if v is not None]
    spikes["first"] = min(found) if found else None
    steps_done = state.step if state else 0
    fd, fd_raw = {}, {}
    if state is not None:
        fd = fd_at_steps(state.ema.module, cfg, num_classes, device)
        fd_raw = fd_at_steps(state.net, cfg, num_classes, device)
    wall = _sync(device) - t0
    log(f"{tag} {steps_done} steps in {train_s:.1f} s ({steps_done / max(train_s, 1e-9):.1f} "
        f"steps/s), spikes {spikes}, FD (EMA) {fd}, FD (raw) {fd_raw}, {wall:.1f} s in all")
    return {
        "setting": setting.name, "variant": variant,
        "lipschitz": dataclasses.asdict(VARIANTS[variant]),
        "lr": setting.lr, "betas": list(setting.betas), "steps": steps,
        "steps_done": steps_done, "stopped_step": stopped, "diverged_step": diverged,
        "spike_step": spikes, "fd": fd, "fd_raw": fd_raw,
        "train_s": train_s, "wall_s": wall, "steps_per_s": steps_done / max(train_s, 1e-9),
        "curves": curves,
        "probes": {k: [_round_any(p[k]) for p in probes] for k in probes[0]},
    }


# ---- the whole ablation --------------------------------------------------------------------------

def run_ablation(cfg: AblationConfig, out: str | Path | None = None, command: str | None = None,
                 log: Callable[[str], None] = print, t_start: float | None = None) -> dict:
    """Run every (setting, variant) of ``cfg``; write {"provenance", "results"} to ``out`` after
    each run (None: do not write). Returns that dict. ``t_start`` anchors the time budget."""
    t_start = time.perf_counter() if t_start is None else t_start
    deadline = None if cfg.time_budget_s is None else t_start + cfg.time_budget_s
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    x, y = load_mnist(cfg.dataset, "train")
    x_test, y_test = load_mnist(cfg.dataset, "test")
    probe = make_probe(x_test, y_test, cfg.probe_batch, cfg.cfg_scale, cfg.seed, device)
    source_xy = (x.to(device), y.to(device))
    n_params = sum(p.numel() for p in build_model(cfg, "on", 10).parameters())
    reference = None  # FD of real training images to the test split: the floor at this n
    if cfg.fd_steps:
        g = torch.Generator().manual_seed(cfg.seed + 5)
        real = x[torch.randperm(len(x), generator=g)[:cfg.fd_samples]].to(device)
        reference = {"train_vs_test": classifier_fd(real, None, cfg.dataset), "n": len(real)}
    prov = provenance(command=command, seed=cfg.seed, config=dataclasses.asdict(cfg))
    results: dict = {
        "config": dataclasses.asdict(cfg), "params": n_params,
        "settings": {s.name: {"lr": s.lr, "betas": list(s.betas), "steps": s.steps or cfg.steps,
                              "variants": list(s.variants)} for s in cfg.settings},
        "reference_fd": reference, "runs": {s.name: {} for s in cfg.settings}, "skipped": [],
    }
    doc = {"provenance": prov, "results": results}
    runs = cfg.runs()
    floor = "" if reference is None else (f"; real-data FD floor at n={reference['n']}: "
                                          f"{reference['train_vs_test']:.3f}")
    log(f"{cfg.name}: {len(runs)} runs of a {n_params / 1e6:.2f} M-parameter DiT on {device} "
        f"({prov['device']}){floor}; {time.perf_counter() - t_start:.1f} s so far")
    rate = None  # seconds per training step: the slowest of the runs so far (conservative)
    overhead = 0.0  # seconds per run outside training (probes at the end, FD), max so far
    for setting, variant in runs:
        steps = setting.steps or cfg.steps
        now = time.perf_counter()
        if deadline is not None and rate is not None and now + steps * rate + overhead > deadline:
            log(f"[{setting.name}/{variant}] skipped: about {steps * rate + overhead:.0f} s "
                f"needed, {deadline - now:.0f} s left in the time budget")
            results["skipped"].append({"setting": setting.name, "variant": variant,
                                       "reason": "time budget"})
            continue
        rec = run_variant(cfg, setting, variant, source_xy, probe, device, deadline, log)
        results["runs"][setting.name][variant] = rec
        if rec["steps_done"]:
            rate = max(rate or 0.0, rec["train_s"] / rec["steps_done"])
        overhead = max(overhead, rec["wall_s"] - rec["train_s"])
        results["wall_s"] = time.perf_counter() - t_start
        if out is not None:
            atomic_write_text(json.dumps(doc, indent=None, separators=(",", ":")), out)
        log(f"{time.perf_counter() - t_start:.0f} s elapsed" + (f", wrote {out}" if out else ""))
    results["wall_s"] = time.perf_counter() - t_start
    if out is not None:
        atomic_write_text(json.dumps(doc, indent=None, separators=(",", ":")), out)
    return doc


def merge_results(docs: list[dict]) -> dict:
    """One ablation document from several runs of the same experiment, e.g. a run the time
    budget skipped, made afterwards with ``--set settings=[...]``. Later documents add (or
    replace) (setting, variant) runs; settings must agree where they overlap; the provenance
    keeps every part under ``parts``."""
    if not docs:
        raise ValueError("merge_results needs at least one document")
    out = copy.deepcopy(docs[0])
    res = out["results"]
    same = ("dataset", "model", "batch_size", "cfg_scale", "target_decay", "seed", "amp")
    for doc in docs[1:]:
        r = doc["results"]
        diff = [k for k in same if r["config"].get(k) != res["config"].get(k)]
        if diff:
            raise ValueError(f"cannot merge ablations that differ in {diff}")
        for name, setting in r["settings"].items():
            mine = res["settings"].setdefault(name, copy.deepcopy(setting))
            if any(mine[k] != setting[k] for k in ("lr", "betas", "steps")):
                raise ValueError(f"setting {name!r} differs between the documents: "
                                 f"{mine} vs {setting}")
            mine["variants"] = list(dict.fromkeys(mine["variants"] + setting["variants"]))
        for name, runs in r["runs"].items():
            res["runs"].setdefault(name, {}).update(copy.deepcopy(runs))
        res["skipped"] += r["skipped"]
        res["wall_s"] = res.get("wall_s", 0.0) + r.get("wall_s", 0.0)
    res["skipped"] = [s for s in res["skipped"]
                      if s["variant"] not in res["runs"].get(s["setting"], {})]
    out["provenance"] = {**docs[0]["provenance"], "parts": [d["provenance"] for d in docs]}
    return out


# ---- plots (used by notebook 03) ----------------------------------------------------------------

def smooth(values: list, window: int) -> list[float]:
    """Running median over ``window`` points (None -> NaN); keeps spikes out of the trend."""
    v = np.array([np.nan if a is None else a for a in values], dtype=float)
    if window <= 1 or len(v) == 0:
        return v.tolist()
    return [float(np.nanmedian(v[max(0, i - window + 1):i + 1])) for i in range(len(v))]


VARIANT_COLORS = {name: f"C{i}" for i, name in enumerate(VARIANTS)}  # one colour per variant


def plot_runs(ax, runs: dict, key: str, probes: bool = False, logy: bool = True,
              smooth_window: int = 1, title: str | None = None):
    """One line per variant of ``runs`` ({variant: record}) for a curve or probe ``key``;
    spike steps marked with x (curves only). On a log axis values <= 0 (e.g. the zero output
    of the adaLN-zero init at step 0) are left out."""
    for variant, rec in runs.items():
        src = rec["probes"] if probes else rec["curves"]
        steps, vals = src["step"], src[key]
        color = VARIANT_COLORS.get(variant)
        ys = smooth(vals, smooth_window)
        if logy:
            ys = [y if y is not None and y > 0 else math.nan for y in ys]
        ax.plot(steps, ys, color=color, lw=1.0 if not probes else 1.5,
                marker="o" if probes else None, ms=3, label=variant)
        spike = rec["spike_step"].get(key) if not probes else None
        if spike is not None:
            j = steps.index(spike)
            ax.plot([spike], [vals[j]], "x", color=color, ms=9, mew=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title or key)
    ax.grid(alpha=0.3)
    return ax


# ---- CLI -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(prog="python -m tvmlib.experiments.lipschitz",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="configs/lipschitz_ablation*.yaml")
    p.add_argument("--out", default=None, help=f"JSON path (default: figures/{DEFAULT_OUT})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a top-level config key, e.g. steps=500")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="instead of running: merge these "
                   "result files (later ones add runs) into --out")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else figures_dir() / DEFAULT_OUT
    if args.merge:
        doc = merge_results([json.loads(Path(f).read_text()) for f in args.merge])
        atomic_write_text(json.dumps(doc, indent=None, separators=(",", ":")), out)
        print(f"merged {len(args.merge)} files into {out}", flush=True)
        return doc
    if not args.config:
        p.error("--config is required (unless --merge is given)")
    cfg = load_config(args.config, args.overrides)
    command = "python -m tvmlib.experiments.lipschitz " + " ".join(
        sys.argv[1:] if argv is None else argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    doc = run_ablation(cfg, out, command, log, t_start)
    log(f"done: {out} ({doc['results']['wall_s']:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
