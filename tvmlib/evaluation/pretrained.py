"""The committed small models under ``data/checkpoints/`` (sha256-checked), and how each is
sampled (keyword arguments of ``tvmlib.core.solvers.sample``):

* 2D ``MLP2D`` models (FM, MeanFlow, TVM on checkerboard and 8gaussians), trained on a CPU by
  ``python -m tvmlib.apps.checkpoints2d``: :func:`load_2d`, :func:`sampler_2d`;
* Fashion-MNIST DiT-T/2 models (the CMT run's FM teacher, TVM from scratch, CMT -> TVM), made
  on a GPU: :func:`load_fashion`, :data:`FASHION_MODELS`.

The class-conditional TVM on 8gaussians is trained with beta = 1/w uniform for w in [1, 3], so
its guidance w is a free input at sampling time (no extra NFE); FM on 8gaussians is guided
outside the network (classifier-free guidance, 2 NFE per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tvmlib.data.toy2d import num_classes, sample_toy2d
from tvmlib.training.weights import checkpoints_dir, load_verified, read_manifest

# ---- 2D ---------------------------------------------------------------------------------------
METHODS_2D = ("fm", "meanflow", "tvm")
MODELS_2D = (("fm", "checkerboard"), ("meanflow", "checkerboard"), ("tvm", "checkerboard"),
             ("fm", "8gaussians"), ("tvm", "8gaussians"))
TVM_GUIDANCE_RANGE = (1.0, 3.0)  # w range the conditional TVM is trained on
FM_CFG_SCALE = 1.5  # default guidance of the conditional 2D models (notebook 02)
MANIFEST_2D = "manifest_2d.json"


def model_name(method: str, dataset: str) -> str:
    if (method, dataset) not in MODELS_2D:
        valid = ", ".join(f"{m}_{d}" for m, d in MODELS_2D)
        raise ValueError(f"no committed 2D model {method!r} on {dataset!r}; valid: {valid}")
    return f"{method}_{dataset}"


def checkpoint_path_2d(method: str, dataset: str, folder: str | Path | None = None) -> Path:
    return Path(folder or checkpoints_dir()) / f"2d_{model_name(method, dataset)}.pt"


def default_guidance(method: str, dataset: str) -> float | None:
    """The guidance w used when none is given: None for unconditional models."""
    return FM_CFG_SCALE if num_classes(dataset) else None


def sampler_2d(method: str, guidance: float | None = None) -> dict:
    """How a committed 2D model is sampled: FM by Euler on its velocity, guided outside the
    network when w != 1; MeanFlow by flow-map jumps; TVM by flow-map jumps with w as an input
    and the scaled parameterization f = (s - t) w F (TVM Sec. 4)."""
    if method not in METHODS_2D:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS_2D)}")
    if method == "fm":
        return {"solver": "euler", "cfg_scale": guidance if guidance not in (None, 1.0) else None}
    if method == "meanflow":
        return {"solver": "flowmap"}
    return {"solver": "flowmap", "w": guidance, "scale_param": True}


def read_manifest_2d(folder: str | Path | None = None) -> dict:
    return read_manifest(Path(folder or checkpoints_dir()) / MANIFEST_2D,
                         "Regenerate the 2D checkpoints with: python -m tvmlib.apps.checkpoints2d")


def load_2d(method: str, dataset: str, folder: str | Path | None = None):
    """The committed ``method`` model on ``dataset`` (eval mode, gradients off). Raises
    FileNotFoundError (missing file or manifest entry) or RuntimeError (sha256 mismatch,
    unreadable file, or a file of another method), each naming the regenerating command."""
    from tvmlib.nn import MLP2D

    path = checkpoint_path_2d(method, dataset, folder)
    fix = ("Regenerate it with:\n  python -m tvmlib.apps.checkpoints2d --only "
           f"{model_name(method, dataset)}")

    def build(ckpt: dict) -> MLP2D:
        if (ckpt.get("method"), ckpt.get("dataset")) != (method, dataset):
            raise ValueError(f"the file holds {ckpt.get('method')!r} on {ckpt.get('dataset')!r}")
        net = MLP2D(**ckpt["kwargs"])
        net.load_state_dict(ckpt["state_dict"])
        return net

    net = load_verified(path, read_manifest_2d(folder), MANIFEST_2D, "2D checkpoint", fix, build)
    return net.eval().requires_grad_(False)


def eval_set(dataset: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor | None, Tensor]:
    """(noise (n, 2), labels (n,) or None, reference data (n, 2)) for W2 evaluation; with
    labels the reference is class-matched (row i of the reference has class y[i])."""
    g, K = torch.Generator().manual_seed(seed + 10), num_classes(dataset)
    noise = torch.randn(n, 2, generator=g)
    y = torch.randint(0, K, (n,), generator=g) if K else None
    return noise, y, toy_data(dataset, n, y, g)


def toy_data(dataset: str, n: int, y: Tensor | None, generator: torch.Generator) -> Tensor:
    """n data points (n, 2); with labels y (n,), class-matched (row i has class y[i])."""
    return sample_toy2d(dataset, n, generator)[0] if y is None else \
        class_matched_data(dataset, y, generator)


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


# ---- Fashion-MNIST ----------------------------------------------------------------------------
FASHION = "fashion-mnist"
FASHION_CLASSES_K = 10  # the null class (label dropout) is 10
MANIFEST_FASHION = "manifest_fashion.json"
FASHION_RESULTS = "figures/07_widget_models.json"  # the GPU run that made the files
FASHION_GPU_COMMAND = "python -m tvmlib.apps.experiment configs/experiments/fashion_widgets.yaml"
FASHION_EXPORT_COMMAND = ("python -m tvmlib.apps.checkpoints_fashion --export runs/fashion_widgets "
                          f"--results {FASHION_RESULTS}")
FASHION_MANIFEST_COMMAND = "python -m tvmlib.apps.checkpoints_fashion --manifest"


@dataclass(frozen=True)
class FashionModel:
    file: str
    kind: str  # "fm": a velocity field (ODE solver); "tvm": a flow map (jumps)
    description: str
    max_steps: int  # DPM-Solver++(2M) steps for FM, jumps for TVM, in the explorer


FASHION_MODELS = {
    "fm_teacher": FashionModel("fashion_fm_teacher.pt", "fm",
                               "flow-matching teacher (the CMT teacher)", 128),
    "tvm_scratch": FashionModel("fashion_tvm_scratch.pt", "tvm",
                                "TVM trained from random init", 16),
    "tvm_cmt": FashionModel("fashion_tvm_cmt.pt", "tvm",
                            "TVM post-trained from CMT mid-trained weights", 16),
}
# The CMT teacher's sampler (DPM-Solver++ on the log-SNR grid with exact ends) and TVM's jumps.
FASHION_SAMPLERS = {"fm": {"solver": "dpm++2m", "grid": "logsnr"}, "tvm": {"solver": "flowmap"}}


def regenerate_advice() -> str:
    return (f"Regenerate the Fashion-MNIST checkpoints on a GPU (about 11 min on an H200) with:\n"
            f"  {FASHION_GPU_COMMAND}\nthen export the runs' EMA weights with:\n"
            f"  {FASHION_EXPORT_COMMAND}\nthen refresh the manifest with:\n"
            f"  {FASHION_MANIFEST_COMMAND} --results {FASHION_RESULTS}")


def fashion_model(name: str) -> FashionModel:
    if name not in FASHION_MODELS:
        raise ValueError(f"no committed Fashion-MNIST model {name!r}; valid: "
                         f"{', '.join(FASHION_MODELS)} (files made by: {FASHION_GPU_COMMAND})")
    return FASHION_MODELS[name]


def check_steps(name: str, steps: int) -> FashionModel:
    """The model's entry; ValueError unless ``steps`` is in 1..max_steps."""
    info = fashion_model(name)
    if not 1 <= steps <= info.max_steps:
        raise ValueError(f"steps for {name} ({info.kind}) must be in 1..{info.max_steps}, got "
                         f"{steps}")
    return info


def read_manifest_fashion(folder: str | Path | None = None) -> dict:
    return read_manifest(Path(folder or checkpoints_dir()) / MANIFEST_FASHION,
                         regenerate_advice())


def dit_from_export(ckpt: dict):
    """The fp32 DiT of an exported file ({"state_dict", "model", "num_classes", ...})."""
    from tvmlib.nn import DiT, dit_from_preset

    kwargs = {k: v for k, v in ckpt["model"].items() if k != "preset"}
    kwargs.update(input_size=32, in_channels=1, num_classes=ckpt["num_classes"])
    preset = ckpt["model"].get("preset")
    net = dit_from_preset(preset, **kwargs) if preset else DiT(**kwargs)
    net.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    return net


def load_fashion(name: str, folder: str | Path | None = None,
                 device: str | torch.device = "cpu"):
    """The committed model ``name`` (see :data:`FASHION_MODELS`) as an fp32 DiT in eval mode,
    gradients off, with ``attn_backend = "sdpa"`` (runs on a CPU). Raises ValueError (unknown
    name), FileNotFoundError (missing file or manifest entry) or RuntimeError (sha256 mismatch,
    unreadable or mismatched file), each naming the commands that regenerate the files."""
    info, folder = fashion_model(name), Path(folder or checkpoints_dir())

    def build(ckpt: dict):
        if ckpt.get("kind") != info.kind:
            raise ValueError(f"the file holds a {ckpt.get('kind')!r} model, expected "
                             f"{info.kind!r}")
        return dit_from_export(ckpt)

    net = load_verified(folder / info.file, read_manifest_fashion(folder), MANIFEST_FASHION,
                        "Fashion-MNIST checkpoint", regenerate_advice(), build)
    net.attn_backend = "sdpa"
    return net.to(device).eval().requires_grad_(False)
