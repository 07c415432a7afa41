"""Build a training run from a config and launch it: the ``python -m tvmlib.train`` CLI.

    python -m tvmlib.train --config configs/fashion_tvm.yaml [--set train.steps=200] [--resume]
    torchrun --nproc_per_node=8 -m tvmlib.train --config configs/im256_w2.yaml

Under ``torchrun`` the process group is initialised here (NCCL on GPUs, gloo on CPUs), every
process trains on its slice of each global batch, and only rank 0 writes logs and checkpoints
(``runs/<name>/checkpoint.pt``, ``log.csv``, ``log.json``, ``config.yaml``).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import yaml
from torch import nn

from tvmlib.config import RunConfig, config_to_dict, load_config
from tvmlib.train import TrainConfig, TrainState, atomic_write_text, train


def build_model(cfg: RunConfig) -> nn.Module:
    m = cfg.model
    num_classes = m.num_classes if cfg.data.class_conditional else 0
    if m.preset == "MLP2D":
        from tvmlib.nn import MLP2D

        return MLP2D(dim=m.in_channels, hidden=m.hidden, depth=m.depth, num_classes=num_classes,
                     guidance=m.guidance)
    from tvmlib.nn.dit import LipschitzConfig, dit_from_preset

    return dit_from_preset(m.preset, input_size=m.input_size, in_channels=m.in_channels,
                           num_classes=num_classes, guidance=m.guidance,
                           lipschitz=LipschitzConfig(**m.lipschitz), attn_backend=m.attn_backend)


def build_loss(cfg: RunConfig, net: nn.Module):
    from tvmlib.losses import FMLoss, MeanFlowLoss, TVMLoss

    lc, n_cls = cfg.loss, getattr(net, "num_classes", 0)
    if lc.name == "fm":
        return FMLoss(lc.time_sampler, lc.time_mean, lc.time_std, lc.label_dropout, n_cls)
    if lc.name == "tvm":
        if lc.cfg_scale is not None and not getattr(net, "guidance", False):
            raise ValueError("loss.cfg_scale needs a guidance-conditioned model "
                             "(model.guidance: true)")
        return TVMLoss(net, target_decay=lc.target_decay, frac_equal=lc.frac_equal,
                       num_classes=n_cls, label_dropout=lc.label_dropout,
                       cfg_scale=lc.cfg_scale, scale_param=lc.scale_param,
                       detach_jvp=lc.detach_jvp)
    if lc.name == "meanflow":
        return MeanFlowLoss(num_classes=n_cls, label_dropout=lc.label_dropout,
                            omega=lc.cfg_scale)
    raise ValueError(f"loss.name {lc.name!r} unknown; valid: fm, tvm, meanflow")


def build_source(cfg: RunConfig):
    """A replayable stream of global batches for ``cfg.data``."""
    d, batch, seed = cfg.data, cfg.train.global_batch, cfg.train.seed
    if d.dataset.startswith("toy:"):
        from tvmlib.data import ToySource

        return ToySource(d.dataset[4:], batch, seed=seed, labels=d.class_conditional)
    if d.dataset in ("mnist", "fashion-mnist"):
        from tvmlib.data.images import TensorSource, load_mnist

        x, y = load_mnist(d.dataset, "train")
        return TensorSource(x, y, batch, seed=seed, labels=d.class_conditional)
    if d.dataset == "latents":
        from tvmlib.data.latents import LatentSource

        if not d.path:
            raise ValueError("data.dataset 'latents' needs data.path (a folder of latent shards)")
        src = LatentSource(d.path, batch, seed=seed, labels=d.class_conditional,
                           norm=d.latent_norm)
        m = cfg.model
        if src.latent_shape != (m.in_channels, m.input_size, m.input_size):
            raise ValueError(f"{d.path} holds latents of shape {src.latent_shape}, but the model "
                             f"expects (model.in_channels, model.input_size x2) = "
                             f"{(m.in_channels, m.input_size, m.input_size)}")
        if d.class_conditional and src.num_classes > m.num_classes:
            raise ValueError(f"{d.path} has {src.num_classes} classes, model.num_classes is "
                             f"{m.num_classes}")
        return src
    raise ValueError(f"data.dataset {d.dataset!r} unknown; valid: mnist, fashion-mnist, latents, "
                     "toy:<name>")


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def micro_batches(cfg: RunConfig, world: int) -> int:
    """Gradient-accumulation factor so that world x per_gpu x micro = global batch."""
    t = cfg.train
    per_gpu = t.per_gpu_batch or t.global_batch // world
    if per_gpu <= 0 or t.global_batch % (world * per_gpu):
        raise ValueError(f"train.global_batch {t.global_batch} must be a multiple of "
                         f"num_gpus ({world}) x train.per_gpu_batch ({per_gpu})")
    return t.global_batch // (world * per_gpu)


def train_config(cfg: RunConfig, world: int) -> TrainConfig:
    t, run_dir = cfg.train, cfg.run_dir
    return TrainConfig(steps=t.steps, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                       grad_clip=t.grad_clip, ema_decay=t.ema_decay, log_every=t.log_every,
                       ckpt_every=t.ckpt_every, ckpt_path=str(run_dir / "checkpoint.pt"),
                       log_path=str(run_dir / "log"), seed=t.seed,
                       micro_batches=micro_batches(cfg, world), amp=t.amp,
                       cuda_graph=t.cuda_graph)


def run(cfg: RunConfig, resume: bool = True) -> TrainState:
    """Train ``cfg`` (resuming from ``runs/<name>/checkpoint.pt`` if present)."""
    rank, world, device = init_distributed()
    tcfg = train_config(cfg, world)  # validates the batch split before any work
    torch.manual_seed(cfg.train.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    with device:  # build on the device: the spectral init's SVDs of an XL model are slow on CPU
        net = build_model(cfg)
    loss_fn = build_loss(cfg, net)
    if hasattr(loss_fn, "target"):
        loss_fn.target.module.to(device)
    source = build_source(cfg)
    if rank == 0:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
                          cfg.run_dir / "config.yaml")
        print(f"[tvmlib.train] {cfg.name}: {sum(p.numel() for p in net.parameters()):,} params, "
              f"{world} process(es) on {device}, global batch {cfg.train.global_batch} = "
              f"{world} x {cfg.train.global_batch // (world * tcfg.micro_batches)} x "
              f"{tcfg.micro_batches} micro-batches", flush=True)
    return train(net, loss_fn, source, tcfg, resume=resume)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tvmlib.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a YAML file under configs/")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="override a config value, e.g. train.steps=200")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)  # fails here, before any work, on bad keys
    try:
        state = run(cfg, resume=not args.fresh)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if state.history:
        print(f"[tvmlib.train] done at step {state.step}: {state.history[-1]}", flush=True)


if __name__ == "__main__":
    main()
