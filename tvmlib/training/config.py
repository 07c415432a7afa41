"""Run and experiment configurations: YAML files under ``configs/``, checked against one typed
schema (OmegaConf structured configs) before any work starts.

A run config has five sections (``data``, ``model``, ``loss``, ``train``, ``eval``) and a few
top-level keys (``name``, ``out_dir``, ``init``, ``device``). An experiment config lists runs:
``defaults`` (run-config keys shared by every run) and ``runs`` (each a run config merged onto the
defaults, with a unique ``name``). Dotted overrides (``train.lr=3e-4``) work on both. Errors name
the key: ``model.presett: unknown key; valid keys: ...``, ``train.steps must be >= 1, got -3``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from tvmlib.training.rules import check_experiment, check_type, check_values
from tvmlib.utils.checks import ConfigError, fail

__all__ = ["ConfigError", "ExperimentConfig", "RunConfig", "check_values", "config_from_dict",
           "config_to_dict", "experiment_from_dict", "load_config", "load_experiment",
           "parse_overrides", "read_yaml"]


@dataclass
class DataConfig:
    """Where the training images (or latents, or 2D points) come from."""

    dataset: str = "fashion-mnist"  # mnist | fashion-mnist | latents | toy:<name>
    path: str | None = None  # the latents folder (dataset "latents")
    class_conditional: bool = True
    latent_norm: str = "auto"  # auto | paper | shards | none (tvmlib.data.latents)


@dataclass
class LipschitzSection:
    """TVM's Lipschitz changes of the DiT (``tvmlib.nn.dit.LipschitzConfig``); all on = TVM."""

    rmsnorm: bool = True
    qk_norm: bool = True
    mod_norm: bool = True
    spectral_init: bool = True
    time_spectral_init: bool = False


@dataclass
class ModelConfig:
    """A DiT preset (``tvmlib.nn.dit.DIT_PRESETS``), ``DiT`` (every size given here) or ``MLP2D``
    (the 2D toys). Size keys left None take the preset's (MLP2D: hidden 256, depth 4).
    ``attn_backend``, ``jvp`` and ``lipschitz`` are the DiT's; MLP2D always uses torch.func.jvp."""

    preset: str = "DiT-S/2"
    input_size: int = 32
    in_channels: int = 1
    num_classes: int = 10
    guidance: bool = True  # w (through 1/w) is a network input: TVM's folded CFG
    attn_backend: str = "math"  # math | sdpa | triton (training TVM needs math or triton)
    # DiT's d/ds F: fused (DiT.forward_and_dfds) | compiled (the same through torch.compile;
    # FM and CMT: the whole forward compiled) | func
    jvp: str = "fused"
    lipschitz: LipschitzSection = field(default_factory=LipschitzSection)
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    freq_dim: int | None = None
    time_scale: float | None = None  # None: the network's default (DiT 1, MLP2D 1000)


@dataclass
class LossConfig:
    """The loss (``tvmlib.core.losses``) and its hyperparameters; each loss reads its own keys."""

    name: str = "tvm"  # fm | tvm | meanflow | cmt
    label_dropout: float = 0.1
    cfg_scale: float | None = None  # tvm: constant training w; meanflow: omega; cmt: teacher CFG
    cfg_range: list[float] | None = None  # tvm: [w_min, w_max], beta = 1/w uniform
    time_sampler: str = "logit_normal"  # fm: uniform | logit_normal
    time_mean: float = -0.4
    time_std: float = 1.0
    target_decay: float = 0.99  # tvm: EMA decay of the stop-gradient target
    scale_param: bool = True  # tvm: f = (s - t) w F
    frac_equal: float = 0.0
    detach_jvp: bool = False
    adaptive_power: float = 1.0  # meanflow: weight 1 / (||Delta||^2 + c)^p (paper 1; 0: MSE)
    teacher: str | None = None  # cmt: the teacher run (a run of the experiment) or checkpoint
    solver: str = "dpm++2m"  # cmt: the teacher's ODE solver
    solver_steps: int = 16
    grid: str = "logsnr"
    points: int | None = None  # cmt: pairs per trajectory (None: solver_steps)
    endpoint_only: bool = False
    space: str = "velocity"
    labels: str = "batch"
    pool: bool = False  # cmt: make every trajectory up front, pool_batch per teacher call
    pool_batch: int = 1000
    pool_size: int | None = None  # cmt: trajectories in the pool (None: one per step's need)


@dataclass
class TrainSection:
    """Optimisation: a global batch split over processes and micro-batches."""

    steps: int = 1000
    global_batch: int = 128
    per_gpu_batch: int | None = None  # None: global_batch / processes (no accumulation)
    lr: float = 1e-4
    warmup: int = 0  # steps of linear learning-rate warm-up
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float | None = None
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # evaluation EMA decay min(ema_decay, (1 + n) / (10 + n))
    log_every: int = 50
    ckpt_every: int = 500
    seed: int = 0
    amp: str = "auto"  # auto (bf16 autocast on CUDA) | bf16 | off
    tf32: bool = False
    cuda_graph: bool = False  # replay loss + backward as a CUDA graph (tvmlib.training.graphs)
    sync_every: int = 1  # read loss and gradient norm back every N steps (loop.train)
    fused_adamw: bool = False  # torch's fused AdamW (one kernel per step) instead of foreach
    time_budget_s: float | None = None  # stop training after this many (GPU) seconds
    total_budget_s: float | None = None  # ... counting the runs it starts from and its setup
    flop_budget: float | None = None  # train this many FLOPs: steps = budget / FLOPs of a step
    dist_timeout_s: float = 600.0  # torchrun: a collective not done by then fails the run


@dataclass
class EvalConfig:
    """Sampling and metrics, at the end of a run and every ``every`` steps during it."""

    num_samples: int = 1000  # per evaluation during training and in the final sweep
    final_samples: int | None = None  # the final evaluation of eval.weights (None: num_samples)
    steps: list[int] = field(default_factory=lambda: [1, 2, 4])  # solver steps (jumps)
    solver: str = "auto"  # auto: flowmap for flow-map losses, euler for fm; or any solver
    grid: str = "uniform"  # uniform | logsnr
    cfg_scale: float | None = None  # w of a guidance input; fm: classifier-free guidance
    batch_size: int = 250
    metric: str = "classifier_fd"  # classifier_fd | inception_fid | features_fd | w2 (toys) | none
    inception_weights: str | None = None
    reference_stats: str | None = None  # .npz with mu, sigma
    features: str | None = None  # features_fd: "package.module:function"
    vae: str | None = None  # decoder of latent runs; None: the latents' VAE
    weights: list[str] = field(default_factory=lambda: ["ema"])  # ema | net | target
    seed: int = 0
    attn_backend: str = "sdpa"  # sampling needs no JVP
    precision: str = "fp32"  # fp32 | fp64 | bf16
    every: int = 0  # evaluate the first of ``weights`` every this many steps (0: at the end)
    solvers: list[str] = field(default_factory=list)  # final sweep: more solvers (fm runs)
    cfg_scales: list[float] = field(default_factory=list)  # final sweep: more guidance scales
    probe_every: int = 0  # Lipschitz probes every this many steps (0: none)
    probe_batch: int = 32
    lipschitz_batch: int = 8
    power_iters: int = 8
    spike_k: float = 4.0  # a spike: loss or gradient norm above spike_k x its running median
    spike_window: int = 50
    spike_warmup: int = 25


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str | None = None  # default runs/<name>
    init: str | None = None  # start from these weights: a checkpoint, or a run of the experiment
    device: str = "auto"  # auto: cuda if available
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")


@dataclass
class ExperimentConfig:
    """A list of runs executed in order by ``tvmlib.training.runner``."""

    name: str = "experiment"
    out: str | None = None  # results file name under figures/; default <name>.json
    work_dir: str | None = None  # run folders; default runs/<name>
    num_threads: int | None = None  # torch.set_num_threads
    # copy each run's sample grids beside the results file (figures/ by default):
    # <name>_<run>_samples_<k>step.png
    grids: bool = False
    # each run in a fresh process with empty torch.compile / Triton caches, so that no run finds
    # the kernels another compiled (tvmlib.experiments.isolate): for equal-time comparisons
    cold_compile: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)


def _valid_keys(root: type, dotted: str) -> list[str]:
    """Field names of the section of ``root`` that holds the last part of ``dotted``."""
    node = OmegaConf.select(OmegaConf.structured(root), dotted.rpartition(".")[0])
    return sorted(node) if OmegaConf.is_dict(node) else []


def _check_shape(schema: type, values, prefix: str = "") -> None:
    """Sections must be mappings and values of the schema's types (``rules.check_type``)."""
    hints = typing.get_type_hints(schema)
    for key, value in (values or {}).items():
        tp = hints.get(key)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                fail(f"{prefix}{key}", f"must be a mapping of {tp.__name__} keys", value)
            _check_shape(tp, value, f"{prefix}{key}.")
        elif tp is not None and typing.get_origin(tp) is not dict:
            check_type(f"{prefix}{key}", value, tp)


def _merge(schema: type, *parts):
    """The typed ``schema`` instance of the merged ``parts`` (dicts), or ConfigError."""
    for part in parts:
        if not isinstance(part, dict):
            fail("config", "must be a mapping of sections", part)
        _check_shape(schema, part)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), *parts))
    except ConfigKeyError as err:
        key = err.full_key or str(err)
        raise ConfigError(f"{key}: unknown key; valid keys: "
                          f"{', '.join(_valid_keys(schema, key))}") from None
    except OmegaConfBaseException as err:
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{err.full_key or 'config'}: {msg}") from None


def parse_overrides(overrides: dict | list[str] | None) -> dict:
    """``["train.lr=3e-4"]`` (values parsed as YAML) or ``{"train.lr": 3e-4}`` -> nested dict."""
    pairs = []
    for item in overrides or []:
        if isinstance(overrides, dict):
            pairs.append((item, overrides[item]))
            continue
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            pairs.append((key.strip(), yaml.safe_load(raw)))
        except yaml.YAMLError as err:
            raise ConfigError(f"{key.strip()}: cannot parse the value {raw!r} "
                              f"({getattr(err, 'problem', err)})") from None
    nested: dict = {}
    for key, value in pairs:
        *parents, last = key.split(".")
        if not all(key.split(".")):
            raise ConfigError(f"override key {key!r} must look like section.key")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is set to a value and a section at once")
        node[last] = value
    return nested


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}; see configs/ for the available ones")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"{path} is empty or not a mapping of config sections: a config must "
                          "say what it runs (data, model, loss, train)")
    return values


def config_from_dict(values: dict, overrides: dict | list[str] | None = None) -> RunConfig:
    """Validate a nested dict (plus dotted ``overrides``) into a :class:`RunConfig`."""
    return check_values(_merge(RunConfig, values or {}, parse_overrides(overrides)))


def load_config(path: str | Path, overrides: dict | list[str] | None = None) -> RunConfig:
    """Read a YAML run config; ``overrides`` is {"train.lr": 3e-4} or ["train.lr=3e-4"]."""
    return config_from_dict(read_yaml(path), overrides)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def experiment_from_dict(values: dict, overrides: dict | list[str] | None = None
                         ) -> tuple[ExperimentConfig, list[RunConfig]]:
    """(the experiment, its validated runs): every run is ``defaults`` merged with its entry,
    then the overrides (which apply to every run); names must be unique."""
    exp = check_experiment(_merge(ExperimentConfig, values or {}))
    if not exp.runs:
        raise ConfigError("runs: an experiment needs at least one run")
    extra = parse_overrides(overrides)
    runs = []
    for i, run in enumerate(exp.runs):
        if not run.get("name"):
            raise ConfigError(f"runs[{i}].name: every run needs a name")
        try:
            runs.append(check_values(_merge(RunConfig, exp.defaults, run, extra)))
        except ConfigError as err:
            raise ConfigError(f"runs[{i}] ({run['name']}): {err}") from None
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"runs: names must be unique, got {names}")
    return exp, runs


def load_experiment(path: str | Path, overrides: dict | list[str] | None = None
                    ) -> tuple[ExperimentConfig, list[RunConfig]]:
    return experiment_from_dict(read_yaml(path), overrides)
