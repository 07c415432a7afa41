"""Score a network by the samples it makes: for each step count, draw the same noise and
balanced labels, sample with the run's sampler (``tvmlib.training.build.sampler``: flow-map
jumps for TVM, MeanFlow and CMT; any ODE solver, guided, for flow matching), decode latents, round
to 8 bits and compute the Frechet distance of the metric's features (``eval.metric``, see
``tvmlib.evaluation.features``) to the reference. Under torchrun every process samples its share
of the batches and the feature moments are all-reduced.

:func:`evaluate_net` scores a network in memory (the runner calls it during training);
:func:`evaluate_run` scores a run folder and writes ``eval.json`` and sample grids
(``python -m tvmlib.apps.evaluate`` is its command line).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tvmlib.core.solvers import sample
from tvmlib.evaluation.features import (
    FeatureFn,
    LatentDecoder,
    metric_setup,
    quantize,
    to_uint8,
)
from tvmlib.evaluation.metrics import Moments, frechet_distance
from tvmlib.training.build import load_run, resolve_device, sampler
from tvmlib.training.checkpoint import read_checkpoint
from tvmlib.training.config import RunConfig, config_from_dict, config_to_dict, load_config
from tvmlib.training.distributed import world
from tvmlib.utils.atomic import atomic_write_json
from tvmlib.utils.checks import plain_name
from tvmlib.utils.cuda import synchronize


@contextlib.contextmanager
def attention_backend(net: nn.Module, backend: str | None):
    """Temporarily set a DiT's ``attn_backend`` (sampling needs no JVP: "sdpa" is fastest)."""
    old = getattr(net, "attn_backend", None)
    if backend is not None and hasattr(net, "attn_backend"):
        net.attn_backend = backend
    try:
        yield net
    finally:
        if backend is not None and hasattr(net, "attn_backend"):
            net.attn_backend = old


def noise_and_labels(net: nn.Module, n: int, seed: int, offset: int = 0
                     ) -> tuple[Tensor, Tensor | None]:
    """Noise (n, ...) from a generator seeded by ``seed`` and balanced labels
    (offset + i) mod K (None for an unconditional net)."""
    g = torch.Generator().manual_seed(seed)
    shape = (net.in_channels, *net.input_size) if hasattr(net, "input_size") else (net.dim,)
    K = getattr(net, "num_classes", 0)
    labels = (torch.arange(offset, offset + n) % K) if K else None
    return torch.randn(n, *shape, generator=g), labels


@torch.no_grad()
def sample_images(net: nn.Module, noise: Tensor, y: Tensor | None, steps: int, spec: dict,
                  decode: Callable | None = None, grid: str = "uniform"
                  ) -> tuple[Tensor, float, int]:
    """(images in [-1, 1] rounded to 8 bits, on the CPU; seconds in the sampler; NFE) for one
    batch, ``spec`` being the keyword arguments of ``sample`` (solver, w, cfg_scale, ...)."""
    device = next(net.parameters()).device
    t0 = time.perf_counter()
    out = sample(net, noise.to(device), steps, y=None if y is None else y.to(device), grid=grid,
                 **spec)
    synchronize(device)
    seconds = time.perf_counter() - t0
    images = decode(out.x) if decode is not None else out.x.float()
    return quantize(images.clamp(-1, 1).cpu()), seconds, out.nfe


def evaluate_net(net: nn.Module, cfg: RunConfig, features: FeatureFn | None, ref: tuple | None,
                 decode: Callable | None = None, on_batch: Callable | None = None
                 ) -> dict[str, dict]:
    """{str(steps): {"steps", "nfe", "fd", "sample_seconds_rank0"}} for ``cfg.eval.steps``, with
    ``cfg.eval.num_samples`` samples of ``net`` (its batches split over torchrun processes).
    ``on_batch(steps, images, labels, first)`` sees every batch (for saving samples; ``first``
    is the index of its first sample: a sample's noise and label depend on its index only, not
    on the number of processes)."""
    e, (rank, n_world) = cfg.eval, world()
    spec, device = sampler(cfg, net), next(net.parameters()).device
    dtype = next(net.parameters()).dtype
    n_batches = -(-e.num_samples // e.batch_size)
    mine = range(rank, n_batches, n_world)
    if features is not None and len(mine) == 0:
        raise ValueError(f"{n_batches} batches for {n_world} processes: lower eval.batch_size")
    moments = {k: Moments() for k in e.steps}
    rows = {str(k): {"steps": k, "sample_seconds_rank0": 0.0} for k in e.steps}
    with attention_backend(net, e.attn_backend), _autocast(e.precision, device):
        for b in mine:
            n = min(e.batch_size, e.num_samples - b * e.batch_size)
            noise, y = noise_and_labels(net, n, e.seed * 1_000_003 + b, b * e.batch_size)
            for k in e.steps:
                images, sec, nfe = sample_images(net, noise.to(dtype), y, k, spec, decode,
                                                 e.grid)
                rows[str(k)].update(nfe=nfe)
                rows[str(k)]["sample_seconds_rank0"] += sec
                if features is not None:
                    moments[k].add(features(images.to(device)), b)
                if on_batch is not None:
                    on_batch(k, images, y, b * e.batch_size)
    if features is not None:
        for k in e.steps:
            moments[k].all_reduce()
            rows[str(k)]["fd"] = frechet_distance(*moments[k].stats(), *ref)
    return rows


def grid_png(images: Tensor, path: str | Path, nrow: int) -> None:
    """Save images (N, C, H, W) in [-1, 1] as one PNG grid with ``nrow`` images per row."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(to_uint8(images).float(), nrow=nrow, padding=2, pad_value=255)
    arr = grid.to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0] if images.shape[1] == 1 else arr).save(path)


def sample_grids(net: nn.Module, cfg: RunConfig, folder: Path, size: int = 64,
                 decode: Callable | None = None) -> dict[int, Path]:
    """``samples_<k>step.png`` for each eval step count: one column per class (up to 16 classes,
    else 8 columns), the same noise for every k."""
    K = getattr(net, "num_classes", 0)
    nrow = K if 0 < K <= 16 else 8
    n = K * max(1, size // K) if 0 < K <= 16 else size
    noise, y = noise_and_labels(net, n, cfg.eval.seed + 2**40)
    dtype, spec, paths = next(net.parameters()).dtype, sampler(cfg, net), {}
    with attention_backend(net, cfg.eval.attn_backend):
        for k in cfg.eval.steps:
            images, _, _ = sample_images(net, noise.to(dtype), y, k, spec, decode, cfg.eval.grid)
            paths[k] = folder / f"samples_{k}step.png"
            grid_png(images, paths[k], nrow)
    return paths


def _autocast(precision: str, device):
    """bf16 autocast for eval.precision "bf16", else none (fp64 converts the network first)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sample_saver(folder: Path, steps: list[int]):
    saved = {k: [] for k in steps}

    def on_batch(k: int, images: Tensor, y: Tensor | None, first: int) -> None:
        saved[k].append((to_uint8(images), y, torch.arange(first, first + len(images))))

    def write(suffix: str) -> None:
        for k, parts in saved.items():
            ys = [p[1] for p in parts if p[1] is not None]
            np.savez(folder / f"samples_{k}step{suffix}.npz",
                     images=torch.cat([p[0] for p in parts]).numpy(),
                     labels=torch.cat(ys).numpy() if ys else np.zeros(0, np.int64),
                     index=torch.cat([p[2] for p in parts]).numpy())

    return on_batch, write


def evaluate_run(run_dir: str | Path, overrides: dict | None = None,
                 device: str | torch.device | None = None, figures: str | None = None,
                 save_samples: bool = False, grid_size: int = 64) -> dict:
    """Sample and score a run folder with its config's ``eval`` section; returns the results.

    ``overrides`` sets eval keys, e.g. {"num_samples": 1000, "steps": [1, 2]}. Writes
    ``eval.json`` and ``samples_<k>step.png`` into the run folder; ``figures`` is a file-name
    prefix for copies (and the training log) under ``figures/``; ``save_samples`` also writes
    ``samples_<k>step.npz`` (uint8 images, labels and each sample's index; under torchrun
    ``samples_<k>step_rank<r>.npz``, this process's share).
    """
    run_dir, (rank, n_world) = Path(run_dir), world()
    if figures is not None:
        plain_name("--figures", figures)
    device = resolve_device(device or "auto")
    cfg = run_config(run_dir, overrides)
    e = cfg.eval
    features, ref, ref_name = metric_setup(cfg, device)  # fails before sampling
    _, net = load_run(run_dir, e.weights[0], device)
    decode = LatentDecoder(cfg, e.vae, device) if cfg.data.dataset == "latents" else None
    on_batch, write = _sample_saver(run_dir, e.steps) if save_samples else (None, None)
    if e.precision == "fp64":
        net.double()
    with _autocast(e.precision, device):
        rows = evaluate_net(net, cfg, features, ref, decode, on_batch)
        grids = sample_grids(net, cfg, run_dir, grid_size, decode) if rank == 0 and grid_size \
            else {}
    if write is not None:
        write(f"_rank{rank}" if n_world > 1 else "")
    for k, path in grids.items():
        rows[str(k)]["grid"] = path.name
    results = {"run": cfg.name, "metric": e.metric, "reference": ref_name,
               "num_samples": e.num_samples, "weights": e.weights[0], "sampler": sampler(cfg, net),
               "precision": e.precision, "processes": n_world, "steps": rows}
    if rank == 0:
        _write(results, run_dir, cfg, figures, grids)
    return results


def run_config(run_dir: Path, overrides: dict | None = None) -> RunConfig:
    """The config a run folder is evaluated with: its ``config.yaml`` with the ``eval``
    ``overrides``. The folder's own ``eval.features`` is dropped: a feature function (code to
    run) comes from the caller (``--features``), never from a folder one may have been given.
    Runs on 2D toys are refused (they are scored by W2 on points, notebooks 01-02)."""
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir / 'config.yaml'} does not exist: a run folder is "
                                "written by python -m tvmlib.apps.train")
    values = config_to_dict(load_config(run_dir / "config.yaml"))
    values["eval"]["features"] = None
    cfg = config_from_dict(values, {f"eval.{k}": v for k, v in (overrides or {}).items()})
    if cfg.data.dataset.startswith("toy:"):
        raise ValueError(f"{run_dir} is a run on the 2D toy {cfg.data.dataset[4:]!r}: evaluate "
                         "scores image runs; score 2D samples with tvmlib.evaluation.metrics.w2 "
                         "(notebooks 01 and 02)")
    return cfg


def _write(results: dict, run_dir: Path, cfg: RunConfig, figures: str | None, grids: dict):
    from tvmlib.utils.paths import figures_dir
    from tvmlib.utils.provenance import provenance, write_results

    step = read_checkpoint(run_dir / "checkpoint.pt")["step"]
    prov = provenance(seed=cfg.eval.seed, run_dir=str(run_dir), train_step=step)
    results["train_step"] = step
    atomic_write_json({"provenance": prov, "results": results}, run_dir / "eval.json")
    if figures:
        write_results(f"{figures}_eval.json", results, prov)
        if (run_dir / "log.json").exists():  # the training log, for plots of the run
            history = json.loads((run_dir / "log.json").read_text())
            write_results(f"{figures}_log.json", {"history": history,
                                                  "config": config_to_dict(cfg)}, prov)
        for path in grids.values():
            shutil.copyfile(path, figures_dir() / f"{figures}_{path.name}")
    print(format_results(results), flush=True)


def format_results(results: dict) -> str:
    s = results["sampler"]
    lines = [f"[tvmlib.evaluate] {results['run']} (step {results.get('train_step')}), "
             f"{results['num_samples']} samples, {results['weights']} weights, {s['solver']} "
             f"(w={s['w']}, cfg={s['cfg_scale']}), metric {results['metric']} vs "
             f"{results['reference']}"]
    for k, row in results["steps"].items():
        fd = f"{row['fd']:.4g}" if "fd" in row else "-"
        lines.append(f"  {k:>3} step(s), {row['nfe']:>3} NFE: FD {fd:>10}   sampling "
                     f"{row['sample_seconds_rank0']:.2f} s")
    return "\n".join(lines)


@torch.no_grad()
def make_ref_stats(folder: str | Path, resolution: int, feature_fn: FeatureFn, out: str | Path,
                   batch_size: int = 250, num_images: int | None = None, device=None) -> dict:
    """Feature mean and covariance of an ImageFolder (a random subset of ``num_images`` if
    given, seed 0), saved as ``out`` (.npz with mu, sigma, n)."""
    from tvmlib.data.images import image_folder

    data = image_folder(folder, resolution)
    index = torch.arange(len(data))
    if num_images is not None and num_images < len(data):
        index = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        index = index[:num_images].sort().values
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, index.tolist()),
                                         batch_size=batch_size)
    moments = Moments()
    for x, _ in loader:
        moments.add(feature_fn(x.to(device) if device is not None else x))
    mu, sigma = moments.stats()
    np.savez(out, mu=mu, sigma=sigma, n=moments.n)
    return {"out": str(out), "n": moments.n, "dim": len(mu)}


def data_floor(cfg: RunConfig) -> dict | None:
    """The metric's floor at the sample sizes of ``cfg.eval`` (``num_samples`` and
    ``final_samples``): the classifier FD of that many real training images (random, seeded) to
    the test split, computed exactly as a model's samples are (8-bit images, the same features
    and reference). {"train_vs_test": FD at num_samples, "n", "by_n": {n: FD}}; None for other
    metrics."""
    if cfg.eval.metric != "classifier_fd" or cfg.data.dataset not in ("mnist", "fashion-mnist"):
        return None
    from tvmlib.data.images import load_mnist
    from tvmlib.evaluation.classifier import classifier_fd

    device = resolve_device(cfg.device)
    x, _ = load_mnist(cfg.data.dataset, "train")
    g = torch.Generator().manual_seed(cfg.eval.seed + 5)
    order = torch.randperm(len(x), generator=g)
    sizes = dict.fromkeys([cfg.eval.num_samples, cfg.eval.final_samples or cfg.eval.num_samples])
    by_n = {str(n): classifier_fd(quantize(x[order[:n]]).to(device), None, cfg.data.dataset)
            for n in sizes}
    n = cfg.eval.num_samples
    return {"train_vs_test": by_n[str(n)], "n": n, "by_n": by_n}
