"""ImageNet latents for TVM ([P] section 6, App. F; docs/tvm.md section 6).

TVM trains in the latent space of the Stable Diffusion VAE ``stabilityai/sd-vae-ft-ema``
(32x32x4 latents at 256 px, 64x64x4 at 512 px). The images are encoded **once**; what is stored
is the VAE's Gaussian posterior, mean and standard deviation, so that every training step can
draw a fresh latent z = mean + std * eps ([P] section 6), which is then normalized per channel,
(z - raw_mean) / raw_std.

Encoding is the application ``python -m tvmlib.apps.latents`` (resumable, torchrun-parallel).

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

import json
from pathlib import Path

import torch
from torch import Tensor

from tvmlib.data.images import TensorSource

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


def read_meta(out: str | Path) -> dict:
    path = Path(out) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {out} is not a latents folder. Make one with\n  python -m "
            "tvmlib.apps.latents --folder IMAGENET/train --out FOLDER --resolution 256")
    return json.loads(path.read_text())


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
                             "run python -m tvmlib.apps.latents again to finish it")
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
                             "python -m tvmlib.apps.latents again with the same arguments")
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
