"""Run configurations: YAML files under ``configs/`` checked against a typed schema.

A run config has five sections (``data``, ``model``, ``loss``, ``train``, ``eval``) plus a
``name``. Loading is strict: an unknown key or a value of the wrong type fails before any work
starts, naming the key (``model.presett: unknown key; valid keys: ...``). The same files work
as papermill parameter files (``papermill nb.ipynb out.ipynb -f configs/X.yaml``): their
top-level keys become notebook parameters.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class DataConfig:
    """Where the training images (or latents) come from."""

    dataset: str = "fashion-mnist"  # mnist | fashion-mnist | latents | toy:<name>
    path: str | None = None  # latents folder (dataset "latents")
    class_conditional: bool = True
    latent_norm: str = "auto"  # auto | paper | shards | none (see tvmlib.data.latents)


@dataclass
class ModelConfig:
    """A DiT preset (``tvmlib.nn.dit.DIT_PRESETS``) or ``MLP2D`` for the toys."""

    preset: str = "DiT_S_2"
    input_size: int = 32
    in_channels: int = 1
    num_classes: int = 10
    guidance: bool = True  # w (through 1/w) is a network input: TVM's folded CFG
    attn_backend: str = "math"  # math | sdpa | triton
    lipschitz: dict = field(default_factory=dict)  # LipschitzConfig fields; {} = all on
    hidden: int = 256  # MLP2D only
    depth: int = 4  # MLP2D only


@dataclass
class LossConfig:
    """The loss and its paper hyperparameters (see tvmlib.losses)."""

    name: str = "tvm"  # fm | tvm | meanflow
    target_decay: float = 0.99
    label_dropout: float = 0.1
    cfg_scale: float | None = None  # TVM: constant training w; None = no guidance input
    scale_param: bool = True
    frac_equal: float = 0.0
    detach_jvp: bool = False
    time_sampler: str = "logit_normal"  # FM only
    time_mean: float = -0.4
    time_std: float = 1.0


@dataclass
class TrainSection:
    """Optimisation: global batch split over GPUs and micro-batches."""

    steps: int = 1000
    global_batch: int = 128
    per_gpu_batch: int | None = None  # None: global_batch / num_gpus (no accumulation)
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float | None = None
    ema_decay: float = 0.9999
    log_every: int = 50
    ckpt_every: int = 500
    seed: int = 0
    amp: str = "auto"
    tf32: bool = False  # TF32 matmuls/convolutions on CUDA (TVM: off)
    cuda_graph: bool = False  # replay loss + backward as a CUDA graph (tvmlib.graphs)


@dataclass
class EvalConfig:
    """Sampling and metrics after (or during) training."""

    num_samples: int = 1000
    steps: list[int] = field(default_factory=lambda: [1, 2, 4])
    cfg_scale: float | None = None  # w fed to a guidance-conditioned net; None = loss's
    batch_size: int = 250
    metric: str = "classifier_fd"  # classifier_fd | inception_fid | features_fd | none
    inception_weights: str | None = None
    reference_stats: str | None = None  # .npz with mu, sigma (pytorch-fid / ADM style)
    features: str | None = None  # features_fd: "module:function" or "file.py:function"
    vae: str | None = None  # decoder for latent runs; None = the VAE named in the latents' meta
    weights: str = "ema"  # ema (evaluation EMA) | net (raw weights) | target (TVM's EMA target)
    seed: int = 0
    attn_backend: str = "sdpa"  # sampling needs no JVP: fused SDPA is fine
    precision: str = "fp32"  # fp32 | fp64 (the paper samples in fp64) | bf16


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str | None = None  # default runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")


class ConfigError(ValueError):
    """A config key is unknown or has the wrong type; the message names the key."""


# Keys whose string values come from a fixed list (checked when a config is loaded).
CHOICES = {
    "data.latent_norm": ("auto", "paper", "shards", "none"),
    "model.attn_backend": ("math", "sdpa", "triton"),
    "loss.name": ("fm", "tvm", "meanflow"),
    "train.amp": ("auto", "bf16", "off"),
    "eval.metric": ("classifier_fd", "inception_fid", "features_fd", "none"),
    "eval.weights": ("ema", "net", "target"),
    "eval.attn_backend": ("math", "sdpa", "triton"),
    "eval.precision": ("fp32", "fp64", "bf16"),
}


def check_choices(cfg: RunConfig) -> RunConfig:
    """Raise ConfigError naming the key if a value is not one of :data:`CHOICES`."""
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{dotted}: {value!r} is not one of {', '.join(allowed)}")
    return cfg


def _check_type(value, tp, key: str):
    """Return value converted to type tp (int -> float allowed), or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_check_type(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got str {value!r}") from None
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got a boolean {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{full}: unknown key; valid keys: {', '.join(sorted(fields))}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _check_type(value, tp, full)
    return cls(**kwargs)


def set_override(values: dict, dotted: str, value) -> None:
    """Set ``values["a"]["b"] = value`` for ``dotted = "a.b"`` (creating sections)."""
    *parents, last = dotted.split(".")
    node = values
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    node[last] = value


def parse_override(text: str) -> tuple[str, object]:
    """``"train.lr=3e-4"`` -> ("train.lr", 3e-4): the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def config_from_dict(values: dict, overrides: dict | None = None) -> RunConfig:
    """Validate a nested dict (plus dotted ``overrides``) into a RunConfig."""
    values = yaml.safe_load(yaml.safe_dump(values or {}))  # deep copy of plain data
    for key, value in (overrides or {}).items():
        set_override(values, key, value)
    return check_choices(_build(RunConfig, values, ""))


def load_config(path: str | Path, overrides: dict | list[str] | None = None) -> RunConfig:
    """Read a YAML run config; ``overrides`` is {"train.lr": 3e-4} or ["train.lr=3e-4"]."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no config file at {path}; see configs/ for the available ones")
    values = yaml.safe_load(path.read_text()) or {}
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    return config_from_dict(values, overrides)


def config_to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)
