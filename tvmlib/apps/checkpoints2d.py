"""Make the committed 2D models (FM, MeanFlow, TVM) of the sampling explorer (notebook 07).

Each model is an ``MLP2D`` trained on a CPU through the one build path with notebook 02's
settings (hidden 128, depth 3, time_scale 1, batch 256, lr 2e-3, evaluation EMA 0.995, 1500
steps) and saved as ``data/checkpoints/2d_<method>_<dataset>.pt`` with its constructor kwargs.
Their sha256, size, command and W2 go to ``data/checkpoints/manifest_2d.json`` (loaded by
``tvmlib.evaluation.pretrained.load_2d``, which checks the sha256), ``README_2d.md`` is written
from that manifest, and the full provenance (commit, device, versions, loss history) goes to
``figures/checkpoints2d_<method>_<dataset>.json``:

    python -m tvmlib.apps.checkpoints2d                      # all models, about 1-2 min each
    python -m tvmlib.apps.checkpoints2d --only tvm_checkerboard
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

import torch

from tvmlib.apps import cli
from tvmlib.core.solvers import sample
from tvmlib.data.toy2d import num_classes
from tvmlib.evaluation.metrics import w2
from tvmlib.evaluation.pretrained import (
    FM_CFG_SCALE,
    MANIFEST_2D,
    MODELS_2D,
    TVM_GUIDANCE_RANGE,
    checkpoint_path_2d,
    default_guidance,
    eval_set,
    model_name,
    read_manifest_2d,
    sampler_2d,
)
from tvmlib.training.build import build
from tvmlib.training.config import RunConfig, config_from_dict, config_to_dict
from tvmlib.training.loop import train
from tvmlib.training.weights import checkpoints_dir, sha256_file
from tvmlib.utils.atomic import atomic_save, atomic_write_text
from tvmlib.utils.paths import repo_root
from tvmlib.utils.provenance import provenance, write_results

STEPS, N_EVAL = 1500, 1000  # notebook 02's default training steps; samples for the W2


def run_config(method: str, dataset: str, steps: int = STEPS) -> RunConfig:
    """Notebook 02's default-scale settings for ``method`` on ``dataset``."""
    K = num_classes(dataset)
    loss = {"fm": {"name": "fm", "time_sampler": "uniform", "label_dropout": 0.1 if K else 0.0},
            "meanflow": {"name": "meanflow", "cfg_scale": FM_CFG_SCALE if K else None},
            "tvm": {"name": "tvm", "cfg_range": list(TVM_GUIDANCE_RANGE) if K else None}}
    return config_from_dict({
        "name": f"2d_{model_name(method, dataset)}", "device": "cpu",
        "data": {"dataset": f"toy:{dataset}", "class_conditional": K > 0},
        "model": {"preset": "MLP2D", "in_channels": 2, "num_classes": K, "guidance": K > 0,
                  "hidden_size": 128, "depth": 3, "time_scale": 1.0},
        "loss": loss[method],
        "train": {"steps": steps, "global_batch": 256, "lr": 2e-3, "betas": [0.9, 0.999],
                  "grad_clip": 1.0, "ema_decay": 0.995, "log_every": max(1, steps // 10),
                  "ckpt_every": 0, "seed": 0}})


def model_kwargs(cfg: RunConfig) -> dict:
    m = cfg.model
    return {"dim": 2, "hidden": m.hidden_size, "depth": m.depth, "time_scale": m.time_scale,
            "num_classes": m.num_classes, "guidance": m.guidance}


def train_2d(method: str, dataset: str, steps: int = STEPS):
    """Train one model; returns its config, EMA network (eval mode) and a results dict."""
    cfg = run_config(method, dataset, steps)
    built = build(cfg)
    t0 = time.perf_counter()
    state = train(built.net, built.loss, built.source, built.loop)
    seconds = time.perf_counter() - t0
    ema = state.ema.module.eval().requires_grad_(False)
    noise, y, ref = eval_set(dataset, N_EVAL, cfg.train.seed)
    k = 64 if method == "fm" else 1
    out = sample(ema, noise, k, y=y, **sampler_2d(method, default_guidance(method, dataset)))
    return cfg, ema, {"w2": w2(out.x, ref), "w2_steps": k, "w2_nfe": out.nfe, "w2_n": N_EVAL,
                      "train_seconds": round(seconds, 1), "final_loss": state.history[-1]["loss"],
                      "history": state.history}


# ---- manifest, README section, loader --------------------------------------------------------

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
        "tvmlib.apps.checkpoints2d` with notebook 02's",
        "settings. `tvmlib.evaluation.pretrained.load_2d` checks each file against the sha256 in "
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


def save_2d(method: str, dataset: str, net: torch.nn.Module, kwargs: dict, results: dict,
            folder: Path, command: str) -> Path:
    """Atomically write the weights, then add their entry to the manifest and README."""
    path = checkpoint_path_2d(method, dataset, folder)
    atomic_save({"kwargs": kwargs, "state_dict": net.state_dict(), "method": method,
                 "dataset": dataset}, path)
    entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "command": command,
             **results}
    with _manifest_lock(folder):
        manifest = {**read_manifest_2d(folder), path.name: entry}
        atomic_write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                          folder / MANIFEST_2D)
        write_readme_2d(folder)
    return path


def main(argv: list[str] | None = None) -> None:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    names = [f"{m}_{d}" for m, d in MODELS_2D]
    p.add_argument("--only", nargs="+", choices=names, default=None,
                   help="train only these models (default: all)")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--out-dir", default=None, help="default: data/checkpoints")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = Path(args.out_dir) if args.out_dir else checkpoints_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for method, dataset in MODELS_2D:
        name = model_name(method, dataset)
        if args.only and name not in args.only:
            continue
        command = f"python -m tvmlib.apps.checkpoints2d --only {name}" + (
            f" --steps {args.steps}" if args.steps != STEPS else "")
        cfg, net, results = train_2d(method, dataset, args.steps)
        history = results.pop("history")
        path = save_2d(method, dataset, net, model_kwargs(cfg),
                       {**results, "steps": args.steps}, folder, command)
        write_results(f"checkpoints2d_{name}.json",
                      {**results, "file": path.name, "sha256": sha256_file(path),
                       "config": config_to_dict(cfg), "kwargs": model_kwargs(cfg),
                       "history": history},
                      provenance(command=command, seed=cfg.train.seed))
        shown = path.relative_to(repo_root()) if path.is_relative_to(repo_root()) else path
        print(f"{name}: W2 {results['w2']:.4f} ({results['w2_nfe']} NFE), "
              f"{results['train_seconds']:.0f} s -> {shown} ({path.stat().st_size} bytes)",
              flush=True)


if __name__ == "__main__":
    cli.run(main)
