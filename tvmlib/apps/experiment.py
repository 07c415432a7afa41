"""Run an experiment: a YAML list of runs (``configs/experiments/``) trained and evaluated in
order by the one runner (``tvmlib.experiments.runner``), its results written after every run.

    python -m tvmlib.apps.experiment configs/experiments/cmt_fashion.yaml [--out FILE.json]
        [--set KEY=VALUE ...] [--only RUN ...] [--work-dir DIR]
    python -m tvmlib.apps.experiment --merge A.json B.json ... --out C.json [--note TEXT]

``--set`` overrides a key of every run (``eval.num_samples=500``). ``--only`` trains just the
named runs; the runs they start from must already be in the work folder (``runs/<name>/``), so an
experiment can be split over calls or GPUs and the parts joined with ``--merge``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tvmlib.apps import cli
from tvmlib.experiments.merge import merge_results
from tvmlib.experiments.runner import run_experiment
from tvmlib.training.config import ConfigError, load_experiment
from tvmlib.utils.atomic import atomic_write_json


def main(argv: list[str] | None = None) -> dict:
    ap = cli.Parser(prog="python -m tvmlib.apps.experiment", description=__doc__)
    ap.add_argument("config", nargs="?", help="an experiment YAML (configs/experiments/)")
    ap.add_argument("--out", help="results JSON (default figures/<experiment name>.json)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of every run, e.g. train.steps=100")
    ap.add_argument("--work-dir", help="run folders (default runs/<experiment name>)")
    ap.add_argument("--only", nargs="+", metavar="RUN", help="train only these runs")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="instead of running: join these "
                    "results files (later ones add runs) into --out")
    ap.add_argument("--note", help="with --merge: a note for the joined file's provenance (how "
                    "the parts were made)")
    args = ap.parse_args(argv)
    if args.merge:
        if not args.out:
            ap.error("--merge needs --out")
        doc = merge_results([json.loads(Path(f).read_text()) for f in args.merge], args.note)
        atomic_write_json(doc, args.out, indent=None)
        print(f"merged {len(args.merge)} files into {args.out}", flush=True)
        return doc
    if not args.config:
        ap.error("give an experiment config (or --merge)")
    try:
        exp, runs = load_experiment(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        ap.error(str(err))
    unknown = sorted(set(args.only or []) - {r.name for r in runs})
    if unknown:
        ap.error(f"--only: unknown runs {unknown}; the experiment has {[r.name for r in runs]}")
    if args.work_dir:
        exp.work_dir = args.work_dir
    command = "python -m tvmlib.apps.experiment " + " ".join(
        sys.argv[1:] if argv is None else argv)
    return run_experiment(exp, runs, args.out, args.only, command,
                          log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
    cli.run(main)
