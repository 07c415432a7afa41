"""One build path: a run config (``tvmlib.training.config.RunConfig``) -> the network, the loss,
the batch source, the loop settings and the device, for every run of the project (the train
CLI, the experiments, the benchmarks, the checkpoint makers and the notebooks).

:func:`sampler` says how a run's network is sampled, so that sampling matches training: flow-map
losses (TVM, MeanFlow, CMT) jump with the flow map, TVM with its guidance input w and scaled
parameterization; flow matching integrates its velocity with an ODE solver, guided outside the
network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from tvmlib.training.checkpoint import read_checkpoint
from tvmlib.training.config import RunConfig, config_to_dict, load_config
from tvmlib.training.loop import TrainConfig

FLOW_MAP_LOSSES = ("tvm", "meanflow", "cmt")  # their networks are flow maps F(x, t, s)
DIT_SIZE_KEYS = ("depth", "hidden_size", "num_heads", "patch_size", "freq_dim", "time_scale")


@dataclass
class Built:
    net: nn.Module
    loss: object  # loss(net, batch) -> (loss, logs)
    source: object  # next_batch() -> a global batch
    loop: TrainConfig
    device: torch.device


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def num_classes(cfg: RunConfig) -> int:
    return cfg.model.num_classes if cfg.data.class_conditional else 0


def build_model(cfg: RunConfig) -> nn.Module:
    """The network of ``cfg.model`` (on the current default device), seeded by train.seed.
    The preset is one ``rules.check_values`` allows."""
    from tvmlib.nn import MLP2D, DiT, LipschitzConfig
    from tvmlib.nn.dit import DIT_PRESETS

    m = cfg.model
    torch.manual_seed(cfg.train.seed)
    if m.preset == "MLP2D":
        extra = {"time_scale": m.time_scale} if m.time_scale is not None else {}
        return MLP2D(dim=m.in_channels, hidden=m.hidden_size or 256, depth=m.depth or 4,
                     num_classes=num_classes(cfg), guidance=m.guidance, **extra)
    sizes = {k: getattr(m, k) for k in DIT_SIZE_KEYS if getattr(m, k) is not None}
    preset = {} if m.preset == "DiT" else DIT_PRESETS[m.preset]
    return DiT(**{**preset, **sizes}, input_size=m.input_size, in_channels=m.in_channels,
               num_classes=num_classes(cfg), guidance=m.guidance,
               lipschitz=LipschitzConfig(**asdict(m.lipschitz)), attn_backend=m.attn_backend,
               jvp=m.jvp)


def build_loss(cfg: RunConfig, net: nn.Module, teacher: nn.Module | None = None):
    """The loss of ``cfg.loss`` for ``net``; CMT needs the frozen ``teacher``."""
    from tvmlib.core.losses import CMTLoss, FMLoss, MeanFlowLoss, TVMLoss

    lc, K = cfg.loss, num_classes(cfg)
    if lc.name == "fm":
        return FMLoss(lc.time_sampler, lc.time_mean, lc.time_std, lc.label_dropout, K)
    if lc.name == "meanflow":
        return MeanFlowLoss(num_classes=K, label_dropout=lc.label_dropout, omega=lc.cfg_scale,
                            power=lc.adaptive_power)
    if lc.name == "cmt":
        if teacher is None:
            raise ValueError("loss.name cmt needs a teacher: set loss.teacher to a run")
        return CMTLoss(teacher, steps=lc.solver_steps, solver=lc.solver, grid=lc.grid,
                       points=lc.points, endpoint_only=lc.endpoint_only, space=lc.space,
                       labels=lc.labels, label_dropout=lc.label_dropout,
                       cfg_scale=lc.cfg_scale, seed=cfg.train.seed)
    w = tuple(lc.cfg_range) if lc.cfg_range is not None else lc.cfg_scale
    if w is not None and not getattr(net, "guidance", False):
        raise ValueError("loss.cfg_scale / cfg_range need a guidance-conditioned model "
                         "(model.guidance: true)")
    return TVMLoss(net, target_decay=lc.target_decay, frac_equal=lc.frac_equal, num_classes=K,
                   label_dropout=lc.label_dropout, cfg_scale=w, scale_param=lc.scale_param,
                   detach_jvp=lc.detach_jvp)


def build_source(cfg: RunConfig, device: torch.device | str = "cpu"):
    """A replayable stream of global batches for ``cfg.data`` (MNIST-like images on
    ``device``, so a GPU run indexes them there)."""
    d, batch, seed = cfg.data, cfg.train.global_batch, cfg.train.seed
    if d.dataset.startswith("toy:"):
        from tvmlib.data import ToySource

        return ToySource(d.dataset[4:], batch, seed=seed, labels=d.class_conditional)
    if d.dataset == "latents":
        return _latent_source(cfg)
    from tvmlib.data.images import TensorSource, load_mnist  # mnist, fashion-mnist

    x, y = load_mnist(d.dataset, "train")
    return TensorSource(x.to(device), y.to(device), batch, seed=seed, labels=d.class_conditional)


def _latent_source(cfg: RunConfig):
    from tvmlib.data.latents import LatentSource

    d, m = cfg.data, cfg.model
    if not d.path:
        raise ValueError("data.dataset 'latents' needs data.path (a folder of latent shards)")
    src = LatentSource(d.path, cfg.train.global_batch, seed=cfg.train.seed,
                       labels=d.class_conditional, norm=d.latent_norm)
    if src.latent_shape != (m.in_channels, m.input_size, m.input_size):
        raise ValueError(f"{d.path} holds latents of shape {src.latent_shape}, but the model "
                         f"expects (model.in_channels, model.input_size x2) = "
                         f"{(m.in_channels, m.input_size, m.input_size)}")
    if d.class_conditional and src.num_classes > m.num_classes:
        raise ValueError(f"{d.path} has {src.num_classes} classes, model.num_classes is "
                         f"{m.num_classes}")
    return src


def micro_batches(cfg: RunConfig, world: int) -> int:
    """Gradient-accumulation factor so that world x per_gpu x micro = global batch."""
    t = cfg.train
    per_gpu = t.per_gpu_batch or t.global_batch // world
    if per_gpu <= 0 or t.global_batch % (world * per_gpu):
        raise ValueError(f"train.global_batch {t.global_batch} must be a multiple of "
                         f"num_gpus ({world}) x train.per_gpu_batch ({per_gpu})")
    return t.global_batch // (world * per_gpu)


def loop_config(cfg: RunConfig, world: int = 1) -> TrainConfig:
    """The loop settings of ``cfg.train``, checkpoint and log in ``cfg.run_dir``."""
    t = cfg.train
    return TrainConfig(
        steps=t.steps, lr=t.lr, warmup=t.warmup, betas=tuple(t.betas),
        weight_decay=t.weight_decay, grad_clip=t.grad_clip, ema_decay=t.ema_decay,
        ema_warmup=t.ema_warmup,
        log_every=t.log_every, ckpt_every=t.ckpt_every,
        ckpt_path=str(cfg.run_dir / "checkpoint.pt"), log_path=str(cfg.run_dir / "log"),
        seed=t.seed, micro_batches=micro_batches(cfg, world), amp=t.amp,
        cuda_graph=t.cuda_graph, time_budget_s=t.time_budget_s, sync_every=t.sync_every,
        fused_adamw=t.fused_adamw)


def build(cfg: RunConfig, device: torch.device | str | None = None, world: int = 1,
          teacher: nn.Module | None = None) -> Built:
    """Everything a run trains with. The network is built on ``device`` (default
    ``cfg.device``): the spectral init's SVDs of an XL model are slow on a CPU."""
    device = resolve_device(device if device is not None else cfg.device)
    loop = loop_config(cfg, world)  # validates the batch split before any work
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    with device:
        net = build_model(cfg)
    if cfg.model.jvp == "compiled" and cfg.loss.name != "tvm":
        compile_forward(net, cfg.loss.name)
    return Built(net, build_loss(cfg, net, teacher), build_source(cfg, device), loop, device)


def compile_forward(net: nn.Module, loss: str) -> None:
    """``model.jvp: compiled`` for a loss without dF/ds: FM and CMT run the whole network
    through torch.compile (in place, so copies such as the EMA's keep their own weights); TVM
    compiles each block's work around its attention instead (``tvmlib.nn.dit_jvp``). MeanFlow
    is refused: inside its ``torch.func.jvp`` a compiled module runs eagerly (dynamo captures
    no graph there), so it would gain nothing."""
    if loss == "meanflow":
        raise ValueError("model.jvp 'compiled' does not apply to loss meanflow: its "
                         "torch.func.jvp runs a compiled network eagerly. Use 'fused' or 'func'")
    net.compile(dynamic=False)


def load_run(run_dir: str | Path, weights: str = "ema", device: str | torch.device = "cpu"
             ) -> tuple[RunConfig, nn.Module]:
    """(config, network) of a run folder (``config.yaml`` and ``checkpoint.pt``). ``weights``:
    "ema" (evaluation EMA), "net" (raw weights) or "target" (TVM's EMA target). The network is
    in eval mode, gradients off, on ``device``."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "checkpoint.pt"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir / name} does not exist: a run folder is written "
                                    "by python -m tvmlib.apps.train (runs/<name>)")
    cfg = load_config(run_dir / "config.yaml")
    ckpt = read_checkpoint(run_dir / "checkpoint.pt")
    states = {"ema": lambda: ckpt["ema"]["module"], "net": lambda: ckpt["net"],
              "target": lambda: ckpt["loss"]["target"]["module"]}
    if weights not in states:
        raise ValueError(f"weights {weights!r} unknown; valid: {', '.join(states)}")
    if weights == "target" and not (ckpt.get("loss") or {}).get("target"):
        raise ValueError(f"{run_dir} has no EMA target (not a TVM run); use weights ema or net")
    with torch.device(device):
        net = build_model(cfg)
    net.load_state_dict(states[weights]())
    return cfg, net.eval().requires_grad_(False)


RESUMABLE = ("steps", "time_budget_s", "total_budget_s",  # may change between calls of a run
             "dist_timeout_s")


def check_resume(cfg: RunConfig) -> None:
    """A run folder with a checkpoint is resumed only by the config that made it (up to the
    training length and budgets); anything else would mix two runs."""
    stored = cfg.run_dir / "config.yaml"
    if not (cfg.run_dir / "checkpoint.pt").exists() or not stored.exists():
        return
    old, new = yaml.safe_load(stored.read_text()) or {}, config_to_dict(cfg)
    for sec, values in config_to_dict(RunConfig()).items():  # keys newer than the folder's
        if isinstance(values, dict) and isinstance(old.get(sec), dict):  # config: defaults
            old[sec] = {**values, **old[sec]}
    for values in (old, new):
        for key in RESUMABLE:
            (values.get("train") or {}).pop(key, None)
    diff = sorted(f"{sec}.{k} {(old.get(sec) or {}).get(k)!r} -> {v!r}" for sec in new
                  if isinstance(new[sec], dict) for k, v in new[sec].items()
                  if (old.get(sec) or {}).get(k) != v)
    diff += [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new
             if not isinstance(new[k], dict) and old.get(k) != new[k]]
    if diff:
        raise ValueError(f"{cfg.run_dir} holds a checkpoint of a run with other settings "
                         f"({'; '.join(diff)}): refusing to resume it, because the run would "
                         "continue with the checkpoint's model, loss, data and optimizer state "
                         "(its learning rate included). Train afresh (--fresh), or use another "
                         "folder (out_dir, --work-dir)")


def sampler(cfg: RunConfig, net: nn.Module) -> dict:
    """How to sample the network of run ``cfg``: keyword arguments of
    ``tvmlib.core.solvers.sample`` (solver, w, cfg_scale, scale_param)."""
    e, lc = cfg.eval, cfg.loss
    flow_map = lc.name in FLOW_MAP_LOSSES
    solver = e.solver if e.solver != "auto" else ("flowmap" if flow_map else "euler")
    if not flow_map:  # a velocity field: guidance outside the network, if any
        cfg_scale = e.cfg_scale if e.cfg_scale not in (None, 1.0) else None
        return {"solver": solver, "w": None, "cfg_scale": cfg_scale, "scale_param": False}
    w = None
    if getattr(net, "guidance", False) and lc.name != "meanflow":  # MeanFlow trains at w = 1
        w = e.cfg_scale if e.cfg_scale is not None else lc.cfg_scale
    return {"solver": solver, "w": w, "cfg_scale": None,
            "scale_param": lc.name == "tvm" and lc.scale_param}
