"""ImageNet latents for TVM ([P] section 6, App. F; docs/tvm.md section 6).

TVM trains in the latent space of the Stable Diffusion VAE ``stabilityai/sd-vae-ft-ema``
(32x32x4 latents at 256 px, 64x64x4 at 512 px). The images are encoded **once**; what is stored
is the VAE's Gaussian posterior, mean and standard deviation, so that every training step can
draw a fresh latent z = mean + std * eps ([P] section 6), which is then normalized per channel,
(z - raw_mean) / raw_std.

Encoding (resumable: finished shards are skipped; several GPUs with torchrun, rank r encodes
shards r, r + world, r + 2 world, ...)::

    python -m tvmlib.data.latents --folder IMAGENET/train --out data/latents/imagenet256 \\
        --resolution 256 [--vae stabilityai/sd-vae-ft-ema | /local/sd-vae-ft-ema] \\
        [--batch 64] [--shard-size 10000] [--workers 8]
    torchrun --nproc_per_node=8 -m tvmlib.data.latents --folder ... --out ... --resolution 256

Folder layout of ``--out``:

- ``meta.json``: resolution, VAE, class names, image count, shard size, storage dtype; after
  the last shard also ``"complete": true`` and ``"stats"``, the per-channel mean and std of z
  over the whole set (computed exactly from the stored moments, not from samples).
- ``shard_00000.pt``, ...: ``{"mean", "std"}`` (n, 4, h, w) in the storage dtype (float16 by
  default: 21 GB for ImageNet-256 instead of 42 GB), ``"labels"`` (n,) int64, ``"index"`` (n,)
  positions in the ImageFolder, ``"moments"`` (3, C) float64 per-channel sums of mean,
  mean^2 + std^2 and the pixel count. Each is written to ``*.tmp`` and renamed (atomic), and
  loaded lazily and memory-mapped (``torch.load(mmap=True)``) by :class:`LatentSource`.

Normalization (``LatentSource(norm=...)``, config key ``data.latent_norm``):

- ``"paper"``: TVM's stats for SD-VAE ft-EMA latents, :data:`PAPER_STATS` (256 or 512 px).
- ``"shards"``: the stats in ``meta.json`` (any VAE, any resolution), standardizing each channel
  to mean 0, std 1.
- ``"none"``: z as it is.
- ``"auto"`` (default): ``"paper"`` when the VAE name or folder name is ``sd-vae-ft-ema`` and the
  resolution is 256 or 512, else ``"shards"``. The choice is stored on the source (``.norm``).

Images are prepared by :func:`tvmlib.data.images.image_folder` (resize the shorter side, then
center crop, then [-1, 1]); ADM/EDM resize with a box filter first, a small difference.
The raw VAE latents are stored (no ``scaling_factor``): decoding is ``vae.decode(z_raw)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from tvmlib.data.images import TensorSource
from tvmlib.train import atomic_save, atomic_write_text, quiet

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"
FORMAT_VERSION = 1
NORMS = ("auto", "paper", "shards", "none")
# [P] section 6 / App. F (docs/tvm.md section 6): per-channel raw mean and std of SD-VAE ft-EMA
# posterior samples of ImageNet, by resolution.
PAPER_STATS = {
    256: ([0.865, -0.278, 0.216, 0.374], [4.855, 5.319, 3.937, 3.987]),
    512: ([1.56, -0.695, 0.483, 0.729], [5.27, 5.91, 4.21, 4.31]),
}
STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.pt"


# ---- the VAE -------------------------------------------------------------------------------

def load_vae(name_or_path: str, device: str | torch.device = "cpu"):
    """``diffusers.AutoencoderKL.from_pretrained(name_or_path)`` in eval mode, gradients off.

    A local folder (``save_pretrained`` output, or a downloaded hub snapshot) works offline;
    a hub name needs internet. Raises ImportError without diffusers, FileNotFoundError for a
    missing local folder and RuntimeError (naming the fix) when the weights cannot be loaded.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ImportError("latents need the SD-VAE from diffusers, which is not installed: "
                          "pip install '.[imagenet]' (or pip install diffusers)") from err
    name = str(name_or_path)
    local = Path(name).expanduser()
    if (local.is_absolute() or name.startswith(".")) and not local.is_dir():
        raise FileNotFoundError(f"VAE folder {local} does not exist (--vae / eval.vae); it must "
                                "hold config.json and the weights (AutoencoderKL.save_pretrained "
                                f"or `huggingface-cli download {DEFAULT_VAE} --local-dir PATH`)")
    try:
        vae = AutoencoderKL.from_pretrained(str(local) if local.is_dir() else name,
                                            low_cpu_mem_usage=False)
    except Exception as err:  # hub, file and format errors all get the same advice
        raise RuntimeError(
            f"could not load the VAE {name!r} ({type(err).__name__}: {err}). Pass a "
            "local folder with config.json and the weights (on a machine with internet: "
            f"`huggingface-cli download {DEFAULT_VAE} --local-dir PATH`), or a hub name when "
            "this machine has internet.") from err
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_posterior(vae, images: Tensor) -> tuple[Tensor, Tensor]:
    """Posterior mean and std (B, C, h, w), float32, of images (B, 3, H, W) in [-1, 1]."""
    param = next(vae.parameters())
    post = vae.encode(images.to(param.device, param.dtype)).latent_dist
    return post.mean.float(), post.std.float()


# ---- encoding ------------------------------------------------------------------------------

def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def read_meta(out: str | Path) -> dict:
    path = Path(out) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {out} is not a latents folder. Make one with\n  python -m "
            "tvmlib.data.latents --folder IMAGENET/train --out FOLDER --resolution 256")
    return json.loads(path.read_text())


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
    rank, world = _world()
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
    _barrier()
    todo = [i for i in range(rank, meta["num_shards"], world) if not (out / shard_name(i)).exists()]
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
            means, stds, labels = [], [], []
            for x, y in loader:
                mean, std = encode_posterior(model, x)
                means.append(mean.cpu())
                stds.append(std.cpu())
                labels.append(y)
                bar.update(len(x))
            write_shard(out / shard_name(i), torch.cat(means), torch.cat(stds),
                        torch.cat(labels), index, dtype)
        bar.close()
    _barrier()
    if rank == 0:
        meta = finalize(out)
    _barrier()
    return read_meta(out)


# ---- normalization -------------------------------------------------------------------------

def resolve_norm(meta: dict, norm: str) -> tuple[str, Tensor, Tensor]:
    """(name, mean (C,), std (C,)) of the per-channel normalization ``norm`` for a latents
    folder described by ``meta``; see the module docstring for the choices."""
    if norm not in NORMS:
        raise ValueError(f"latent normalization {norm!r} unknown; valid: {', '.join(NORMS)}")
    res = meta["resolution"]
    if norm == "auto":
        is_sd_vae = Path(str(meta["vae"]).rstrip("/")).name == "sd-vae-ft-ema"
        norm = "paper" if is_sd_vae and res in PAPER_STATS else "shards"
    if norm == "paper":
        if res not in PAPER_STATS:
            raise ValueError(f"the paper's latent stats exist for {list(PAPER_STATS)} px, not "
                             f"{res}; use latent_norm 'shards'")
        mu, sd = PAPER_STATS[res]
    elif norm == "shards":
        if "stats" not in meta:
            raise ValueError("the latents folder has no stats yet (encoding not finished); "
                             "run python -m tvmlib.data.latents again to finish it")
        mu, sd = meta["stats"]["mean"], meta["stats"]["std"]
    else:
        C = meta["latent_shape"][0]
        mu, sd = [0.0] * C, [1.0] * C
    return norm, torch.tensor(mu, dtype=torch.float32), torch.tensor(sd, dtype=torch.float32)


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    return v.to(x.device, x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


def normalize(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(z - mean) / std per channel; z (B, C, h, w), mean and std (C,)."""
    return (z - _per_channel(mean, z)) / _per_channel(std, z)


def denormalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Inverse of :func:`normalize`: raw VAE latents from model-space latents."""
    return x * _per_channel(std, x) + _per_channel(mean, x)


# ---- the training stream -------------------------------------------------------------------

class LatentSource:
    """Replayable batches of normalized posterior samples from a latents folder.

    ``next_batch()`` returns (x (B, C, h, w) float32, y (B,) int64 or None) with
    x = normalize(mean + std * eps). Indices follow :class:`TensorSource`'s stream (one random
    permutation per epoch); eps for the k-th batch comes from a generator seeded by (seed, k),
    so ``state_dict()`` / ``load_state_dict()`` replay the very same batches. Shards are opened
    lazily and memory-mapped; only the requested rows are read.
    """

    def __init__(self, path: str | Path, batch_size: int, seed: int = 0, labels: bool = True,
                 norm: str = "auto"):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        if not self.meta.get("complete"):
            raise ValueError(f"{self.path} is not complete (some shards are missing); run "
                             "python -m tvmlib.data.latents again with the same arguments")
        self.norm, self.mean, self.std = resolve_norm(self.meta, norm)
        self.n, self.shard_size = self.meta["num_images"], self.meta["shard_size"]
        self.num_classes = len(self.meta["classes"])
        self.labels, self.seed, self.batches = labels, seed, 0
        self._shards: dict[int, dict] = {}
        self.y = torch.cat([self._shard(i)["labels"] for i in range(self.meta["num_shards"])])
        if len(self.y) != self.n:
            raise ValueError(f"{self.path}: meta.json says {self.n} images, shards hold "
                             f"{len(self.y)}")
        self.latent_shape = tuple(self._shard(0)["mean"].shape[1:])  # (C, h, w)
        self.stream = TensorSource(torch.arange(self.n), None, batch_size, seed, labels=False)

    def __len__(self) -> int:
        return self.n

    def _shard(self, i: int) -> dict:
        if i not in self._shards:
            self._shards[i] = torch.load(self.path / shard_name(i), mmap=True, weights_only=True)
        return self._shards[i]

    def posterior(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior (mean, std), each (B, C, h, w) float32, of the images at ``idx`` (B,)."""
        mean = torch.empty(len(idx), *self.latent_shape)
        std = torch.empty_like(mean)
        shard = idx // self.shard_size
        for i in shard.unique().tolist():
            rows = (shard == i).nonzero().squeeze(1)
            local = idx[rows] - i * self.shard_size
            s = self._shard(i)
            mean[rows], std[rows] = s["mean"][local].float(), s["std"][local].float()
        return mean, std

    def next_batch(self) -> tuple[Tensor, Tensor | None]:
        idx = self.stream.next_indices()  # (B,)
        mean, std = self.posterior(idx)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.batches) % 2**63)
        self.batches += 1
        z = mean + std * torch.randn(mean.shape, generator=g)  # a posterior sample ([P] sec. 6)
        return normalize(z, self.mean, self.std), (self.y[idx] if self.labels else None)

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "batches": self.batches, "seed": self.seed,
                "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"state was saved for {state['n']} latents, {self.path} has "
                             f"{self.n}")
        self.stream.load_state_dict(state["stream"])
        self.batches, self.seed = state["batches"], state["seed"]


# ---- CLI -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m tvmlib.data.latents", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    from tvmlib.runs import init_distributed

    rank, _, device = init_distributed()
    try:
        meta = encode_folder(args.folder, args.out, args.resolution, args.vae, args.batch,
                             args.shard_size, args.workers, args.dtype, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(f"[tvmlib.data.latents] {args.out}: {meta['num_images']} images in "
              f"{meta['num_shards']} shards; z stats {meta['stats']}", flush=True)
    return meta


if __name__ == "__main__":
    main()
