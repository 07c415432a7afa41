"""Where a training step's peak memory goes: the tensors alive at the peak of one warm step of
``tvmlib.apps.bench.train_step``'s step, grouped by the tvmlib source line that made them.

The H200 rows of ``figures/train_step_nvidia-h200.json`` put the fused dF/ds's peak above
torch.func's at every DiT size (issue 17), while the bytes autograd saves
(``bench.op_count``'s ``saved_mb``) order them the other way. This finds out which tensors make
the difference. A ``TorchDispatchMode`` sees every operator's outputs below autograd and
``torch.func``; each new output storage (not a view, in-place or out= result) counts as
allocated until Python frees it
(a weak reference on the storage), so the tracked peak is that of the step's own tensors, on any
device, without the allocator's rounding and cache. On a GPU ``peak_alloc_mb``, the
``torch.cuda.max_memory_allocated`` of the same step above what was allocated before it, is
given beside it.

    python -m tvmlib.apps.bench.step_memory [--models DiT-S/2] [--batch 32] [--backend triton]
        [--jvp fused func] [--device cuda] [--top 30] [--out figures/step_memory_<gpu>.json]
    python -m tvmlib.apps.bench.step_memory --device cpu --backend math --models DiT-T/8 \
        --batch 2 --out /tmp/step_memory_cpu.json               (a seconds-long CPU check)

Rows: ``{"model", "jvp", "backend", "batch", "tracked_peak_mb", "tracked_after_mb",
"peak_alloc_mb", "at_peak": {site: MB}}``; a site is "file:line function [op dtype]".
"""

from __future__ import annotations

import os
import sys
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tvmlib.apps import cli
from tvmlib.apps.bench.train_step import device_slug, make_step
from tvmlib.nn.dit_jvp import JVP_MODES
from tvmlib.utils.atomic import atomic_write_json
from tvmlib.utils.paths import figures_dir
from tvmlib.utils.provenance import provenance

_PACKAGE = str(Path(__file__).parents[2]) + os.sep  # .../tvmlib/


def _site(op: str, dtype: torch.dtype) -> str:
    """The autograd node running (in the backward), else the innermost tvmlib frame of the
    Python stack (outside this module), with the operator and the output's dtype."""
    node = torch._C._current_autograd_node()
    tag = f" [{op} {str(dtype).removeprefix('torch.')}]"
    if node is not None:
        return f"backward: {node.name()}{tag}"
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(_PACKAGE) and frame.filename != __file__:
            where = f"{frame.filename[len(_PACKAGE):]}:{frame.lineno} {frame.name}"
            break
    else:
        where = "outside tvmlib"
    return where + tag


class LiveStorages(TorchDispatchMode):
    """Bytes of the storages made under this mode and still alive: ``live``, its maximum
    ``peak``, and ``at_peak`` (storage -> (bytes, site)) at that maximum."""

    def __init__(self, sites: bool = True):
        super().__init__()
        self.sites, self.live, self.peak = sites, 0, 0
        self.entries: dict[int, tuple[int, str]] = {}
        self.at_peak: dict[int, tuple[int, str]] = {}

    def _freed(self, key: int) -> None:
        self.live -= self.entries.pop(key)[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place / out= result: no new storage
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t._is_zerotensor():
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self.entries:
                continue
            site = _site(func.__name__, t.dtype) if self.sites else ""
            self.entries[key] = (size, site)
            self.live += size
            weakref.finalize(storage, self._freed, key)
            if self.live > self.peak:
                self.peak, self.at_peak = self.live, dict(self.entries)
        return out

    def by_site(self, top: int) -> dict[str, float]:
        """MB alive at the peak per site, the ``top`` largest."""
        sums: dict[str, int] = {}
        for size, site in self.at_peak.values():
            sums[site] = sums.get(site, 0) + size
        ranked = sorted(sums.items(), key=lambda kv: -kv[1])[:top]
        return {site: round(size / 1e6, 3) for site, size in ranked}


def measure(step: Callable[[], object], device: torch.device, top: int = 30) -> dict:
    """Tracked peak and the sites alive at it for one call of ``step`` (already warm)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    mode = LiveStorages()
    with mode:
        step()
    row = {"tracked_peak_mb": mode.peak / 1e6, "tracked_after_mb": mode.live / 1e6,
           "peak_alloc_mb": None}
    if cuda:
        torch.cuda.synchronize(device)
        row["peak_alloc_mb"] = (torch.cuda.max_memory_allocated(device) - before) / 1e6
    return {**row, "at_peak": mode.by_site(top)}


def main(argv: list[str] | None = None) -> dict:
    ap = cli.Parser(prog="python -m tvmlib.apps.bench.step_memory",
                    description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["DiT-S/2"], help="DiT presets")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--input-size", type=int, default=32, help="latent side (default 32)")
    ap.add_argument("--backend", default="triton", choices=["math", "triton"])
    ap.add_argument("--jvp", nargs="+", default=["fused", "func"], choices=list(JVP_MODES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=2, help="untracked steps first (default 2)")
    ap.add_argument("--top", type=int, default=30, help="sites kept per row (default 30)")
    ap.add_argument("--out", default=None, help="JSON path (default: "
                    "figures/step_memory_<gpu>.json)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for model in args.models:
        for jvp in args.jvp:
            step = make_step(model, args.backend, args.batch, device, args.input_size, jvp=jvp)
            for _ in range(args.warmup):
                step()
            rows.append({"model": model, "jvp": jvp, "backend": args.backend,
                         "batch": args.batch, **measure(step, device, args.top)})
            r, step = rows[-1], None
            print(f"{model} {jvp:8s} tracked peak {r['tracked_peak_mb']:9.1f} MB, allocator peak "
                  f"{r['peak_alloc_mb'] or float('nan'):9.1f} MB", flush=True)
    prov = provenance(command="python -m tvmlib.apps.bench.step_memory " + " ".join(
        sys.argv[1:] if argv is None else argv), seed=0)
    path = Path(args.out) if args.out else figures_dir() / f"step_memory_{device_slug(device)}.json"
    atomic_write_json({"provenance": prov, "results": {"rows": rows}}, path)
    print(f"wrote {path}")
    return {"rows": rows}


if __name__ == "__main__":
    cli.run(main)
