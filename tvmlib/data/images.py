"""Image data sets: MNIST / Fashion-MNIST from IDX files, ImageNet-style folders, and a
replayable in-memory batch stream for ``tvmlib.training.loop``.

Every image is a float32 tensor in [-1, 1] (the data end t = 0 of the path
x_t = (1 - t) x0 + t eps). MNIST-like images are zero-padded from 28x28 to 32x32 (2 pixels on
each side, with the value of a black pixel, -1) so that a DiT with patch size 2 or 4 tiles them.

Where the IDX files are looked for (first hit wins), for ``name`` in {"mnist", "fashion-mnist"}:
``<dir>/<name>/`` and then torchvision's layout ``<dir>/MNIST/raw/`` or
``<dir>/FashionMNIST/raw/``, for each ``<dir>`` in ``tvmlib.utils.paths.data_dirs()``
(``$TVMLIB_DATA``, then the repository's ``data/``); in each folder the canonical file name
with ``.gz`` first, then the raw file. See ``data/README.md``.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tvmlib.utils.paths import data_dirs, repo_root

# name -> torchvision class name (also its folder name under the download root)
MNIST_LIKE = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
# split -> (images file, labels file), canonical names without ".gz"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
PAD = 2  # 28 + 2 * PAD = 32
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (gzip-compressed if the name ends in ``.gz``) into a uint8 array.

    Header: 2 zero bytes, a type byte (0x08 = uint8), the number of dimensions, then one
    big-endian uint32 per dimension; the payload follows in row-major order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (header bytes {data[:4]!r}; expected "
                         "00 00 08 <ndim>)")
    ndim = data[3]
    offset = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes) but "
                         f"the payload has {len(data) - offset} bytes; the file is truncated or "
                         "corrupt (check it against data/README.md's checksums)")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def candidate_dirs(name: str) -> list[Path]:
    """Folders searched for data set ``name``, in order."""
    if name not in MNIST_LIKE:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(MNIST_LIKE)}")
    return [d / sub for d in data_dirs() for sub in (name, f"{MNIST_LIKE[name]}/raw")]


def find_idx(name: str, split: str) -> tuple[Path, Path] | None:
    """(images file, labels file) of the first folder holding both, or None."""
    if split not in IDX_FILES:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(IDX_FILES)}")

    def first(folder: Path, stem: str) -> Path | None:
        return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)

    for folder in candidate_dirs(name):
        images, labels = (first(folder, stem) for stem in IDX_FILES[split])
        if images is not None and labels is not None:
            return images, labels
    return None


@functools.lru_cache(maxsize=8)
def _parse_cached(images: str, labels: str, stamp: tuple) -> tuple[Tensor, Tensor]:
    """Padded uint8 images (N, 1, 32, 32) and int64 labels (N,); cached per file version."""
    x = read_idx(images)  # (N, 28, 28)
    y = read_idx(labels)  # (N,)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{images} holds shape {x.shape} and {labels} shape {y.shape}; "
                         "expected (N, 28, 28) images and (N,) labels")
    x = F.pad(torch.from_numpy(x.copy())[:, None], (PAD, PAD, PAD, PAD), value=0)
    return x, torch.from_numpy(y.astype(np.int64))


def load_mnist(name: str = "mnist", split: str = "train",
               download: bool = False) -> tuple[Tensor, Tensor]:
    """Load MNIST or Fashion-MNIST: (x (N, 1, 32, 32) float32 in [-1, 1], y (N,) int64).

    x = u8 / 127.5 - 1, so a black pixel is exactly -1 and a white one exactly 1; the 28x28
    images are padded to 32x32 with -1. N = 60000 (train) or 10000 (test). The parsed files
    are cached in memory (as uint8); each call returns fresh tensors that the caller may modify.
    ``download=True`` fetches missing files with torchvision into ``data/`` (needs internet).
    Raises FileNotFoundError naming every folder searched.
    """
    found = find_idx(name, split)
    if found is None and download:
        import torchvision

        dataset = getattr(torchvision.datasets, MNIST_LIKE[name])  # fetched into data/
        dataset(str(repo_root() / "data"), train=(split == "train"), download=True)
        found = find_idx(name, split)
    if found is None:
        searched = "\n  ".join(str(d) for d in candidate_dirs(name))
        stems = " and ".join(f"{s}[.gz]" for s in IDX_FILES[split])
        raise FileNotFoundError(
            f"{name} {split} split not found: no folder holds {stems}. Searched, in order:\n  "
            f"{searched}\nSee data/README.md: copy the files from ../shared/data, set "
            f"TVMLIB_DATA to a folder holding {name}/, or call load_mnist(..., download=True) "
            "with internet access.")
    images, labels = found
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in (images, labels))
    x_u8, y = _parse_cached(str(images), str(labels), stamp)
    x = x_u8.to(torch.float32).div_(127.5).sub_(1.0)  # (N, 1, 32, 32)
    return x, y.clone()


def image_folder(root: str | Path, resolution: int):
    """``torchvision.datasets.ImageFolder`` over ``root/<class>/<image>``: each image is
    resized (shorter side) and center-cropped to ``resolution`` x ``resolution``, converted to
    RGB and scaled to [-1, 1], giving (3, resolution, resolution) float32 tensors.
    """
    from torchvision import datasets, transforms

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist; expected one sub-folder per class holding "
            "the images (ImageNet: train/n01440764/*.JPEG, ...). See data/README.md.")
    if resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")
    tf = transforms.Compose([
        transforms.Resize(resolution),
        transforms.CenterCrop(resolution),
        transforms.ToTensor(),  # [0, 1]
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # (u - 0.5) / 0.5: [-1, 1]
    ])
    return datasets.ImageFolder(str(root), transform=tf)


class TensorSource:
    """An endless, replayable stream of batches from in-memory tensors for the training loop.

    The index stream is a concatenation of random permutations of range(N), one per epoch,
    drawn from the source's own ``torch.Generator``; batches are consecutive chunks of it (a
    batch may straddle two epochs), so every index appears exactly once per epoch.
    ``next_batch()`` returns (x (B, ...), y (B,) or None); ``labels=False`` drops labels for an
    unconditional model. ``state_dict()`` / ``load_state_dict()`` restore the exact position.
    """

    def __init__(self, x: Tensor, y: Tensor | None, batch_size: int, seed: int = 0,
                 labels: bool = True):
        if y is not None and len(y) != len(x):
            raise ValueError(f"x has {len(x)} items but y has {len(y)}")
        if labels and y is None:
            raise ValueError("labels=True needs y; pass labels=False for an unlabeled stream")
        if not 0 < batch_size:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(x) == 0:
            raise ValueError("x is empty")
        self.x, self.y, self.batch_size, self.labels = x, y, batch_size, labels
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = -1
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch_start = self.generator.get_state()  # replays this epoch's permutation
        self.perm = torch.randperm(len(self.x), generator=self.generator)
        self.pos, self.epoch = 0, self.epoch + 1

    def next_indices(self) -> Tensor:
        """The next ``batch_size`` indices of the stream (B,) int64."""
        parts, need = [], self.batch_size
        while need:
            if self.pos == len(self.perm):
                self._new_epoch()
            take = self.perm[self.pos:self.pos + need]
            parts.append(take)
            self.pos += len(take)
            need -= len(take)
        return torch.cat(parts)

    def next_batch(self) -> tuple[Tensor, Tensor | None]:
        idx = self.next_indices().to(self.x.device)
        y = self.y[idx.to(self.y.device)] if self.labels else None
        return self.x[idx], y

    def state_dict(self) -> dict:
        return {"epoch_start": self._epoch_start, "pos": self.pos, "epoch": self.epoch,
                "n": len(self.x)}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != len(self.x):
            raise ValueError(f"state was saved for {state['n']} items, this source has "
                             f"{len(self.x)}")
        self.generator.set_state(state["epoch_start"])
        self.epoch = state["epoch"] - 1
        self._new_epoch()
        self.pos = state["pos"]
