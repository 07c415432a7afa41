"""Make the three committed Fashion-MNIST DiT-T/2 models of the sampling explorer (notebook 07):
the FM teacher, TVM from scratch and CMT -> TVM of the 300-second recipe (fashion_widgets.yaml).

    python -m tvmlib.apps.experiment configs/experiments/fashion_widgets.yaml  # on a GPU, ~11 min
    python -m tvmlib.apps.checkpoints_fashion --export runs/fashion_widgets \\
        --results figures/07_widget_models.json
    python -m tvmlib.apps.checkpoints_fashion --manifest      # (re)write manifest and README
    python -m tvmlib.apps.checkpoints_fashion                 # check every file

``--export`` saves the runs' evaluation-EMA weights in bf16 with what rebuilds the network;
``--manifest`` records each file's size, sha256, FDs and the run's provenance (checked against
the results file) in ``data/checkpoints/manifest_fashion.json`` and writes
``README_fashion.md`` from it. ``tvmlib.evaluation.pretrained.load_fashion`` loads them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tvmlib.apps import cli
from tvmlib.evaluation.pretrained import (
    FASHION_EXPORT_COMMAND,
    FASHION_GPU_COMMAND,
    FASHION_MANIFEST_COMMAND,
    FASHION_MODELS,
    FASHION_RESULTS,
    FASHION_SAMPLERS,
    MANIFEST_FASHION,
    load_fashion,
    read_manifest_fashion,
    regenerate_advice,
)
from tvmlib.training.build import DIT_SIZE_KEYS
from tvmlib.training.checkpoint import read_checkpoint
from tvmlib.training.config import load_config
from tvmlib.training.weights import checkpoints_dir, sha256_file
from tvmlib.utils.atomic import atomic_save, atomic_write_text
from tvmlib.utils.paths import repo_root

README = "README_fashion.md"
RUN_OF = {"fm_teacher": "teacher", "tvm_scratch": "scratch", "tvm_cmt": "cmt"}


def _fd_of(run: dict, name: str) -> dict:
    """The FDs a file records, from its run's results record: the teacher's at its solver
    steps ("dpm++2m_16"), a TVM run's at 1 and 2 jumps ("fd_1", "fd_2")."""
    final = run["final"]["ema"]
    if FASHION_MODELS[name].kind == "fm":
        solver = run["config"]["eval"]["solver"]
        return {f"{solver}_{k}": v for k, v in final.items()}
    return {f"fd_{k}": v for k, v in final.items()}


def export(run_root: Path, results_path: Path, folder: Path, command: str) -> None:
    """Save the EMA weights (bf16) of the experiment's teacher, scratch and cmt runs."""
    runs = json.loads(results_path.read_text())["results"]["runs"]
    for name, info in FASHION_MODELS.items():
        run_dir = run_root / RUN_OF[name]
        cfg = load_config(run_dir / "config.yaml")
        ema = read_checkpoint(run_dir / "checkpoint.pt")["ema"]["module"]
        sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ema.items()}
        model = {"preset": cfg.model.preset, **{k: getattr(cfg.model, k) for k in DIT_SIZE_KEYS
                                                if getattr(cfg.model, k) is not None}}
        atomic_save({"state_dict": sd, "model": model, "num_classes": cfg.model.num_classes,
                     "kind": info.kind, "init": RUN_OF[name],
                     # steps made (a time-budgeted run stops before cfg.train.steps)
                     "steps": runs[RUN_OF[name]].get("steps_done", cfg.train.steps),
                     "fd": _fd_of(runs[RUN_OF[name]], name), "command": command,
                     "sampler": {**FASHION_SAMPLERS[info.kind], "steps": cfg.eval.steps}},
                    folder / info.file)


def run_provenance(results: dict, ckpts: dict[str, dict], results_name: str) -> dict:
    """Commit, device, torch and date of the GPU run, from its results file, after checking
    that the file belongs to the run that wrote the checkpoints (the same FDs)."""
    runs = results["results"]["runs"]
    for name, ckpt in ckpts.items():
        ours, theirs = ckpt["fd"], _fd_of(runs[RUN_OF[name]], name)
        if ours != theirs:
            raise ValueError(f"{results_name} is not from the run that wrote "
                             f"{FASHION_MODELS[name].file}: FD {ours} in the file, {theirs} in "
                             "the results. Pass the run's results file with --results.")
    prov = results["provenance"]
    return {**{k: prov.get(k) for k in ("commit", "device", "torch", "date")},
            "metric": prov.get("metric") or _metric_of(runs[RUN_OF["tvm_scratch"]])}


def _metric_of(run: dict) -> str:
    """The experiment runner's final metric in words (its results record none)."""
    e = run["config"]["eval"]
    n = e.get("final_samples") or e["num_samples"]
    return (f"classifier Frechet distance ({run['config']['data']['dataset']} SmallCNN "
            f"features, {n} samples vs 10000 test images)")


def manifest_entry(name: str, path: Path, ckpt: dict, prov: dict, results_name: str) -> dict:
    extra = {k: ckpt[k] for k in ("sampler", "init", "scale_param") if k in ckpt}
    return {"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "kind": ckpt["kind"], "steps": ckpt["steps"], "fd": ckpt["fd"],
            "model": ckpt["model"], "num_classes": ckpt["num_classes"],
            "description": FASHION_MODELS[name].description, "command": ckpt["command"],
            "results": results_name, **prov, **extra}


def _metrics(e: dict) -> str:
    if e["kind"] == "fm":
        s = e.get("sampler", {})
        return ", ".join(f"FD {v:.1f} ({s.get('solver', k)}, {k.rsplit('_', 1)[-1]} NFE)"
                         for k, v in e["fd"].items())
    return f"FD {e['fd']['fd_1']:.1f} (1 NFE), {e['fd']['fd_2']:.1f} (2 NFE)"


def write_readme_fashion(folder: Path) -> None:
    """Rewrite ``<folder>/README_fashion.md`` from the manifest (no number typed by hand)."""
    manifest = read_manifest_fashion(folder)
    rows = [f"| {fn} | {e['bytes']} | {e['sha256']} | {e['description']} | {e['steps']} | "
            f"{_metrics(e)} | `{e['command']}` |" for fn, e in sorted(manifest.items())]
    runs = sorted({(e["commit"], e["device"], e["torch"], e["results"], e["metric"] or "")
                   for e in manifest.values()})
    made = "; ".join(f"commit `{c}` on {d} (torch {t}), results in `{r}`"
                     for c, d, t, r, _ in runs)
    text = "\n".join([
        "# data/checkpoints: Fashion-MNIST DiT-T/2 models for the sampling explorer (notebook 07)",
        "",
        "Class-conditional DiT-T/2 (32x32, 1 channel, 10 classes) EMA weights in bf16 from one "
        "GPU run of `fashion_widgets.yaml` (the 300-second recipe, unguided):",
        "the flow-matching teacher and TVM trained from random init and from CMT. "
        "`tvmlib.evaluation.pretrained.load_fashion`",
        "checks each file against the sha256 in `manifest_fashion.json` and returns the fp32 "
        f"network. This section is written by `{FASHION_MANIFEST_COMMAND}`.",
        f"Produced by {made}.",
        f"FD, measured on the GPU: {'; '.join(sorted({m for *_, m in runs}))}; not comparable "
        "with Inception FID.",
        f"Regenerate on a GPU with `{FASHION_GPU_COMMAND}`, then `{FASHION_EXPORT_COMMAND}` "
        "and `--manifest`.",
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
    missing = [m.file for m in FASHION_MODELS.values() if not (folder / m.file).is_file()]
    if missing:
        raise FileNotFoundError(f"missing in {folder}: {', '.join(missing)}. "
                                f"{regenerate_advice()}")
    if not results_path.is_file():
        raise FileNotFoundError(f"results file {results_path} not found: pass the JSON the GPU "
                                "run wrote with --results")
    root = repo_root()
    results_name = (str(results_path.resolve().relative_to(root))
                    if results_path.resolve().is_relative_to(root) else str(results_path))
    ckpts = {name: torch.load(folder / m.file, map_location="cpu", weights_only=True)
             for name, m in FASHION_MODELS.items()}
    prov = run_provenance(json.loads(results_path.read_text()), ckpts, results_name)
    prov.update({k: v for k, v in (("commit", commit), ("device", device)) if v is not None})
    manifest = {m.file: manifest_entry(name, folder / m.file, ckpts[name], prov, results_name)
                for name, m in FASHION_MODELS.items()}
    atomic_write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                      folder / MANIFEST_FASHION)
    write_readme_fashion(folder)
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = cli.Parser(prog="python -m tvmlib.apps.checkpoints_fashion",
                    description=__doc__.split("\n\n")[0])
    p.add_argument("--export", metavar="RUNS", help="the experiment's run folder "
                   "(runs/fashion_widgets): save its teacher, scratch and cmt EMA weights")
    p.add_argument("--manifest", action="store_true", help=f"(re)write {MANIFEST_FASHION} and "
                   f"{README} from the files (default: only check the files)")
    p.add_argument("--folder", default=None, help="default: data/checkpoints")
    p.add_argument("--results", default=FASHION_RESULTS, help="the GPU run's results JSON "
                   f"(default {FASHION_RESULTS})")
    p.add_argument("--commit", default=None, help="override the results file's commit")
    p.add_argument("--device", default=None, help="override the results file's device")
    args = p.parse_args(argv)
    folder = Path(args.folder) if args.folder else checkpoints_dir()
    results = Path(args.results)
    if not results.is_absolute() and not results.exists():
        results = repo_root() / results
    if args.export:
        command = "python -m tvmlib.apps.checkpoints_fashion " + " ".join(
            sys.argv[1:] if argv is None else argv)
        export(Path(args.export), results, folder, command)
    if args.manifest or args.export:
        manifest = write_manifest_fashion(folder, results, args.commit, args.device)
        total = sum(e["bytes"] for e in manifest.values())
        print(f"wrote {folder / MANIFEST_FASHION} and {folder / README} ({len(manifest)} files, "
              f"{total / 1e6:.1f} MB)")
    for name, m in FASHION_MODELS.items():
        net = load_fashion(name, folder)
        entry = read_manifest_fashion(folder)[m.file]
        print(f"{name:<12} ok: {m.file}, {sum(q.numel() for q in net.parameters())} params, "
              f"{_metrics(entry)}")


if __name__ == "__main__":
    cli.run(main)
