"""Three committed Fashion-MNIST DiT-T/2 models (FM teacher, TVM from scratch, CMT -> TVM)
for the image side of the sampling explorer (notebook 07).

They come from one GPU run of the CMT experiment (notebook 05, ``tvmlib.experiments.cmt``):
class-conditional DiT-T/2 (32x32, 1 channel, 10 classes, null class 10), EMA weights saved in
bf16 by its ``--export``. ``data/checkpoints/manifest_fashion.json`` records each file's size,
sha256, metrics and provenance; ``load_fashion`` checks the sha256 and returns the fp32 network.
Regenerate them on a GPU (about 7 minutes on one H200), then refresh the manifest and
``data/checkpoints/README_fashion.md`` on any machine:

    python -m tvmlib.experiments.cmt --config configs/cmt_fashion.yaml \\
        --out runs/cmt_out/05_cmt.json --export data/checkpoints
    python -m tvmlib.checkpoints_fashion --manifest --results runs/cmt_out/05_cmt.json

``python -m tvmlib.checkpoints_fashion`` alone checks every file against the manifest.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tvmlib.evaluation.classifier import checkpoints_dir, load_verified, sha256_file
from tvmlib.experiments.cmt import build_model, flowmap_samples
from tvmlib.nn.dit import DiT
from tvmlib.utils.paths import repo_root
from tvmlib.core.solvers import Samples
from tvmlib.training.loop import atomic_write_text
from tvmlib.trajectories import teacher_trajectory

DATASET = "fashion-mnist"
NUM_CLASSES = 10  # the null class (label dropout) is 10
MANIFEST = "manifest_fashion.json"
README = "README_fashion.md"
RESULTS = "figures/05_cmt.json"  # the run's results file: FDs and provenance (commit, device)
GPU_COMMAND = ("python -m tvmlib.experiments.cmt --config configs/cmt_fashion.yaml "
               "--out runs/cmt_out/05_cmt.json --export data/checkpoints")
MANIFEST_COMMAND = "python -m tvmlib.checkpoints_fashion --manifest"
MAX_STEPS = {"fm": 128, "tvm": 16}  # DPM-Solver++(2M) steps for FM, jumps for TVM
TEACHER_SOLVER = {"solver": "dpm++2m", "grid": "logsnr"}  # the CMT teacher's sampler


@dataclass(frozen=True)
class FashionModel:
    file: str
    kind: str  # "fm": a velocity field, sampled by an ODE solver; "tvm": a flow map
    description: str


MODELS = {
    "fm_teacher": FashionModel("fashion_fm_teacher.pt", "fm",
                               "flow-matching teacher (the CMT teacher)"),
    "tvm_scratch": FashionModel("fashion_tvm_scratch.pt", "tvm",
                                "TVM post-trained from random init"),
    "tvm_cmt": FashionModel("fashion_tvm_cmt.pt", "tvm",
                            "TVM post-trained from CMT mid-trained weights"),
}


def regenerate_advice() -> str:
    return (f"Regenerate the Fashion-MNIST checkpoints on a GPU (about 7 min) with:\n"
            f"  {GPU_COMMAND}\nthen refresh the manifest with:\n"
            f"  {MANIFEST_COMMAND} --results runs/cmt_out/05_cmt.json")


def model_info(name: str) -> FashionModel:
    if name not in MODELS:
        raise ValueError(f"no committed Fashion-MNIST model {name!r}; valid: "
                         f"{', '.join(MODELS)} (files made by: {GPU_COMMAND})")
    return MODELS[name]


def check_steps(name: str, steps: int) -> str:
    """Raise ValueError unless ``steps`` is in 1..MAX_STEPS for model ``name``; returns its kind."""
    kind = model_info(name).kind
    if not 1 <= steps <= MAX_STEPS[kind]:
        raise ValueError(f"steps for {name} ({kind}) must be in 1..{MAX_STEPS[kind]}, got {steps}")
    return kind


def checkpoint_path(name: str, folder: str | Path | None = None) -> Path:
    folder = Path(folder) if folder is not None else checkpoints_dir()
    return folder / model_info(name).file


def read_manifest_fashion(folder: str | Path | None = None) -> dict:
    path = (Path(folder) if folder is not None else checkpoints_dir()) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def load_fashion(name: str, folder: str | Path | None = None,
                 device: str | torch.device = "cpu") -> DiT:
    """The committed model ``name`` (see ``MODELS``) as an fp32 DiT in eval mode, gradients
    off, with ``attn_backend = "sdpa"`` (runs on a CPU).

    Raises ValueError (unknown name), FileNotFoundError (missing file or manifest entry) or
    RuntimeError (sha256 mismatch, unreadable or mismatched file), each naming the commands
    that regenerate the files."""
    info = model_info(name)
    folder = Path(folder) if folder is not None else checkpoints_dir()

    def build(ckpt: dict) -> DiT:
        if ckpt.get("kind") != info.kind:
            raise ValueError(f"the file holds a {ckpt.get('kind')!r} model, expected "
                             f"{info.kind!r}")
        net = build_model(ckpt["model"], ckpt["num_classes"], seed=0, device="cpu")
        net.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
        return net

    net = load_verified(folder / info.file, read_manifest_fashion(folder), MANIFEST,
                        "Fashion-MNIST checkpoint", regenerate_advice(), build)
    net.attn_backend = "sdpa"
    return net.to(device).eval().requires_grad_(False)


# ---- sampling: one entry point for both kinds ---------------------------------------------

@torch.no_grad()
def sample_fashion(name: str, net: DiT, noise: Tensor, steps: int, y: Tensor,
                   batch: int = 250) -> Samples:
    """Images (B, 1, 32, 32) in [-1, 1] from ``noise`` (B, 1, 32, 32) and labels ``y`` (B,).

    * fm (the teacher): DPM-Solver++(2M) on the log-SNR grid with exact ends, ``steps`` NFE
      (``tvmlib.trajectories.teacher_trajectory``, the sampler of the CMT experiment);
    * tvm: ``steps`` uniform flow-map jumps x <- x + (s - t) F(x, t, s, y)  (TVM Eq. 4), 1 NFE
      each (``tvmlib.experiments.cmt.flowmap_samples``, as in the GPU evaluation).
    Samples are clamped to [-1, 1]; ``batch`` bounds the memory of one network call.
    """
    kind = check_steps(name, steps)
    if noise.shape[1:] != (1, 32, 32) or y.shape != (len(noise),):
        raise ValueError(f"noise must be (B, 1, 32, 32) with labels (B,), got "
                         f"{tuple(noise.shape)} and {tuple(y.shape)}")
    if kind == "tvm":
        x = flowmap_samples(net, noise, y, steps, batch, "sdpa")
        return Samples(x, steps, torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64))
    parts = [teacher_trajectory(net, noise[i:i + batch], steps=steps, y=y[i:i + batch],
                                **TEACHER_SOLVER) for i in range(0, len(noise), batch)]
    x = torch.cat([p.x for p in parts]).clamp(-1, 1)
    return Samples(x, parts[0].nfe, parts[0].times)


# ---- manifest and README -------------------------------------------------------------------

def run_provenance(results: dict, ckpts: dict[str, dict], results_name: str) -> dict:
    """Commit, device, torch and date of the GPU run, from its results file, after checking
    that the file belongs to the run that wrote the checkpoints (same FDs and command)."""
    prov = results["provenance"]
    final = {run: rows[-1] for run, rows in results["runs"].items()}
    for name, ckpt in ckpts.items():
        if MODELS[name].kind == "fm":
            ours, theirs = next(iter(ckpt["fd"].values())), results["stages"]["teacher_fd"]
        else:
            ours, theirs = ckpt["fd"]["fd_1"], final[ckpt["init"]]["fd_1"]
        if ours != theirs:
            raise ValueError(f"{results_name} is not from the run that wrote "
                             f"{MODELS[name].file}: FD {ours} in the file, {theirs} in the "
                             f"results. Pass the run's results file with --results.")
    return {k: prov.get(k) for k in ("commit", "device", "torch", "date", "metric")}


def manifest_entry(name: str, path: Path, ckpt: dict, prov: dict, results_name: str) -> dict:
    extra = {k: ckpt[k] for k in ("sampler", "init", "scale_param") if k in ckpt}
    return {"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "kind": ckpt["kind"], "steps": ckpt["steps"], "fd": ckpt["fd"],
            "model": ckpt["model"], "num_classes": ckpt["num_classes"],
            "description": MODELS[name].description, "command": ckpt["command"],
            "results": results_name, **prov, **extra}


def _metrics(e: dict) -> str:
    if e["kind"] == "fm":
        s = e.get("sampler", {})
        return ", ".join(f"FD {v:.1f} ({s.get('solver', k)}, {s.get('steps', '?')} NFE)"
                         for k, v in e["fd"].items())
    return f"FD {e['fd']['fd_1']:.1f} (1 NFE), {e['fd']['fd_2']:.1f} (2 NFE)"


def write_readme_fashion(folder: Path) -> None:
    """Rewrite ``<folder>/README_fashion.md`` from the manifest (no number typed by hand)."""
    manifest = read_manifest_fashion(folder)
    rows = [f"| {fn} | {e['bytes']} | {e['sha256']} | {e['description']} | {e['steps']} | "
            f"{_metrics(e)} | `{e['command']}` |"
            for fn, e in sorted(manifest.items())]
    runs = sorted({(e["commit"], e["device"], e["torch"], e["results"], e["metric"])
                   for e in manifest.values()})
    made = "; ".join(f"commit `{c}` on {d} (torch {t}), results in `{r}`"
                     for c, d, t, r, _ in runs)
    metrics = "; ".join(sorted({m for *_, m in runs}))
    text = "\n".join([
        "# data/checkpoints: Fashion-MNIST DiT-T/2 models for the sampling explorer (notebook 07)",
        "",
        "Class-conditional DiT-T/2 (32x32, 1 channel, 10 classes) EMA weights in bf16 from one "
        "GPU run of the CMT",
        "experiment (`--export`): the flow-matching teacher and TVM post-trained from random "
        "init and from CMT.",
        "`tvmlib.checkpoints_fashion.load_fashion` checks each file against the sha256 in "
        "`manifest_fashion.json`",
        "and returns the fp32 network. This section is written from that manifest by "
        f"`{MANIFEST_COMMAND}`.",
        f"Produced by {made}.",
        f"FD, measured on the GPU: {metrics}; not comparable with Inception FID.",
        f"Regenerate on a GPU with `{GPU_COMMAND}`.",
        "",
        "| file | bytes | sha256 | model | train steps | metrics | command |",
        "|---|---:|---|---|---:|---|---|",
        *rows,
        "",
    ])
    atomic_write_text(text, folder / README)


def write_manifest_fashion(folder: Path, results_path: Path, commit: str | None = None,
                           device: str | None = None) -> dict:
    """(Re)write ``<folder>/manifest_fashion.json`` and ``README_fashion.md`` from the three
    files and the run's results JSON (``commit`` / ``device`` override its provenance)."""
    missing = [m.file for m in MODELS.values() if not (folder / m.file).is_file()]
    if missing:
        raise FileNotFoundError(f"missing in {folder}: {', '.join(missing)}. "
                                f"{regenerate_advice()}")
    if not results_path.is_file():
        raise FileNotFoundError(f"results file {results_path} not found: pass the JSON the GPU "
                                "run wrote (its --out) with --results")
    results_name = (str(results_path.resolve().relative_to(repo_root()))
                    if results_path.resolve().is_relative_to(repo_root()) else str(results_path))
    ckpts = {name: torch.load(folder / m.file, map_location="cpu", weights_only=True)
             for name, m in MODELS.items()}
    prov = run_provenance(json.loads(results_path.read_text()), ckpts, results_name)
    prov.update({k: v for k, v in (("commit", commit), ("device", device)) if v is not None})
    manifest = {m.file: manifest_entry(name, folder / m.file, ckpts[name], prov, results_name)
                for name, m in MODELS.items()}
    atomic_write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", folder / MANIFEST)
    write_readme_fashion(folder)
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", action="store_true", help=f"(re)write {MANIFEST} and {README} "
                   "from the files (default: only check the files against the manifest)")
    p.add_argument("--folder", default=None, help="default: data/checkpoints")
    p.add_argument("--results", default=RESULTS, help="the GPU run's results JSON, for its "
                   f"provenance (default {RESULTS})")
    p.add_argument("--commit", default=None, help="override the results file's commit")
    p.add_argument("--device", default=None, help="override the results file's device")
    args = p.parse_args(argv)
    folder = Path(args.folder) if args.folder else checkpoints_dir()
    if args.manifest:
        results = Path(args.results)
        if not results.is_absolute() and not results.exists():
            results = repo_root() / results
        manifest = write_manifest_fashion(folder, results, args.commit, args.device)
        total = sum(e["bytes"] for e in manifest.values())
        print(f"wrote {folder / MANIFEST} and {folder / README} ({len(manifest)} files, "
              f"{total / 1e6:.1f} MB)")
    for name, m in MODELS.items():
        net = load_fashion(name, folder)
        entry = read_manifest_fashion(folder)[m.file]
        print(f"{name:<12} ok: {m.file}, {sum(p.numel() for p in net.parameters())} params, "
              f"{_metrics(entry)}")


if __name__ == "__main__":
    main()
