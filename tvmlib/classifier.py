"""A small CNN classifier for 32x32 grayscale images (MNIST, Fashion-MNIST), whose penultimate
features feed the project's Frechet distance (``tvmlib.metrics.classifier_fd``).

The weights are trained here, on a CPU, and committed under ``data/checkpoints/`` with a
``manifest.json`` of their sha256 (``load_classifier`` checks it). Regenerate with

    python -m tvmlib.classifier --dataset mnist --epochs 3 \\
        --out data/checkpoints/classifier_mnist.pt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvmlib.data.images import MNIST_LIKE, TensorSource, load_mnist
from tvmlib.paths import repo_root
from tvmlib.provenance import provenance, write_results
from tvmlib.train import TrainConfig, atomic_save, atomic_write_text, train

DEFAULT_EPOCHS = {"mnist": 3, "fashion-mnist": 6}


class SmallCNN(nn.Module):
    """Three conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool): 32 -> 16 -> 8 -> 4 pixels,
    then a linear layer to ``feature_dim`` penultimate features and a linear head.

    x (B, 1, 32, 32) in [-1, 1] -> logits (B, num_classes). ``features(x)`` returns the
    penultimate features (B, feature_dim), taken before their ReLU.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), feature_dim: int = 128,
                 num_classes: int = 10, resolution: int = 32):
        super().__init__()
        self.config = {"channels": list(channels), "feature_dim": feature_dim,
                       "num_classes": num_classes, "resolution": resolution}
        blocks, c_in = [], 1
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*blocks)
        side = resolution // 2 ** len(channels)
        self.embed = nn.Linear(c_in * side * side, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (B, feature_dim) of images x (B, 1, H, W)."""
        return self.embed(self.body(x).flatten(1))  # (B, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.features(x)))  # (B, num_classes)


def num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Translate each image of x (B, C, H, W) by an integer shift in [-max_shift, max_shift]
    along each axis, filling the uncovered border with -1 (black)."""
    B, C, H, W = x.shape
    m = max_shift
    xp = F.pad(x, (m, m, m, m), value=-1.0)  # (B, C, H + 2m, W + 2m)
    d = torch.randint(0, 2 * m + 1, (2, B), generator=generator).to(x.device)
    rows = d[0, :, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = d[1, :, None] + torch.arange(W, device=x.device)  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class ClassifierLoss:
    """Cross-entropy on randomly shifted images: ``loss(net, (x, y)) -> (loss, logs)``."""

    def __init__(self, max_shift: int = 2):
        self.max_shift = max_shift

    def __call__(self, net: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        logits = net(random_shift(x, self.max_shift) if self.max_shift else x)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"loss": loss.detach(), "train_acc": acc.detach()}


@torch.no_grad()
def predict(net: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Predicted labels (N,) for images x (N, 1, 32, 32), in eval mode, on x's device."""
    net.eval()
    return torch.cat([net(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def accuracy(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of correctly classified images (exact: correct count / N)."""
    return int((predict(net, x, batch_size) == y.to(x.device)).sum()) / len(y)


# ---- committed weights: paths, manifest, loading ------------------------------------------

def checkpoints_dir() -> Path:
    return repo_root() / "data" / "checkpoints"


def regenerate_command(name: str, epochs: int | None = None, out: str | Path | None = None) -> str:
    epochs = DEFAULT_EPOCHS.get(name, 3) if epochs is None else epochs
    out = Path(out or f"data/checkpoints/classifier_{name}.pt")
    if out.is_absolute() and out.is_relative_to(repo_root()):
        out = out.relative_to(repo_root())
    return f"python -m tvmlib.classifier --dataset {name} --epochs {epochs} --out {out}"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_verified(path: Path, manifest: dict, manifest_name: str, what: str, fix: str,
                  build) -> nn.Module:
    """Check ``path`` against the sha256 that ``manifest`` records for it, then load it with
    ``build(ckpt) -> nn.Module``. Missing file or entry: FileNotFoundError; wrong hash or an
    unreadable file: RuntimeError; every message ends with ``fix`` (how to regenerate it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is missing. {fix}")
    expected = manifest.get(path.name, {}).get("sha256")
    if expected is None:
        raise FileNotFoundError(f"{path.parent / manifest_name} has no sha256 for {path.name}. "
                                f"{fix}")
    actual = sha256_file(path)
    if actual != expected:
        raise RuntimeError(f"{what} {path} is corrupt or stale: sha256 {actual} != {expected} "
                           f"recorded in {manifest_name}. {fix}")
    try:
        return build(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # any unreadable or mismatched file gets the same advice
        raise RuntimeError(f"could not load {what} {path}: {err}. {fix}") from err


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_checkpoints_readme(folder: Path) -> None:
    """Rewrite ``<folder>/README.md`` from ``manifest.json`` (no number typed by hand)."""
    rows = [f"| {fn} | {e['bytes']} | {e['sha256']} | {e['test_accuracy']:.4f} | "
            f"`{e['command']}` |" for fn, e in sorted(read_manifest(folder).items())]
    text = "\n".join([
        "# data/checkpoints: classifier weights for the Frechet distance",
        "",
        "Small CNNs (`tvmlib.classifier.SmallCNN`) trained on a CPU by `python -m "
        "tvmlib.classifier`.",
        "Their penultimate features give `tvmlib.metrics.classifier_fd`. `load_classifier` "
        "checks each file",
        "against the sha256 in `manifest.json`. This README is written by the training CLI "
        "from that manifest;",
        "the full provenance (commit, device, versions, train time) is in "
        "`figures/classifier_<name>.json`.",
        "",
        "| file | bytes | sha256 | test accuracy (10k test set) | command |",
        "|---|---:|---|---:|---|",
        *rows,
        "",
    ])
    atomic_write_text(text, folder / "README.md")


def load_classifier(name: str, folder: str | Path | None = None,
                    device: str | torch.device = "cpu") -> SmallCNN:
    """The committed classifier for data set ``name`` ("mnist" or "fashion-mnist"), in eval
    mode with gradients off. Raises FileNotFoundError (missing file or manifest entry) or
    RuntimeError (sha256 mismatch, unreadable file), each naming the command that regenerates
    the weights."""
    if name not in MNIST_LIKE:
        raise ValueError(f"no classifier for {name!r}; valid names: {', '.join(MNIST_LIKE)}")
    folder = Path(folder) if folder is not None else checkpoints_dir()
    path = folder / f"classifier_{name}.pt"
    fix = f"Regenerate it with:\n  {regenerate_command(name, out=path)}"

    def build(ckpt: dict) -> SmallCNN:
        net = SmallCNN(**ckpt["config"])
        net.load_state_dict(ckpt["state_dict"])
        return net

    net = load_verified(path, read_manifest(folder), "manifest.json", "classifier weights",
                        fix, build)
    return net.to(device).eval().requires_grad_(False)


# ---- training CLI ---------------------------------------------------------------------------

def train_classifier(name: str, epochs: int, batch_size: int = 128, lr: float = 2e-3,
                     seed: int = 0, max_shift: int = 2, channels: tuple[int, ...] = (16, 32, 64),
                     feature_dim: int = 128) -> tuple[SmallCNN, dict]:
    """Train on the training split with Adam (cosine learning-rate decay) and random shifts;
    returns the EMA network (eval mode) and a results dict with its test accuracy."""
    x, y = load_mnist(name, "train")
    x_test, y_test = load_mnist(name, "test")
    torch.manual_seed(seed)
    net = SmallCNN(channels, feature_dim)
    steps = math.ceil(epochs * len(x) / batch_size)
    cfg = TrainConfig(steps=steps, lr=lr, grad_clip=None, ema_decay=0.995, log_every=100,
                      seed=seed)

    def cosine_lr(state, logs) -> None:  # lr for the next step
        for group in state.opt.param_groups:
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * state.step / steps))

    t0 = time.perf_counter()
    state = train(net, ClassifierLoss(max_shift), TensorSource(x, y, batch_size, seed), cfg,
                  callback=cosine_lr)
    train_seconds = time.perf_counter() - t0
    ema = state.ema.module.eval()
    results = {
        "dataset": name,
        "test_accuracy": accuracy(ema, x_test, y_test),
        "test_accuracy_raw_weights": accuracy(state.net, x_test, y_test),
        "epochs": epochs, "steps": steps, "batch_size": batch_size, "lr": lr,
        "max_shift": max_shift, "ema_decay": cfg.ema_decay,
        "params": num_params(ema), "config": ema.config,
        "train_seconds": train_seconds,
        "history": state.history,
    }
    return ema, results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=list(MNIST_LIKE), required=True)
    p.add_argument("--epochs", type=float, default=None,
                   help=f"default: {DEFAULT_EPOCHS}")
    p.add_argument("--out", default=None, help="weights file (default: "
                   "data/checkpoints/classifier_<dataset>.pt)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = args.dataset
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[name]
    epochs = int(epochs) if float(epochs).is_integer() else epochs
    out = Path(args.out) if args.out else checkpoints_dir() / f"classifier_{name}.pt"
    command = "python -m tvmlib.classifier " + " ".join(sys.argv[1:] if argv is None else argv)

    net, results = train_classifier(name, epochs, args.batch_size, args.lr, args.seed)
    atomic_save({"config": net.config, "state_dict": net.state_dict(), "dataset": name,
                 "test_accuracy": results["test_accuracy"]}, out)
    entry = {"sha256": sha256_file(out), "bytes": out.stat().st_size,
             "test_accuracy": results["test_accuracy"], "command": command}
    manifest = {**read_manifest(out.parent), out.name: entry}
    atomic_write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                      out.parent / "manifest.json")
    write_checkpoints_readme(out.parent)
    results["weights"] = {"file": out.name, **entry}
    path = write_results(f"classifier_{name}.json", results,
                         provenance(command=command, seed=args.seed))
    print(f"{name}: test accuracy {results['test_accuracy']:.4f} "
          f"({results['train_seconds']:.0f} s); weights {out} ({entry['bytes']} bytes), "
          f"results {path}")


if __name__ == "__main__":
    main()
