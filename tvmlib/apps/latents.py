"""Encode an ImageFolder into SD-VAE posterior shards for TVM's latent-space training ([P]
section 6; the folder format is ``tvmlib.data.latents``'s).

    python -m tvmlib.apps.latents --folder IMAGENET/train --out data/latents/imagenet256 \\
        --resolution 256 [--vae stabilityai/sd-vae-ft-ema | /local/sd-vae-ft-ema] \\
        [--batch 64] [--shard-size 10000] [--workers 8]
    torchrun --nproc_per_node=8 -m tvmlib.apps.latents --folder ... --out ... --resolution 256

Resumable: finished shards are skipped. Under torchrun rank r encodes shards r, r + world, ...
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from tvmlib.apps import cli
from tvmlib.data.latents import (
    DEFAULT_VAE,
    FORMAT_VERSION,
    STORAGE_DTYPES,
    load_vae,
    read_meta,
    shard_name,
)
from tvmlib.training.distributed import barrier, init_distributed, world
from tvmlib.training.loop import quiet
from tvmlib.utils.atomic import atomic_save, atomic_write_text


@torch.no_grad()
def encode_posterior(vae, images: Tensor) -> tuple[Tensor, Tensor]:
    """Posterior mean and std (B, C, h, w), float32, of images (B, 3, H, W) in [-1, 1]."""
    param = next(vae.parameters())
    post = vae.encode(images.to(param.device, param.dtype)).latent_dist
    return post.mean.float(), post.std.float()


def _check_meta(old: dict, new: dict, out: Path) -> None:
    """An existing folder must have been made with the same settings (else resuming mixes)."""
    for key in ("format_version", "resolution", "vae", "num_images", "shard_size", "classes",
                "dtype"):
        if old.get(key) != new[key]:
            raise ValueError(
                f"{out} holds latents made with {key}={old.get(key)!r}, but this call asks for "
                f"{key}={new[key]!r}; use another --out folder (or delete {out})")


def shard_moments(mean: Tensor, std: Tensor) -> Tensor:
    """(3, C) float64: per-channel sums of mean, of mean^2 + std^2 (= E[z^2] given the posterior
    of z = mean + std eps), and the number of values summed."""
    m, s = mean.double(), std.double()
    C = m.shape[1]
    count = torch.full((C,), m.numel() / C, dtype=torch.float64)
    return torch.stack([m.sum((0, 2, 3)), (m.square() + s.square()).sum((0, 2, 3)), count])


def stats_from_moments(moments: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of z from summed :func:`shard_moments`."""
    s1, s2, n = moments
    mu = s1 / n
    return mu.tolist(), (s2 / n - mu.square()).clamp_min(0).sqrt().tolist()


def write_shard(path: Path, mean: Tensor, std: Tensor, labels: Tensor, index: Tensor,
                dtype: str = "float16") -> None:
    """Save one shard atomically (``*.tmp`` then rename); moments are taken before rounding."""
    atomic_save({"mean": mean.to(STORAGE_DTYPES[dtype]).contiguous().clone(),
                 "std": std.to(STORAGE_DTYPES[dtype]).contiguous().clone(),
                 "labels": labels.to(torch.int64).clone(), "index": index.to(torch.int64).clone(),
                 "moments": shard_moments(mean, std)}, path)


def finalize(out: str | Path) -> dict:
    """Mark ``out`` complete once every shard exists: write the per-channel stats of z."""
    out = Path(out)
    meta = read_meta(out)
    missing = [shard_name(i) for i in range(meta["num_shards"])
               if not (out / shard_name(i)).exists()]
    if missing:
        raise FileNotFoundError(f"{out} misses {len(missing)} shard(s), e.g. {missing[0]}; "
                                "run the encoder again (it skips finished shards)")
    moments = sum(torch.load(out / shard_name(i), mmap=True, weights_only=True)["moments"]
                  for i in range(meta["num_shards"]))
    mu, sd = stats_from_moments(moments)
    shape = torch.load(out / shard_name(0), mmap=True, weights_only=True)["mean"].shape[1:]
    meta.update(complete=True, latent_shape=list(shape), stats={"mean": mu, "std": sd})
    atomic_write_text(json.dumps(meta, indent=1), out / "meta.json")
    return meta


def _encode(model, loader, bar) -> tuple[Tensor, Tensor, Tensor]:
    """Posterior means, stds and labels of every batch of ``loader`` (on the CPU)."""
    means, stds, labels = [], [], []
    for x, y in loader:
        mean, std = encode_posterior(model, x)
        means.append(mean.cpu())
        stds.append(std.cpu())
        labels.append(y)
        bar.update(len(x))
    return torch.cat(means), torch.cat(stds), torch.cat(labels)


def encode_folder(folder: str | Path, out: str | Path, resolution: int, vae: str = DEFAULT_VAE,
                  batch_size: int = 64, shard_size: int = 10_000, workers: int = 4,
                  dtype: str = "float16", device: str | torch.device | None = None,
                  progress: bool | None = None) -> dict:
    """Encode an ImageFolder into latent shards under ``out``; returns the final meta.

    Shards already present are skipped, so an interrupted run resumes. Under torchrun each rank
    encodes every world-th shard and rank 0 writes ``meta.json``.
    """
    from tqdm.auto import tqdm

    from tvmlib.data.images import image_folder

    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype {dtype!r} unknown; valid: {', '.join(STORAGE_DTYPES)}")
    if shard_size <= 0 or batch_size <= 0:
        raise ValueError(f"shard_size ({shard_size}) and batch_size ({batch_size}) must be > 0")
    rank, n_world = world()
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
    out = Path(out)
    data = image_folder(folder, resolution)
    n = len(data)
    meta = {"format_version": FORMAT_VERSION, "resolution": resolution, "vae": str(vae),
            "num_images": n, "shard_size": shard_size, "num_shards": math.ceil(n / shard_size),
            "classes": data.classes, "dtype": dtype, "folder": str(folder)}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if (out / "meta.json").exists():
            _check_meta(read_meta(out), meta, out)
        else:
            atomic_write_text(json.dumps(meta, indent=1), out / "meta.json")
    barrier()
    todo = [i for i in range(rank, meta["num_shards"], n_world)
            if not (out / shard_name(i)).exists()]
    if todo:
        model = load_vae(vae, device)
        n_todo = sum(min(shard_size, n - i * shard_size) for i in todo)
        bar = tqdm(total=n_todo, unit="img", desc=f"encode rank {rank}", disable=(
            rank != 0 or (not progress if progress is not None else quiet())))
        for i in todo:
            index = torch.arange(i * shard_size, min(n, (i + 1) * shard_size))
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(data, index.tolist()), batch_size=batch_size,
                num_workers=workers, pin_memory=torch.device(device).type == "cuda")
            write_shard(out / shard_name(i), *_encode(model, loader, bar), index, dtype)
        bar.close()
    barrier()
    if rank == 0:
        meta = finalize(out)
    barrier()
    return read_meta(out)


def main(argv: list[str] | None = None) -> dict:
    ap = cli.Parser(prog="python -m tvmlib.apps.latents", description=__doc__)
    ap.add_argument("--folder", required=True, help="ImageFolder root (IMAGENET/train)")
    ap.add_argument("--out", required=True, help="output folder for meta.json and shards")
    ap.add_argument("--resolution", type=int, required=True, help="256 or 512 for TVM")
    ap.add_argument("--vae", default=DEFAULT_VAE, help="hub name (needs internet) or local folder")
    ap.add_argument("--batch", type=int, default=64, help="images per VAE call")
    ap.add_argument("--shard-size", type=int, default=10_000, help="images per shard")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                    help="DataLoader worker processes")
    ap.add_argument("--dtype", default="float16", choices=list(STORAGE_DTYPES),
                    help="storage dtype of mean and std")
    args = ap.parse_args(argv)
    rank, _, device = init_distributed()
    try:
        meta = encode_folder(args.folder, args.out, args.resolution, args.vae, args.batch,
                             args.shard_size, args.workers, args.dtype, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(f"[tvmlib.apps.latents] {args.out}: {meta['num_images']} images in "
              f"{meta['num_shards']} shards; z stats {meta['stats']}", flush=True)
    return meta


if __name__ == "__main__":
    cli.run(main)
