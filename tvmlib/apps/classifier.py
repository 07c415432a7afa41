"""Train the small CNN classifiers whose features give the project's Frechet distance, on a
CPU, and commit them under ``data/checkpoints/`` with their sha256 manifest:

    python -m tvmlib.apps.classifier --dataset mnist --epochs 3 \\
        --out data/checkpoints/classifier_mnist.pt
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvmlib.apps import cli
from tvmlib.data.images import MNIST_LIKE, TensorSource, load_mnist
from tvmlib.evaluation.classifier import (
    DEFAULT_EPOCHS,
    SmallCNN,
    accuracy,
    num_params,
    read_manifest,
)
from tvmlib.training.loop import TrainConfig, train
from tvmlib.training.weights import checkpoints_dir, sha256_file
from tvmlib.utils.atomic import atomic_save, atomic_write_text
from tvmlib.utils.provenance import provenance, write_results


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


def write_checkpoints_readme(folder: Path) -> None:
    """Rewrite ``<folder>/README.md`` from ``manifest.json`` (no number typed by hand)."""
    rows = [f"| {fn} | {e['bytes']} | {e['sha256']} | {e['test_accuracy']:.4f} | "
            f"`{e['command']}` |" for fn, e in sorted(read_manifest(folder).items())]
    text = "\n".join([
        "# data/checkpoints: classifier weights for the Frechet distance",
        "",
        "Small CNNs (`tvmlib.evaluation.classifier.SmallCNN`) trained on a CPU by "
        "`python -m tvmlib.apps.classifier`.",
        "Their penultimate features give `tvmlib.evaluation.classifier.classifier_fd`; "
        "`load_classifier` checks each file",
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
    p = cli.Parser(description=__doc__.split("\n\n")[0])
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
    command = "python -m tvmlib.apps.classifier " + " ".join(sys.argv[1:] if argv is None else argv)

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
    cli.run(main)
