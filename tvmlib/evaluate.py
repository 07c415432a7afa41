"""Evaluate a trained run: k-step flow-map samples, sample grids and a Frechet distance.

    python -m tvmlib.evaluate --run runs/NAME [--steps 1 2 4] [--num-samples N]
        [--inception PATH --ref-stats PATH] [--vae PATH] [--features MODULE:FN]
        [--weights ema|net|target] [--figures PREFIX] [--save-samples]
    torchrun --nproc_per_node=8 -m tvmlib.evaluate --run runs/im256_w2 --num-samples 50000 \\
        --inception weights-inception-2015-12-05-6726825d.pth --ref-stats imagenet256.npz
    python -m tvmlib.evaluate --make-ref-stats OUT.npz --folder IMAGENET/train \\
        --resolution 256 --inception PATH [--num-images 50000]

Reads ``runs/NAME/config.yaml`` and ``checkpoint.pt`` (the evaluation EMA by default), draws
``num_samples`` noise images with uniformly random class labels and samples each with 1, 2, 4
flow-map jumps (``tvmlib.sampling.sample_flowmap``, TVM Fig. 3) at the run's guidance w and
parameterization (``loss.cfg_scale``, ``loss.scale_param``: sampling must match training). The
same noise and labels are used for every step count. Latent runs are un-normalized and decoded
by the VAE. The metric (``eval.metric``, or the flags):

- ``classifier_fd``: MNIST / Fashion-MNIST runs, the project's classifier features against the
  real test split (``tvmlib.metrics.classifier_fd``; not comparable with Inception FID);
- ``inception_fid``: the standard FID Inception network (torch-fidelity's port, local weights
  file ``--inception``) against reference stats ``--ref-stats`` (.npz with ``mu`` and
  ``sigma``: pytorch-fid ``--save-stats`` files, ADM's reference batches, or
  ``--make-ref-stats``);
- ``features_fd``: any feature function ``--features module:function`` or
  ``path/file.py:function`` (images (B, C, H, W) in [-1, 1] -> features (B, d)) against
  ``--ref-stats`` made with the same function;
- ``none``: samples and grids only.

Writes ``eval.json`` (results with provenance) and ``samples_<k>step.png`` grids into the run
folder, and with ``--figures PREFIX`` copies both, plus the training log
(``PREFIX_log.json``), to ``figures/PREFIX_*``. Under torchrun every
process samples its share of the batches and the feature moments are all-reduced.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from tvmlib.config import RunConfig, config_from_dict, config_to_dict, load_config
from tvmlib.metrics import frechet_distance
from tvmlib.sampling import sample_flowmap

FeatureFn = Callable[[Tensor], Tensor]  # images (B, C, H, W) in [-1, 1] -> features (B, d)
MNIST_LIKE = ("mnist", "fashion-mnist")
FLAG_OF = {"inception_weights": "--inception", "reference_stats": "--ref-stats",
           "features": "--features", "vae": "--vae"}


# ---- the run -------------------------------------------------------------------------------

def load_run(run_dir: str | Path, weights: str = "ema",
             device: str | torch.device = "cpu") -> tuple[RunConfig, nn.Module]:
    """(config, network) of a run folder; ``weights``: "ema" (evaluation EMA), "net" (raw
    weights) or "target" (TVM's EMA target). The network is in eval mode on ``device``."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "checkpoint.pt"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir / name} does not exist: --run must be a folder "
                                    "written by python -m tvmlib.train (runs/<name>)")
    from tvmlib.runs import build_model

    cfg = load_config(run_dir / "config.yaml")
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    states = {"ema": lambda: ckpt["ema"]["module"], "net": lambda: ckpt["net"],
              "target": lambda: ckpt["loss"]["target"]["module"]}
    if weights not in states:
        raise ValueError(f"weights {weights!r} unknown; valid: {', '.join(states)}")
    if weights == "target" and not (ckpt.get("loss") or {}).get("target"):
        raise ValueError(f"{run_dir} has no EMA target (not a TVM run); use weights ema or net")
    with torch.device(device):
        net = build_model(cfg)
    net.load_state_dict(states[weights]())
    return cfg, net.eval().requires_grad_(False)


def guidance(cfg: RunConfig, net: nn.Module) -> float | None:
    """The w fed to the network: eval.cfg_scale, else the training w (loss.cfg_scale)."""
    if not getattr(net, "guidance", False):
        return None
    return cfg.eval.cfg_scale if cfg.eval.cfg_scale is not None else cfg.loss.cfg_scale


class LatentDecoder:
    """Model-space latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1]: un-normalize with the
    training normalization (``data.latent_norm``), then ``vae.decode`` in chunks."""

    def __init__(self, cfg: RunConfig, vae: str | None, device, chunk: int = 32):
        from tvmlib.data.latents import load_vae, read_meta, resolve_norm

        if not cfg.data.path:
            raise ValueError("a latent run needs data.path (the latents folder) to decode")
        meta = read_meta(cfg.data.path)  # only meta.json is needed
        self.norm, self.mean, self.std = resolve_norm(meta, cfg.data.latent_norm)
        self.vae, self.chunk = load_vae(vae or meta["vae"], device), chunk

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        from tvmlib.data.latents import denormalize

        z = denormalize(x.float(), self.mean, self.std)
        param = next(self.vae.parameters())
        return torch.cat([self.vae.decode(z[i:i + self.chunk].to(param.dtype)).sample.float()
                          for i in range(0, len(z), self.chunk)]).clamp(-1, 1)


# ---- features and their moments ------------------------------------------------------------

def quantize(images: Tensor) -> Tensor:
    """Round images in [-1, 1] to the 256 levels a saved 8-bit image holds (metrics see these)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float -> [0, 255] uint8 (rounded)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def inception_features(weights: str | Path, device) -> FeatureFn:
    """Pool3 (2048-d) features of the FID Inception network (torch-fidelity's port of the
    TF graph; ``weights`` is its local ``.pth`` file, nothing is downloaded)."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"Inception weights {weights} not found (--inception / eval.inception_weights). "
            "Copy weights-inception-2015-12-05-6726825d.pth (torch-fidelity's release) here.")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise ImportError("Inception FID needs torch-fidelity: pip install '.[imagenet]'") from err
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                      feature_extractor_weights_path=str(weights)).to(device)
    def features(images: Tensor) -> Tensor:  # (B, C, H, W) in [-1, 1] -> (B, 2048)
        u8 = to_uint8(images).to(device)
        return net(u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8)[0]

    return features


def load_feature_fn(spec: str) -> FeatureFn:
    """A feature function from "package.module:name" or "path/to/file.py:name"."""
    if ":" not in spec:
        raise ValueError(f"--features {spec!r} must look like module:function or file.py:function")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        loader = importlib.util.spec_from_file_location(Path(where).stem, where)
        if loader is None or not Path(where).is_file():
            raise FileNotFoundError(f"--features: no file {where}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    if not hasattr(module, name):
        raise AttributeError(f"--features: {where} has no attribute {name!r}")
    return getattr(module, name)


class Moments:
    """Running float64 sums of features, enough for their mean and unbiased covariance."""

    def __init__(self):
        self.n, self.s1, self.s2 = 0, None, None

    def add(self, f: Tensor) -> None:
        f = f.detach().double().flatten(1).cpu()  # (B, d)
        if self.s1 is None:
            self.s1, self.s2 = torch.zeros(f.shape[1], dtype=torch.float64), \
                torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        self.n += len(f)
        self.s1 += f.sum(0)
        self.s2 += f.T @ f

    def all_reduce(self, device) -> None:
        """Sum over torchrun processes (each must have added at least one batch)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        for name in ("s1", "s2"):
            t = getattr(self, name).to(device)
            dist.all_reduce(t)
            setattr(self, name, t.cpu())
        n = torch.tensor([self.n], dtype=torch.float64, device=device)
        dist.all_reduce(n)
        self.n = int(n.item())

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (d,), sigma (d, d)) as numpy float64; sigma = (S2 - n mu mu^T) / (n - 1)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors, got {self.n}")
        mu = self.s1 / self.n
        sigma = (self.s2 - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.numpy(), sigma.numpy()


def load_ref_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an .npz with keys ``mu`` and ``sigma``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference stats {path} not found (--ref-stats / "
                                "eval.reference_stats); make them with --make-ref-stats")
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"{path} must hold arrays 'mu' and 'sigma', has {list(f.keys())}")
        return f["mu"].astype(np.float64), f["sigma"].astype(np.float64)


def metric_setup(cfg: RunConfig, device, feature_fn: FeatureFn | None = None
                 ) -> tuple[FeatureFn | None, tuple | None, str]:
    """(feature function, reference (mu, sigma), description of the reference) for
    ``cfg.eval.metric``; raises naming the flag when a file it needs is missing."""
    e, metric = cfg.eval, cfg.eval.metric
    if feature_fn is not None and metric != "features_fd":
        raise ValueError("a feature function was given: set eval.metric to 'features_fd'")

    def need(key: str) -> str:
        value = getattr(e, key)
        if not value:
            raise ValueError(f"metric {metric} needs {FLAG_OF[key]} PATH (eval.{key})")
        return value

    if metric == "none":
        return None, None, "none"
    if metric == "classifier_fd":
        if cfg.data.dataset not in MNIST_LIKE:
            raise ValueError(f"classifier_fd exists for {MNIST_LIKE}, not {cfg.data.dataset!r}; "
                             "use --inception and --ref-stats (inception_fid) or --metric none")
        from tvmlib.metrics import classifier_features, real_stats

        ds = cfg.data.dataset
        ref = load_ref_stats(e.reference_stats) if e.reference_stats else real_stats(ds, "test")
        return (lambda x: classifier_features(x.float(), ds)), ref, \
            e.reference_stats or f"{ds} test split"
    if metric == "inception_fid":
        fn = inception_features(need("inception_weights"), device)
        return fn, load_ref_stats(need("reference_stats")), e.reference_stats
    fn = feature_fn if feature_fn is not None else load_feature_fn(need("features"))
    return fn, load_ref_stats(need("reference_stats")), e.reference_stats


# ---- sampling ------------------------------------------------------------------------------

def _precision(net: nn.Module, precision: str, device):
    """(dtype of the noise, autocast context) for eval.precision."""
    if precision == "fp64":
        net.double()
        return torch.float64, contextlib.nullcontext()
    if precision == "bf16":
        return torch.float32, torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return torch.float32, contextlib.nullcontext()


def noise_and_labels(net: nn.Module, n: int, generator: torch.Generator,
                     labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Noise (n, C, H, W) and uniformly random labels (n,) (None if unconditional)."""
    x = torch.randn(n, net.in_channels, *net.input_size, generator=generator)
    K = getattr(net, "num_classes", 0)
    if K and labels is None:
        labels = torch.randint(0, K, (n,), generator=generator)
    return x, (labels if K else None)


@torch.no_grad()
def sample_images(net: nn.Module, noise: Tensor, y: Tensor | None, steps: int,
                  w: float | None, scale_param: bool, decode: Callable | None = None
                  ) -> tuple[Tensor, float]:
    """(images in [-1, 1], quantized to 8 bits, on CPU; seconds spent in the sampler) for one
    k-step batch."""
    device = next(net.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    x = sample_flowmap(net, noise.to(device), steps=steps,
                       y=None if y is None else y.to(device), w=w, scale_param=scale_param).x
    sync()
    seconds = time.perf_counter() - t0
    images = decode(x) if decode is not None else x.float()
    return quantize(images.cpu()), seconds


def grid_png(images: Tensor, path: str | Path, nrow: int) -> None:
    """Save images (N, C, H, W) in [-1, 1] as one PNG grid with ``nrow`` images per row."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(to_uint8(images).float(), nrow=nrow, padding=2, pad_value=255)
    arr = grid.to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0] if images.shape[1] == 1 else arr).save(path)


def _grid_labels(net: nn.Module, size: int) -> tuple[Tensor | None, int]:
    """Class-per-column labels for up to 16 classes, else random; (labels or None, nrow)."""
    K = getattr(net, "num_classes", 0)
    if 0 < K <= 16:
        return torch.arange(K * max(1, size // K)) % K, K
    return None, 8


def evaluate(run_dir: str | Path, overrides: dict | None = None,
             feature_fn: FeatureFn | None = None, device: str | torch.device | None = None,
             figures: str | None = None, save_samples: bool = False,
             grid_size: int = 64) -> dict:
    """Sample and score a run (see the module docstring); returns the results dict.

    ``overrides`` sets eval keys, e.g. {"num_samples": 1000, "steps": [1, 2]}. ``feature_fn``
    (metric features_fd) maps images in [-1, 1] to features. ``figures`` is a file-name prefix
    for copies under ``figures/``. ``save_samples`` also writes ``samples_<k>step.npz`` (uint8
    images and labels of this process; ``_rank<r>`` under torchrun).
    """
    from tvmlib.provenance import provenance, write_results
    from tvmlib.train import atomic_write_text

    run_dir = Path(run_dir)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else None
    if cfg is None:
        raise FileNotFoundError(f"{run_dir / 'config.yaml'} does not exist: --run must be a "
                                "folder written by python -m tvmlib.train")
    cfg = config_from_dict(config_to_dict(cfg), {f"eval.{k}": v
                                                 for k, v in (overrides or {}).items()})
    e = cfg.eval
    features, ref, ref_name = metric_setup(cfg, device, feature_fn)  # fails before sampling
    _, net = load_run(run_dir, e.weights, device)
    net.attn_backend = e.attn_backend
    dtype, autocast = _precision(net, e.precision, device)
    decode = LatentDecoder(cfg, e.vae, device) if cfg.data.dataset == "latents" else None
    w, scale_param = guidance(cfg, net), cfg.loss.scale_param and cfg.loss.name == "tvm"
    moments = {k: Moments() for k in e.steps}
    seconds = dict.fromkeys(e.steps, 0.0)
    saved: dict[int, list] = {k: [] for k in e.steps}
    n_batches = -(-e.num_samples // e.batch_size)
    mine = range(rank, n_batches, world)
    if features is not None and world > 1 and len(mine) == 0:
        raise ValueError(f"{n_batches} batches for {world} processes: lower eval.batch_size")
    with autocast:
        for b in mine:
            n = min(e.batch_size, e.num_samples - b * e.batch_size)
            g = torch.Generator().manual_seed(e.seed * 1_000_003 + b)
            noise, y = noise_and_labels(net, n, g)
            for k in e.steps:
                images, sec = sample_images(net, noise.to(dtype), y, k, w, scale_param, decode)
                seconds[k] += sec
                if features is not None:
                    moments[k].add(features(images.to(device)))
                if save_samples:
                    saved[k].append((to_uint8(images), y))
        grids = {}
        if rank == 0 and grid_size:
            labels, nrow = _grid_labels(net, grid_size)
            g = torch.Generator().manual_seed(e.seed + 2**40)
            noise, y = noise_and_labels(net, len(labels) if labels is not None else grid_size,
                                        g, labels)
            for k in e.steps:
                images, _ = sample_images(net, noise.to(dtype), y, k, w, scale_param, decode)
                grids[k] = run_dir / f"samples_{k}step.png"
                grid_png(images, grids[k], nrow)
    if save_samples:
        suffix = f"_rank{rank}" if world > 1 else ""
        for k, parts in saved.items():
            ys = [p[1] for p in parts if p[1] is not None]
            np.savez(run_dir / f"samples_{k}step{suffix}.npz",
                     images=torch.cat([p[0] for p in parts]).numpy(),
                     labels=torch.cat(ys).numpy() if ys else np.zeros(0, np.int64))
    results = {"run": cfg.name, "metric": e.metric, "reference": ref_name,
               "num_samples": e.num_samples, "weights": e.weights, "w": w,
               "scale_param": scale_param, "precision": e.precision,
               "processes": world, "steps": {}}
    for k in e.steps:
        row = {"nfe": k, "sample_seconds_rank0": seconds[k]}
        if features is not None:
            moments[k].all_reduce(device)
            mu, sigma = moments[k].stats()
            row["fd"] = frechet_distance(mu, sigma, *ref)
        if k in grids:
            row["grid"] = grids[k].name
        results["steps"][str(k)] = row
    if rank == 0:
        prov = provenance(seed=e.seed, run_dir=str(run_dir),
                          train_step=torch.load(run_dir / "checkpoint.pt", map_location="cpu",
                                                weights_only=False)["step"])
        results["train_step"] = prov["train_step"]
        atomic_write_text(json.dumps({"provenance": prov, "results": results}, indent=1),
                          run_dir / "eval.json")
        if figures:
            from tvmlib.paths import figures_dir

            write_results(f"{figures}_eval.json", results, prov)
            if (run_dir / "log.json").exists():  # the training log, for plots of the GPU run
                history = json.loads((run_dir / "log.json").read_text())
                write_results(f"{figures}_log.json",
                              {"history": history, "config": config_to_dict(cfg)}, prov)
            for path in grids.values():
                shutil.copyfile(path, figures_dir() / f"{figures}_{path.name}")
        print(_table(results), flush=True)
    return results


def _table(results: dict) -> str:
    lines = [f"[tvmlib.evaluate] {results['run']} (step {results.get('train_step')}), "
             f"{results['num_samples']} samples, {results['weights']} weights, w={results['w']}, "
             f"metric {results['metric']} vs {results['reference']}"]
    for k, row in results["steps"].items():
        fd = f"{row['fd']:.4g}" if "fd" in row else "-"
        secs = row["sample_seconds_rank0"]
        lines.append(f"  {k:>3} step(s): FD {fd:>10}   sampling {secs:.2f} s")
    return "\n".join(lines)


# ---- reference statistics ------------------------------------------------------------------

@torch.no_grad()
def make_ref_stats(folder: str | Path, resolution: int, feature_fn: FeatureFn, out: str | Path,
                   batch_size: int = 250, num_images: int | None = None, seed: int = 0,
                   workers: int = 0, device=None) -> dict:
    """Feature mean and covariance of an ImageFolder (a random subset of ``num_images`` if
    given), saved as ``out`` (.npz with mu, sigma, n)."""
    from tvmlib.data.images import image_folder

    data = image_folder(folder, resolution)
    index = torch.arange(len(data))
    if num_images is not None and num_images < len(data):
        index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        index = index[:num_images].sort().values
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, index.tolist()),
                                         batch_size=batch_size, num_workers=workers)
    moments = Moments()
    for x, _ in loader:
        moments.add(feature_fn(x.to(device) if device is not None else x))
    mu, sigma = moments.stats()
    np.savez(out, mu=mu, sigma=sigma, n=moments.n)
    return {"out": str(out), "n": moments.n, "dim": len(mu)}


# ---- CLI -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m tvmlib.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run folder (runs/NAME) with config.yaml and checkpoint.pt")
    ap.add_argument("--steps", type=int, nargs="+", help="flow-map jumps, e.g. 1 2 4")
    ap.add_argument("--num-samples", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--metric", choices=["classifier_fd", "inception_fid", "features_fd", "none"])
    ap.add_argument("--inception", help="local FID Inception weights (.pth)")
    ap.add_argument("--ref-stats", help="reference stats .npz (mu, sigma)")
    ap.add_argument("--features", help="feature function module:name or file.py:name")
    ap.add_argument("--vae", help="VAE folder for latent runs (default: the latents' VAE)")
    ap.add_argument("--weights", choices=["ema", "net", "target"])
    ap.add_argument("--seed", type=int)
    ap.add_argument("--figures", metavar="PREFIX", help="also write figures/PREFIX_*")
    ap.add_argument("--save-samples", action="store_true", help="write samples_<k>step.npz")
    ap.add_argument("--device", help="default: cuda (LOCAL_RANK) if available, else cpu")
    ap.add_argument("--make-ref-stats", metavar="OUT", help="write reference stats and exit")
    ap.add_argument("--folder", help="--make-ref-stats: ImageFolder root")
    ap.add_argument("--resolution", type=int, help="--make-ref-stats: image size")
    ap.add_argument("--num-images", type=int, help="--make-ref-stats: random subset size")
    args = ap.parse_args(argv)
    if args.make_ref_stats:
        if not args.folder or not args.resolution:
            ap.error("--make-ref-stats needs --folder and --resolution")
        if bool(args.inception) == bool(args.features):
            ap.error("--make-ref-stats needs exactly one of --inception or --features")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        fn = inception_features(args.inception, device) if args.inception \
            else load_feature_fn(args.features)
        info = make_ref_stats(args.folder, args.resolution, fn, args.make_ref_stats,
                              args.batch_size or 250, args.num_images, device=device)
        print(f"[tvmlib.evaluate] reference stats of {info['n']} images ({info['dim']}-d "
              f"features) written to {info['out']}", flush=True)
        return info
    if not args.run:
        ap.error("--run is required (or --make-ref-stats)")
    keys = {"steps": "steps", "num_samples": "num_samples", "batch_size": "batch_size",
            "metric": "metric", "inception": "inception_weights",
            "ref_stats": "reference_stats", "features": "features", "vae": "vae",
            "weights": "weights", "seed": "seed"}
    overrides = {key: getattr(args, a) for a, key in keys.items() if getattr(args, a) is not None}
    if args.features and not args.metric:
        overrides["metric"] = "features_fd"
    if args.inception and not args.metric:
        overrides["metric"] = "inception_fid"
    from tvmlib.runs import init_distributed

    _, _, device = init_distributed()
    if args.device:
        device = torch.device(args.device)
    try:
        return evaluate(args.run, overrides, device=device, figures=args.figures,
                        save_samples=args.save_samples)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
