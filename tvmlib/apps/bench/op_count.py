"""Operator count (and CPU time) of one TVM training step, per Lipschitz variant of the DiT and
per way of computing dF/ds.

A small DiT trains *launch-bound* on a GPU: its matrices are small, so the time of a TVM step
(forward, JVP, backward) follows the number of kernels more than the number of FLOPs. That is why
``tvmlib.training.graphs`` replays the step as a CUDA graph, why the all-on DiT of the Lipschitz
ablation steps slower than the plain one although its extra FLOPs are negligible, and why the
DiT computes dF/ds in its own tangent-carrying forward (``model.jvp: fused``,
``tvmlib.nn.dit_jvp``) rather than through ``torch.func.jvp`` (``func``). This script counts, for
one step on the CPU (the sequence of operators does not depend on the device), per Lipschitz
variant of the ablation (``configs/experiments/lipschitz_ablation.yaml``) and per ``--jvp``:

- ``kernels``: the operators that reach the device, seen at the dispatch level below autograd
  and ``torch.func`` (so the forward, the tangent and the backward ops all count), without views
  and metadata ops. Each launches about one kernel on a GPU: the CPU proxy of a GPU step's
  kernel launches.
- ``top_level`` and ``all``: the ``aten::`` operators the PyTorch profiler records, those not
  called by another aten op and all of them. Under ``torch.func.jvp`` the tangent ops run nested
  in their primal op, so ``top_level`` undercounts that path; ``kernels`` does not.
- ``saved_mb``: the megabytes autograd saves for the backward in one step (the distinct
  storages its saved-tensor hooks see, parameters excluded): the step's activation memory, which
  sets most of a GPU step's peak memory beyond weights and optimizer state. It depends on the
  batch (``--batch``) and, unlike the counts, is measured for ``--jvp compiled`` too (the fused
  path with torch.compile, whose kernels run inside compiled code where the counts cannot see
  them: its counts are left empty).
- with ``--time N``: ``ms_median`` and ``cpu_ms_median`` (and every value, ``ms_all``,
  ``cpu_ms_all``), the wall-clock and the CPU time of N steps after a warm-up, with
  ``threads`` CPU threads (``--threads``), the rows' steps interleaved.

    python -m tvmlib.apps.bench.op_count [--preset DiT-S/2] [--variants off on ...]
        [--jvp fused compiled func] [--detach off on] [--batch 2] [--amp] [--time 5]
        [--threads 1] [--out figures/op_count_DiT-S-2.json]

Attention runs on the ``math`` backend (the Triton kernel needs a GPU); on a GPU the ``triton``
backend replaces each attention's softmax, JVP and backward ops by a few kernels, so the absolute
counts there are lower, while the differences between variants (the norms) stay.
Results: ``{"provenance", "results": {"preset", "batch", "threads", "rows": [{"variant",
"jvp", "detach_jvp", "kernels", "top_level", "all", "saved_mb"[, "ms_median", "cpu_ms_median",
...]}]}}``.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from tvmlib.apps import cli
from tvmlib.experiments.results import VARIANTS, lipschitz_flags
from tvmlib.nn.dit_jvp import JVP_MODES
from tvmlib.training.build import build_loss, build_model
from tvmlib.training.config import config_from_dict
from tvmlib.utils.atomic import atomic_write_json
from tvmlib.utils.paths import figures_dir
from tvmlib.utils.provenance import provenance

# operators that launch no kernel: allocation, metadata and view-like ones without alias info
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
             "_unsafe_view", "_reshape_alias", "detach", "lift_fresh", "alias", "resize_",
             "is_same_size", "_has_same_storage_numel", "_efficientzerotensor",
             "promote_types", "result_type"}


class KernelCount(TorchDispatchMode):
    """Counts the operators dispatched to the device that are not views or metadata."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        schema = func._schema
        view = any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        if not view and schema.name.split("::")[-1] not in NO_KERNEL:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _nested(event) -> bool:
    """Whether an aten op was called by another aten op (then it launches nothing itself)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def make_step(preset: str, variant: str, jvp: str = "fused", batch: int = 2,
              seed: int = 0, amp: bool = False, detach: bool = False) -> Callable[[], None]:
    """One TVM loss + backward of the Lipschitz ablation's model and loss (through
    ``tvmlib.training.build``) with a ``preset`` DiT, the ``variant``'s changes and ``model.jvp``
    = ``jvp``, on 32x32x1 images of 10 classes; in fp32, or with ``amp`` under bf16 autocast
    (the GPU runs' precision); with ``detach``, no backward through dF/ds (``loss.detach_jvp``,
    the TVM ablation's ``detach_jvp`` run)."""
    cfg = config_from_dict({  # the Lipschitz ablation's model and loss
        "model": {"preset": preset, "guidance": True, "attn_backend": "math", "jvp": jvp,
                  "lipschitz": lipschitz_flags(variant)},
        "loss": {"name": "tvm", "cfg_scale": 2.0, "detach_jvp": detach},
        "train": {"seed": seed}})
    net = build_model(cfg)
    loss_fn = build_loss(cfg, net)
    data = (torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,)))  # (B, 1, 32, 32), (B,)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        torch.manual_seed(seed + 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss, _ = loss_fn(net, data)
        loss.backward()

    step()  # the first step does any lazy initialisation
    step.params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    return step


def saved_mb(step: Callable[[], None]) -> float:
    """Megabytes of the distinct storages autograd saves for the backward in one call of
    ``step``, without the parameters' (``step.params``: their storages' addresses)."""
    sizes = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        inner = t
        while torch._C._functorch.is_functorch_wrapped_tensor(inner):  # under torch.func.jvp
            inner = torch._C._functorch.get_unwrapped(inner)
        if inner._is_zerotensor():  # forward AD's zero tangents hold no memory
            return t
        storage = inner.untyped_storage()
        if storage.data_ptr() not in step.params:
            sizes[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(sizes.values()) / 1e6


def count_ops(step: Callable[[], None], counts: bool = True) -> dict:
    """{"kernels", "top_level", "all", "saved_mb"} of one call of ``step`` (see the module
    docstring); without ``counts`` the three counts are None."""
    if not counts:
        return {"kernels": None, "top_level": None, "all": None, "saved_mb": saved_mb(step)}
    mode = KernelCount()
    with mode:
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    return {"kernels": mode.count, "top_level": sum(not _nested(e) for e in aten),
            "all": len(aten), "saved_mb": saved_mb(step)}


def time_steps(steps: list[Callable[[], None]], n: int) -> list[dict]:
    """Per step, the wall-clock and the CPU milliseconds (this process, all its threads) of ``n``
    calls: {"ms_median", "ms_all", "cpu_ms_median", "cpu_ms_all"}. The calls are interleaved
    (one of each step in turn), so that a change in the machine's load hits every step alike;
    on a shared machine the CPU time is the steadier measure."""
    wall, cpu = [[] for _ in steps], [[] for _ in steps]
    for _ in range(n):
        for step, w, c in zip(steps, wall, cpu):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            w.append(1e3 * (time.perf_counter() - t0))
            c.append(1e3 * (time.process_time() - c0))
    return [{"ms_median": statistics.median(w), "ms_all": w, "cpu_ms_median": statistics.median(c),
             "cpu_ms_all": c} for w, c in zip(wall, cpu)]


def count_step_ops(preset: str, variant: str, batch: int = 2, seed: int = 0,
                   jvp: str = "fused") -> dict:
    """The counts of one TVM step (:func:`make_step`, :func:`count_ops`)."""
    return count_ops(make_step(preset, variant, jvp, batch, seed))


def main(argv: list[str] | None = None) -> dict:
    ap = cli.Parser(prog="python -m tvmlib.apps.bench.op_count",
                    description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="DiT-S/2", help="DiT preset (default: DiT-S/2)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS),
                    help=f"LipschitzConfig variants (default: all of {', '.join(VARIANTS)})")
    ap.add_argument("--jvp", nargs="+", default=["fused", "func"], choices=list(JVP_MODES),
                    help="how dF/ds is computed (model.jvp; default: fused and func)")
    ap.add_argument("--detach", nargs="+", default=["off"], choices=["off", "on"],
                    help="the gradient through dF/ds: kept (off, the default), detached (on "
                    "= loss.detach_jvp), or both")
    ap.add_argument("--batch", type=int, default=2, help="batch size (the counts do not "
                    "depend on it, saved_mb does)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (default: fp32)")
    ap.add_argument("--time", type=int, default=0, metavar="N",
                    help="also time N steps on the CPU (median; default 0: no timing)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; 1 makes the CPU time exact)")
    ap.add_argument("--out", default=None, help="JSON path (default: "
                    "figures/op_count_<preset>.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, steps = [], []
    for variant, jvp, detach in itertools.product(args.variants, args.jvp, args.detach):
        step = make_step(args.preset, variant, jvp, args.batch, amp=args.amp,
                         detach=detach == "on")
        rows.append({"variant": variant, "jvp": jvp, "detach_jvp": detach == "on",
                     **count_ops(step, jvp != "compiled")})
        steps += [step] if args.time else []  # (keep the models only to time them)
        r = rows[-1]
        print(f"{variant:14s} {jvp:8s} detach {detach:3s} kernels {r['kernels'] or '-':>6}  "
              f"top-level {r['top_level'] or '-':>6}  all aten {r['all'] or '-':>6}  saved "
              f"{r['saved_mb']:8.1f} MB", flush=True)
    if args.time:
        for row, timing in zip(rows, time_steps(steps, args.time)):
            row.update(timing)
            print(f"{row['variant']:14s} {row['jvp']:8s} detach {row['detach_jvp']!s:5s} "
                  f"{row['ms_median']:9.1f} ms / step, "
                  f"{row['cpu_ms_median']:9.1f} CPU ms (medians of {args.time})", flush=True)
    prov = provenance(command="python -m tvmlib.apps.bench.op_count " + " ".join(
        sys.argv[1:] if argv is None else argv), seed=0)
    results = {"preset": args.preset, "batch": args.batch, "attn_backend": "math",
               "amp": "bf16" if args.amp else "off",
               "threads": torch.get_num_threads(), "rows": rows}
    path = Path(args.out) if args.out else \
        figures_dir() / f"op_count_{args.preset.replace('/', '-')}.json"
    atomic_write_json({"provenance": prov, "results": results}, path)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    cli.run(main)
