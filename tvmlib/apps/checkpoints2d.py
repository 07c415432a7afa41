"""Small committed 2D models (FM, MeanFlow, TVM) for the sampling explorer (notebook 07).

Each model is an ``MLP2D`` trained on a CPU with notebook 02's settings (hidden 128, depth 3,
time_scale 1, batch 256, lr 2e-3, evaluation EMA 0.995, 1500 steps) and saved as
``data/checkpoints/2d_<method>_<dataset>.pt`` together with its constructor kwargs. Their sha256,
size, command and W2 go to ``data/checkpoints/manifest_2d.json``; ``load_2d`` checks the sha256.
The section ``data/checkpoints/README_2d.md`` is written from that manifest, and the full
provenance (commit, device, versions, loss history) goes to
``figures/checkpoints2d_<method>_<dataset>.json``. Regenerate with

    python -m tvmlib.checkpoints2d                      # all models, about 1-2 min each
    python -m tvmlib.checkpoints2d --only tvm_checkerboard

The class-conditional TVM on ``8gaussians`` is trained with beta = 1/w drawn uniformly for
w in [1, 3] (``TVMLoss(cfg_scale=(1, 3))``), so the explorer's guidance slider is meaningful
for it: guidance is a network input and costs no extra NFE. FM on ``8gaussians`` uses
classifier-free guidance at sampling time (2 NFE per step).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from tvmlib.evaluation.classifier import checkpoints_dir, load_verified, sha256_file
from tvmlib.data.toy2d import ToySource, num_classes, sample_toy2d
from tvmlib.core.losses import FMLoss, MeanFlowLoss, TVMLoss
from tvmlib.metrics import w2
from tvmlib.nn import MLP2D
from tvmlib.utils.paths import repo_root
from tvmlib.utils.provenance import provenance, write_results
from tvmlib.core.solvers import Samples, sample_flowmap, sample_ode
from tvmlib.training.loop import TrainConfig, atomic_save, atomic_write_text, train

METHODS = ("fm", "meanflow", "tvm")
FLOW_MAPS = ("meanflow", "tvm")  # sampled by k-step jumps; FM integrates its velocity (ODE)
# (method, dataset) pairs that are trained and committed.
MODELS = (("fm", "checkerboard"), ("meanflow", "checkerboard"), ("tvm", "checkerboard"),
          ("fm", "8gaussians"), ("tvm", "8gaussians"))
TVM_GUIDANCE_RANGE = (1.0, 3.0)  # w range the conditional TVM is trained on
FM_CFG_SCALE = 1.5  # default CFG scale for FM on 8gaussians (notebook 02)
MANIFEST = "manifest_2d.json"


@dataclass
class Settings2D:
    """Notebook 02's default-scale training settings."""

    steps: int = 1500
    batch_size: int = 256
    hidden: int = 128
    depth: int = 3
    time_scale: float = 1.0
    lr: float = 2e-3
    ema_decay: float = 0.995
    seed: int = 0
    n_eval: int = 1000  # samples for the W2 stored in the manifest


def model_name(method: str, dataset: str) -> str:
    if (method, dataset) not in MODELS:
        valid = ", ".join(f"{m}_{d}" for m, d in MODELS)
        raise ValueError(f"no committed 2D model {method!r} on {dataset!r}; valid: {valid}")
    return f"{method}_{dataset}"


def checkpoint_path(method: str, dataset: str, folder: str | Path | None = None) -> Path:
    folder = Path(folder) if folder is not None else checkpoints_dir()
    return folder / f"2d_{model_name(method, dataset)}.pt"


def regenerate_command(method: str, dataset: str) -> str:
    return f"python -m tvmlib.checkpoints2d --only {model_name(method, dataset)}"


def default_guidance(method: str, dataset: str) -> float | None:
    """The guidance scale w used when none is given: None for unconditional models."""
    if not num_classes(dataset):
        return None
    return FM_CFG_SCALE if method == "fm" else 1.5


# ---- sampling: one entry point for every method ---------------------------------------------

def sample_2d(method: str, net: nn.Module, noise: Tensor, steps: int, y: Tensor | None = None,
              guidance: float | None = None, return_trajectory: bool = False) -> Samples:
    """``steps``-step samples of a committed model from ``noise`` (B, 2), with NFE counted.

    * fm: Euler on u(x, t) = F(x, t, t); with labels and guidance w != 1, classifier-free
      guidance u_null + w (u_y - u_null) at 2 NFE per step.
    * meanflow: k-step flow map x <- x + (s - t) F(x, t, s)  (TVM Eq. 4), 1 NFE per jump.
    * tvm: the same, scaled parameterization f = (s - t) w F(x, t, s, y, w) (TVM Sec. 4), with
      w a network input (folded guidance, 1 NFE per jump).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if y is None and guidance is not None:
        raise ValueError("guidance needs class labels y (a class-conditional model)")
    if method == "fm":
        cfg = guidance if guidance is not None and guidance != 1.0 else None
        return sample_ode(net, noise, steps=steps, y=y, cfg_scale=cfg,
                          return_trajectory=return_trajectory)
    if method == "meanflow":
        return sample_flowmap(net, noise, steps=steps, y=y, return_trajectory=return_trajectory)
    return sample_flowmap(net, noise, steps=steps, y=y, w=guidance, scale_param=True,
                          return_trajectory=return_trajectory)


def eval_set(dataset: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor | None, Tensor]:
    """(noise (n, 2), labels (n,) or None, reference data (n, 2)) for W2 evaluation.

    With labels, they are uniform and the reference is class-matched (row i of the reference
    has class y[i]), as in notebook 02."""
    g = torch.Generator().manual_seed(seed + 10)
    noise = torch.randn(n, 2, generator=g)
    K = num_classes(dataset)
    if not K:
        return noise, None, sample_toy2d(dataset, n, g)[0]
    y = torch.randint(0, K, (n,), generator=g)
    return noise, y, class_matched_data(dataset, y, g)


def class_matched_data(dataset: str, y: Tensor, generator: torch.Generator) -> Tensor:
    """Data points (len(y), 2) whose row i belongs to class y[i]."""
    pool, y_pool = sample_toy2d(dataset, 16 * len(y) + 64, generator)
    out = torch.empty(len(y), 2)
    for c in y.unique().tolist():
        idx, cand = (y == c).nonzero().squeeze(1), pool[y_pool == c]
        if len(cand) < len(idx):
            raise RuntimeError(f"class {c}: pool of {len(cand)} too small for {len(idx)}")
        out[idx] = cand[: len(idx)]
    return out


# ---- training --------------------------------------------------------------------------------

def model_kwargs(dataset: str, s: Settings2D) -> dict:
    K = num_classes(dataset)
    return {"dim": 2, "hidden": s.hidden, "depth": s.depth, "time_scale": s.time_scale,
            "num_classes": K, "guidance": K > 0}


def make_loss(method: str, net: MLP2D, n_classes: int):
    if method == "fm":
        return FMLoss(label_dropout=0.1 if n_classes else 0.0, num_classes=n_classes)
    if method == "meanflow":
        return MeanFlowLoss(num_classes=n_classes, label_dropout=0.1,
                            omega=FM_CFG_SCALE if n_classes else None)
    return TVMLoss(net, num_classes=n_classes, label_dropout=0.1,
                   cfg_scale=TVM_GUIDANCE_RANGE if n_classes else None)


def train_2d(method: str, dataset: str, s: Settings2D) -> tuple[MLP2D, dict]:
    """Train one model; returns its EMA network (eval mode) and a small results dict."""
    kwargs = model_kwargs(dataset, s)
    torch.manual_seed(s.seed)
    net = MLP2D(**kwargs)
    K = kwargs["num_classes"]
    source = ToySource(dataset, s.batch_size, seed=s.seed, labels=K > 0)
    cfg = TrainConfig(steps=s.steps, lr=s.lr, ema_decay=s.ema_decay, seed=s.seed,
                      log_every=max(1, s.steps // 10))
    t0 = time.perf_counter()
    state = train(net, make_loss(method, net, K), source, cfg)
    seconds = time.perf_counter() - t0
    ema = state.ema.module.eval().requires_grad_(False)
    noise, y, ref = eval_set(dataset, s.n_eval, s.seed)
    steps = 64 if method == "fm" else 1
    out = sample_2d(method, ema, noise, steps, y, default_guidance(method, dataset))
    return ema, {"w2": w2(out.x, ref), "w2_steps": steps, "w2_nfe": out.nfe,
                 "w2_n": s.n_eval, "train_seconds": round(seconds, 1),
                 "final_loss": state.history[-1]["loss"], "history": state.history}


# ---- manifest, README section, loader --------------------------------------------------------

def read_manifest_2d(folder: Path) -> dict:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


@contextlib.contextmanager
def _manifest_lock(folder: Path):
    """Serialise read-modify-write of the manifest between concurrent CLI runs."""
    fd = os.open(folder, os.O_RDONLY)  # lock the folder itself: no lock file left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_readme_2d(folder: Path) -> None:
    """Rewrite ``<folder>/README_2d.md`` from ``manifest_2d.json`` (no number typed by hand)."""
    rows = [f"| {fn} | {e['bytes']} | {e['sha256']} | {e['w2']:.4f} ({e['w2_nfe']} NFE) | "
            f"{e['train_seconds']:.0f} | `{e['command']}` |"
            for fn, e in sorted(read_manifest_2d(folder).items())]
    text = "\n".join([
        "# data/checkpoints: 2D toy models for the sampling explorer (notebook 07)",
        "",
        "`MLP2D` networks (FM, MeanFlow, TVM) trained on a CPU by `python -m "
        "tvmlib.checkpoints2d` with notebook 02's",
        "settings. `tvmlib.checkpoints2d.load_2d` checks each file against the sha256 in "
        "`manifest_2d.json`.",
        "This section is written by that CLI from the manifest. W2: exact W2 (POT) of "
        "samples from fixed noise",
        "to data (class-matched on 8gaussians), FM with 64 Euler steps (CFG 1.5 on "
        "8gaussians), flow maps with 1 jump.",
        "",
        "| file | bytes | sha256 | W2 | train s | command |",
        "|---|---:|---|---:|---:|---|",
        *rows,
        "",
    ])
    atomic_write_text(text, folder / "README_2d.md")


def save_2d(method: str, dataset: str, net: MLP2D, kwargs: dict, results: dict,
            folder: Path, command: str) -> Path:
    """Atomically write the weights, then add their entry to the manifest and README."""
    path = checkpoint_path(method, dataset, folder)
    atomic_save({"kwargs": kwargs, "state_dict": net.state_dict(), "method": method,
                 "dataset": dataset}, path)
    entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "command": command,
             **results}
    with _manifest_lock(folder):
        manifest = {**read_manifest_2d(folder), path.name: entry}
        atomic_write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                          folder / MANIFEST)
        write_readme_2d(folder)
    return path


def load_2d(method: str, dataset: str, folder: str | Path | None = None) -> MLP2D:
    """The committed ``method`` model on ``dataset`` (eval mode, gradients off).

    Raises FileNotFoundError (missing file or manifest entry) or RuntimeError (sha256
    mismatch, unreadable file), each naming the command that regenerates it."""
    folder = Path(folder) if folder is not None else checkpoints_dir()
    path = checkpoint_path(method, dataset, folder)
    fix = f"Regenerate it with:\n  {regenerate_command(method, dataset)}"

    def build(ckpt: dict) -> MLP2D:
        net = MLP2D(**ckpt["kwargs"])
        net.load_state_dict(ckpt["state_dict"])
        return net

    net = load_verified(path, read_manifest_2d(folder), MANIFEST, "2D checkpoint", fix, build)
    return net.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [f"{m}_{d}" for m, d in MODELS]
    p.add_argument("--only", nargs="+", choices=names, default=None,
                   help="train only these models (default: all)")
    p.add_argument("--steps", type=int, default=Settings2D.steps)
    p.add_argument("--out-dir", default=None, help="default: data/checkpoints")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = Path(args.out_dir) if args.out_dir else checkpoints_dir()
    folder.mkdir(parents=True, exist_ok=True)
    s = Settings2D(steps=args.steps)
    for method, dataset in MODELS:
        name = model_name(method, dataset)
        if args.only and name not in args.only:
            continue
        command = f"python -m tvmlib.checkpoints2d --only {name}" + (
            f" --steps {s.steps}" if s.steps != Settings2D.steps else "")
        net, results = train_2d(method, dataset, s)
        history = results.pop("history")
        path = save_2d(method, dataset, net, model_kwargs(dataset, s),
                       {**results, "steps": s.steps}, folder, command)
        write_results(f"checkpoints2d_{name}.json",
                      {**results, "file": path.name, "sha256": sha256_file(path),
                       "settings": asdict(s), "kwargs": model_kwargs(dataset, s),
                       "history": history},
                      provenance(command=command, seed=s.seed))
        shown = path.relative_to(repo_root()) if path.is_relative_to(repo_root()) else path
        print(f"{name}: W2 {results['w2']:.4f} ({results['w2_nfe']} NFE), "
              f"{results['train_seconds']:.0f} s -> {shown} ({path.stat().st_size} bytes)",
              flush=True)


if __name__ == "__main__":
    main()
