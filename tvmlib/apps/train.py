"""Train one run from a config: the ``python -m tvmlib.apps.train`` command line.

    python -m tvmlib.apps.train --config configs/fashion_tvm.yaml [--set train.steps=200] [--fresh]
    torchrun --nproc_per_node=8 -m tvmlib.apps.train --config configs/im256_w2.yaml

The run folder (``runs/<name>``, or ``out_dir``) gets ``config.yaml``, ``checkpoint.pt``,
``log.csv`` and ``log.json``; an existing checkpoint is resumed (the same run only: other
settings are refused) unless ``--fresh``. The folder is locked while the run trains. Ctrl-C or
SIGTERM checkpoints at the next step boundary (exit code 130); an error is one line (exit
code 2; ``--debug`` shows the traceback). Under ``torchrun`` the process group is set up here
(NCCL on GPUs, gloo on CPUs), every process trains on its slice of each global batch, and only
rank 0 writes.
"""

from __future__ import annotations

from tvmlib.apps import cli
from tvmlib.experiments.runner import train_run
from tvmlib.training.config import ConfigError, load_config
from tvmlib.training.distributed import init_distributed, shutdown


def main(argv: list[str] | None = None) -> None:
    ap = cli.Parser(prog="python -m tvmlib.apps.train", description=__doc__)
    ap.add_argument("--config", required=True, help="a YAML file under configs/")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="override a config value, e.g. train.steps=200")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)  # fails here, before any work
    except (ConfigError, FileNotFoundError) as err:
        ap.error(str(err))
    rank, world, device = init_distributed(cfg.train.dist_timeout_s)
    try:
        state = train_run(cfg, resume=not args.fresh, device=device, world=world,
                          log=(lambda msg: print(msg, flush=True)) if rank == 0 else
                          (lambda msg: None))
    finally:
        shutdown()
    if state.history and rank == 0:
        print(f"[tvmlib.apps.train] done at step {state.step}: {state.history[-1]}", flush=True)


if __name__ == "__main__":
    cli.run(main)
