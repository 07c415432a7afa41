"""Operator count of one TVM training step per Lipschitz variant of the DiT.

A small DiT trains *launch-bound* on a GPU: its matrices are small, so the time of a TVM step
(forward, JVP, backward) follows the number of kernels more than the number of FLOPs. That is why
``tvmlib.training.graphs`` replays the step as a CUDA graph, and why the all-on DiT of the
Lipschitz ablation steps slower than the plain one although its extra FLOPs are negligible. This
script counts the top-level ``aten::`` operators the PyTorch profiler records for one step on
the CPU (each launches one or more kernels on a GPU; the sequence of operators does not depend on
the device), per Lipschitz variant of the ablation
(``configs/experiments/lipschitz_ablation.yaml``):

    python -m tvmlib.apps.bench.op_count [--preset DiT-S/2] [--variants off on ...] [--batch 2]
        [--out figures/op_count_DiT-S-2.json]

Attention runs on the ``math`` backend (the Triton kernel needs a GPU); on a GPU the ``triton``
backend replaces each attention's softmax, JVP and backward ops by a few kernels, so the absolute
counts there are lower, while the differences between variants (the norms) stay.
Results: ``{"provenance", "results": {"preset", "batch", "rows": [{"variant", "top_level",
"all"}]}}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from tvmlib.apps import cli
from tvmlib.experiments.results import VARIANTS, lipschitz_flags
from tvmlib.training.build import build_loss, build_model
from tvmlib.training.config import config_from_dict
from tvmlib.utils.atomic import atomic_write_json
from tvmlib.utils.paths import figures_dir
from tvmlib.utils.provenance import provenance


def _nested(event) -> bool:
    """Whether an aten op was called by another aten op (then it launches nothing itself)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def count_step_ops(preset: str, variant: str, batch: int = 2, seed: int = 0) -> dict:
    """{"top_level", "all"}: aten operators of one TVM loss + backward of the Lipschitz
    ablation's model and loss (through ``tvmlib.training.build``) with a ``preset`` DiT and the
    ``variant``'s changes, on 32x32x1 images of 10 classes."""
    cfg = config_from_dict({  # the Lipschitz ablation's model and loss
        "model": {"preset": preset, "guidance": True, "attn_backend": "math",
                  "lipschitz": lipschitz_flags(variant)},
        "loss": {"name": "tvm", "cfg_scale": 2.0}, "train": {"seed": seed}})
    net = build_model(cfg)
    loss_fn = build_loss(cfg, net)
    data = (torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,)))  # (B, 1, 32, 32), (B,)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        torch.manual_seed(seed + 1)
        loss, _ = loss_fn(net, data)
        loss.backward()

    step()  # the first step does any lazy initialisation
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    return {"top_level": sum(not _nested(e) for e in aten), "all": len(aten)}


def main(argv: list[str] | None = None) -> dict:
    ap = cli.Parser(prog="python -m tvmlib.apps.bench.op_count",
                    description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="DiT-S/2", help="DiT preset (default: DiT-S/2)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS),
                    help=f"LipschitzConfig variants (default: all of {', '.join(VARIANTS)})")
    ap.add_argument("--batch", type=int, default=2, help="batch size (the count does not "
                    "depend on it)")
    ap.add_argument("--out", default=None, help="JSON path (default: "
                    "figures/op_count_<preset>.json)")
    args = ap.parse_args(argv)
    rows = []
    print(f"{'variant':14s} {'top-level ops':>13s} {'all aten ops':>12s}")
    for variant in args.variants:
        rows.append({"variant": variant, **count_step_ops(args.preset, variant, args.batch)})
        print(f"{variant:14s} {rows[-1]['top_level']:13d} {rows[-1]['all']:12d}", flush=True)
    prov = provenance(command="python -m tvmlib.apps.bench.op_count " + " ".join(
        sys.argv[1:] if argv is None else argv), seed=0)
    results = {"preset": args.preset, "batch": args.batch, "attn_backend": "math", "rows": rows}
    path = Path(args.out) if args.out else \
        figures_dir() / f"op_count_{args.preset.replace('/', '-')}.json"
    atomic_write_json({"provenance": prov, "results": results}, path)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    cli.run(main)
