"""What a metric sees: 8-bit images, their features (the FID Inception network, any feature
function, or the project's classifier) and the reference statistics they are compared with."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tvmlib.data.images import MNIST_LIKE
from tvmlib.training.config import RunConfig

FeatureFn = Callable[[Tensor], Tensor]  # images (B, C, H, W) in [-1, 1] -> features (B, d)
FLAG_OF = {"inception_weights": "--inception PATH", "reference_stats": "--ref-stats PATH",
           "features": "--features MODULE:FUNCTION", "vae": "--vae PATH"}


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


def metric_setup(cfg: RunConfig, device) -> tuple[FeatureFn | None, tuple | None, str]:
    """(feature function, reference (mu, sigma), description of the reference) for
    ``cfg.eval.metric``; raises naming the flag when a file it needs is missing."""
    e, metric = cfg.eval, cfg.eval.metric

    def need(key: str) -> str:
        value = getattr(e, key)
        if not value:
            raise ValueError(f"metric {metric} needs {FLAG_OF[key]} (eval.{key})")
        return value

    if metric == "none":
        return None, None, "none"
    if metric == "classifier_fd":
        ds = cfg.data.dataset
        if ds not in MNIST_LIKE:
            raise ValueError(f"classifier_fd exists for {', '.join(MNIST_LIKE)}, not {ds!r}; use "
                             "--inception and --ref-stats (inception_fid) or --metric none")
        from tvmlib.evaluation.classifier import classifier_features, real_stats

        ref = load_ref_stats(e.reference_stats) if e.reference_stats else real_stats(ds, "test")
        return (lambda x: classifier_features(x.float(), ds)), ref, \
            e.reference_stats or f"{ds} test split"
    fn = inception_features(need("inception_weights"), device) if metric == "inception_fid" \
        else load_feature_fn(need("features"))
    return fn, load_ref_stats(need("reference_stats")), e.reference_stats


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
