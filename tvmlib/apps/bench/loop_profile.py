"""Where the training loop's time goes: one run of an experiment, stepped by the real loop
(``tvmlib.training.loop.train``) for a while, then profiled for some steps.

    python -m tvmlib.apps.bench.loop_profile configs/experiments/fashion_equal_time_compiled.yaml
        fm tvm [--steps 50] [--warmup 30] [--set KEY=VALUE ...] [--out PATH]

The loop labels the parts of each step (``tvmlib.training.step.phase``): ``batch``,
``loss_backward`` (the forward and backward, a CUDA graph's replay), ``clip_and_checks``
(gradient clipping and the one read-back of the step's logs: loss, gradient norm and the loss's
own), ``optimizer``, ``emas`` (the evaluation EMA and TVM's target), ``clock`` (the training
clock's reading) and ``bookkeeping`` (history rows, the progress bar; with ``--set
train.sync_every=N`` also the read-back of the steps since the last). For each part and step this
reports the host milliseconds, the kernel launches, the milliseconds of the kernels it launched,
and the host milliseconds spent waiting for the device (synchronisations and blocking copies),
read from the profiler's trace; beside them the loop's own milliseconds per step (its training
clock, steps without the profiler) and the device's busy milliseconds per step. A part whose
host time is much more than its kernels' is where a launch-bound step loses time.

Weights are random (a run's ``init`` is not loaded): timing does not depend on them. A CMT run
needs its teacher and is refused. Writes ``figures/loop_profile_<gpu>.json``.
"""

from __future__ import annotations

import bisect
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from tvmlib.apps import cli

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
         "cudaMemcpy", "cudaMemcpyAsync")  # host calls that may wait for the device
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
            "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync")
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def attribute(trace: dict, steps: int, prefix: str = "loop/") -> dict:
    """Per step, from a Chrome trace of the profiler (``export_chrome_trace``): for each part
    labelled ``<prefix><name>``, {"host_ms", "launches", "device_ms", "wait_ms"}, and the
    device's busy milliseconds (its kernels' union) as ``"device_busy_ms"``. A kernel belongs
    to the part whose interval holds the host call that launched it (same correlation id)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    parts = sorted((e for e in events if e.get("name", "").startswith(prefix)),
                   key=lambda e: e["ts"])  # the parts do not overlap
    starts = [p["ts"] for p in parts]

    def part_of(e: dict) -> str | None:
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i >= 0 and parts[i]["tid"] == e["tid"] and e["ts"] <= parts[i]["ts"] + parts[i]["dur"]:
            return parts[i]["name"][len(prefix):]
        return None

    out = {p["name"][len(prefix):]: {"host_ms": 0.0, "launches": 0, "device_ms": 0.0,
                                     "wait_ms": 0.0} for p in parts}
    for p in parts:
        out[p["name"][len(prefix):]]["host_ms"] += p["dur"] / 1e3
    owner = {}  # correlation id -> part
    for e in events:
        if e.get("cat") not in ("cuda_runtime", "cuda_driver"):
            continue
        name = part_of(e)
        if name is None:
            continue
        owner[e.get("args", {}).get("correlation")] = name
        out[name]["launches"] += e["name"] in LAUNCHES
        out[name]["wait_ms"] += e["dur"] / 1e3 if e["name"] in SYNCS else 0.0
    device = [e for e in events if e.get("cat") in DEVICE_CATS]
    for e in device:
        name = owner.get(e.get("args", {}).get("correlation"))
        if name is not None:
            out[name]["device_ms"] += e["dur"] / 1e3
    per_step = {k: {m: v / steps for m, v in row.items()} for k, row in out.items()}
    return {"parts": per_step, "device_busy_ms": _union_ms(device) / steps}


def _union_ms(events: list[dict]) -> float:
    """Milliseconds covered by at least one of the intervals (concurrent kernels once)."""
    total, end = 0.0, float("-inf")
    for e in sorted(events, key=lambda e: e["ts"]):
        start, stop = e["ts"], e["ts"] + e["dur"]
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total / 1e3


def profile_run(cfg, steps: int, warmup: int) -> dict:
    """Step ``cfg``'s run ``warmup + steps`` times unprofiled, then ``steps`` times under the
    profiler; the row of the run."""
    from tvmlib.training.build import build
    from tvmlib.training.loop import train

    if cfg.loss.name == "cmt":
        raise ValueError(f"{cfg.name}: a CMT run needs its teacher; profile another run")
    built = build(cfg)
    seconds, cuda = [], built.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(activities=activities, schedule=torch.profiler.schedule(
        wait=warmup + steps - 1, warmup=1, active=steps, repeat=1))

    def callback(state, _logs):
        seconds.append(state.train_seconds)
        prof.step()

    loop = replace(built.loop, steps=warmup + 2 * steps, ckpt_path=None, log_path=None,
                   ckpt_every=0, time_budget_s=None, progress=False)
    with prof:
        train(built.net, built.loss, built.source, loop, callback=callback)
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(str(Path(tmp) / "trace.json"))
        trace = json.loads((Path(tmp) / "trace.json").read_text())
    plain = [1e3 * (b - a) for a, b in zip(seconds[warmup:warmup + steps],
                                           seconds[warmup + 1:warmup + steps + 1])]
    return {"run": cfg.name, "loss": cfg.loss.name, "preset": cfg.model.preset,
            "batch": cfg.train.global_batch, "cuda_graph": cfg.train.cuda_graph,
            "jvp": cfg.model.jvp, "steps": steps, "warmup": warmup,
            "loop_ms_median": statistics.median(plain), "loop_ms_all": plain,
            **attribute(trace, steps)}


def format_row(row: dict) -> str:
    lines = [f"{row['run']} ({row['loss']}, {row['preset']}, batch {row['batch']}, graph "
             f"{row['cuda_graph']}, jvp {row['jvp']}): loop {row['loop_ms_median']:.2f} ms/step, "
             f"device busy {row['device_busy_ms']:.2f} ms/step",
             f"  {'part':<16} {'host ms':>8} {'launches':>9} {'device ms':>10} {'wait ms':>8}"]
    for name, p in row["parts"].items():
        lines.append(f"  {name:<16} {p['host_ms']:>8.2f} {p['launches']:>9.1f} "
                     f"{p['device_ms']:>10.2f} {p['wait_ms']:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = cli.Parser(prog="python -m tvmlib.apps.bench.loop_profile",
                    description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="an experiment YAML (configs/experiments/)")
    ap.add_argument("runs", nargs="+", help="runs of the experiment to profile")
    ap.add_argument("--steps", type=int, default=50, help="steps timed, and steps profiled")
    ap.add_argument("--warmup", type=int, default=30, help="steps first (compilation, capture)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of every run, e.g. model.preset=DiT-T/8")
    ap.add_argument("--out", help="output JSON (default figures/loop_profile_<gpu>.json)")
    args = ap.parse_args(argv)
    from tvmlib.apps.bench.attention import gpu_slug
    from tvmlib.training.config import ConfigError, load_experiment
    from tvmlib.utils.atomic import atomic_write_json
    from tvmlib.utils.paths import figures_dir
    from tvmlib.utils.provenance import provenance

    if args.steps < 2 or args.warmup < 1:
        ap.error(f"--steps must be >= 2 and --warmup >= 1, got {args.steps} and {args.warmup}")
    try:
        _, runs = load_experiment(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        ap.error(str(err))
    by_name = {r.name: r for r in runs}
    unknown = sorted(set(args.runs) - set(by_name))
    if unknown:
        ap.error(f"unknown runs {unknown}; the experiment has {sorted(by_name)}")
    rows = []
    for name in args.runs:
        rows.append(profile_run(by_name[name], args.steps, args.warmup))
        print(format_row(rows[-1]), flush=True)
    command = "python -m tvmlib.apps.bench.loop_profile " + " ".join(
        sys.argv[1:] if argv is None else argv)
    doc = {"provenance": provenance(command=command, seed=0), "rows": rows}
    slug = gpu_slug() if torch.cuda.is_available() else "cpu"
    path = Path(args.out) if args.out else figures_dir() / f"loop_profile_{slug}.json"
    atomic_write_json(doc, path)
    print(f"wrote {path}")
    return doc


if __name__ == "__main__":
    cli.run(main)
