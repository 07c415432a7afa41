"""The one runner: a run (one config) or an experiment (a YAML list of runs) built, trained,
evaluated during and after training, with its results written after every run.

A run may start from another's weights (``init``) and a CMT run names its teacher
(``loss.teacher``): either is the name of an earlier run of the experiment or a run folder
(``config.yaml`` + ``checkpoint.pt``) or checkpoint file. The GPU seconds of those runs are the
run's ``upstream_s``, so ``total_s`` counts every stage that a result needed (CMT -> TVM pays for
the teacher and the mid-training).

Results: ``{"provenance", "results": {"experiment", "config", "runs": {name: record},
"reference_fd", "wall_s"}}`` with one record per run (see :func:`run_record`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from tvmlib.evaluation.evaluate import evaluate_net, sample_grids
from tvmlib.evaluation.features import metric_setup
from tvmlib.evaluation.lipschitz import first_spike, make_probe, measure
from tvmlib.evaluation.toy import score_steps, toy_floor
from tvmlib.experiments.isolate import in_fresh_process
from tvmlib.training.build import Built, build, check_resume, load_run, resolve_device
from tvmlib.training.checkpoint import run_lock
from tvmlib.training.config import ExperimentConfig, RunConfig, config_to_dict
from tvmlib.training.distributed import world as process_rank
from tvmlib.training.flops import apply_flop_budget
from tvmlib.training.loop import TrainState, train
from tvmlib.training.weights import load_weights
from tvmlib.utils.atomic import atomic_write_json, atomic_write_text
from tvmlib.utils.cuda import GpuClock
from tvmlib.utils.paths import figures_dir, repo_root

CURVE_KEYS = ("loss", "terminal", "fm", "grad_norm", "lr")
SCORES = ("fd_", "w2_")  # the evaluation columns: Frechet distances, or W2 on the 2D toys


def resolve(ref: str, done: dict[str, Path]) -> Path:
    """A run reference: an earlier run's name (its folder), else a path (folder or file)."""
    if ref in done:
        return done[ref]
    path = Path(ref)
    if not path.exists():
        raise FileNotFoundError(f"{ref!r} is neither an earlier run of this experiment "
                                f"({', '.join(done) or 'none yet'}) nor an existing path")
    return path


def _checkpoint(path: Path) -> Path:
    return path / "checkpoint.pt" if path.is_dir() else path


def sample_shape(cfg: RunConfig) -> tuple[int, ...]:
    m = cfg.model
    return (m.in_channels,) if m.preset == "MLP2D" else (m.in_channels, m.input_size,
                                                          m.input_size)


def start_run(cfg: RunConfig, device: torch.device | None = None, world: int = 1,
              done: dict[str, Path] | None = None, log: Callable = print,
              resume: bool = True) -> tuple[Built, float]:
    """Build the run, load its teacher and initial weights, make CMT's trajectory pool, and
    write ``config.yaml`` (rank 0); returns (what it trains with, the GPU seconds of the
    setup). With ``resume``, a run folder holding a checkpoint of other settings is refused."""
    if resume:
        check_resume(cfg)
    done, device = done or {}, resolve_device(device or cfg.device)
    clock = GpuClock(device).begin()
    teacher = None
    if cfg.loss.name == "cmt":
        if not cfg.loss.teacher:
            raise ValueError(f"{cfg.name}: loss.name cmt needs loss.teacher (a run)")
        _, teacher = load_run(resolve(cfg.loss.teacher, done), "ema", device)
    built = build(cfg, device, world, teacher)
    if cfg.init:  # a guidance-conditioned student of an unguided run keeps its new e_beta
        load_weights(_checkpoint(resolve(cfg.init, done)), built.net,
                     loss=built.loss if hasattr(built.loss, "reset_target") else None,
                     allow_missing=("beta_embedder.",) if cfg.model.guidance else ())
    if cfg.loss.name == "cmt" and cfg.loss.pool:
        n = cfg.loss.pool_size or cfg.train.steps * built.loss.num_trajectories(
            cfg.train.global_batch)
        built.loss.prefill(n, torch.zeros(1, *sample_shape(cfg), device=device),
                           batch=cfg.loss.pool_batch)
        log(f"[{cfg.name}] {n} teacher trajectories made up front")
    if process_rank()[0] == 0:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
                          cfg.run_dir / "config.yaml")
    return built, clock.seconds()


def train_run(cfg: RunConfig, resume: bool = True, device: torch.device | None = None,
              world: int = 1, done: dict[str, Path] | None = None, log: Callable = print,
              **train_kw) -> TrainState:
    """Train one run in ``cfg.run_dir`` (resuming from its checkpoint if ``resume``);
    ``train_kw`` goes to ``tvmlib.training.loop.train`` (eval_fn, eval_every, callback)."""
    with folder_lock(cfg):
        built, _ = start_run(cfg, device, world, done, log, resume)
        n = sum(p.numel() for p in built.net.parameters())
        log(f"[{cfg.name}] {n:,} params on {built.device}, {cfg.train.steps} steps of global "
            f"batch {cfg.train.global_batch} ({built.loop.micro_batches} micro-batches x {world} "
            "process(es))")
        return train(built.net, built.loss, built.source, built.loop, resume=resume, **train_kw)


def folder_lock(cfg: RunConfig):
    """The run folder's lock (``tvmlib.training.checkpoint.run_lock``), held by rank 0 from
    before ``config.yaml`` is written until the run is done: a second process fails at once."""
    if process_rank()[0] != 0:
        return contextlib.nullcontext()
    return run_lock(cfg.run_dir / "checkpoint.pt")


# ---- evaluation during training -------------------------------------------------------------

class Monitor:
    """The runner's ``eval_fn``: Frechet distances (``fd_<k>``; the 2D toys: W2, ``w2_<k>``)
    every ``eval.every`` steps (and at step 0) and Lipschitz probes every ``eval.probe_every``
    steps, outside the training clock."""

    def __init__(self, cfg: RunConfig, built: Built, log: Callable = print):
        self.cfg, self.built, self.log = cfg, built, log
        e = cfg.eval
        self.scores = bool(e.every) and e.metric != "none"
        self.metric = metric_setup(cfg, built.device) if self.scores and e.metric != "w2" \
            else (None, None, None)
        self.probe = self._probe() if e.probe_every else None
        self.path = cfg.run_dir / "monitor.json"  # evaluations so far, kept for a resumed run
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.evals: list[dict] = saved.get("evals", [])
        self.probes: list[dict] = saved.get("probes", [])
        self.state: TrainState | None = None
        self.setup_s: float | None = saved.get("setup_s")

    def setup_seconds(self, seconds: float) -> float:
        """The run's setup seconds: those of its first start (a resumed run does not pay
        twice)."""
        if self.setup_s is None:
            self.setup_s = seconds
            self.save()
        return self.setup_s

    def save(self) -> None:
        atomic_write_json({"evals": self.evals, "probes": self.probes, "setup_s": self.setup_s},
                          self.path)

    def _probe(self):
        from tvmlib.data.images import load_mnist

        x, y = load_mnist(self.cfg.data.dataset, "test")
        w = self.cfg.loss.cfg_scale or 1.0
        return make_probe(x, y, self.cfg.eval.probe_batch, w, self.cfg.train.seed,
                          self.built.device)

    def weights(self, state: TrainState, which: str):
        return {"ema": lambda: state.ema.module, "net": lambda: state.net,
                "target": lambda: self.built.loss.target.module}[which]()

    def fd(self, net, step: int, seconds: float) -> dict:
        if self.cfg.eval.metric == "w2":
            row = {f"w2_{k}": r["w2"] for k, r in score_steps(net, self.cfg).items()}
        else:
            row = {f"fd_{k}": r.get("fd") for k, r in
                   evaluate_net(net, self.cfg, *self.metric[:2]).items()}
        row = {"step": step, "train_s": seconds, **row}
        self.evals = [r for r in self.evals if r["step"] < step] + [row]  # a resumed run redoes
        # the evaluations made after its checkpoint: they replace the earlier ones
        self.save()
        self.log(f"[{self.cfg.name}] step {step}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if k[:3] in SCORES and v is not None))
        return row

    def probe_now(self, net, step: int) -> None:
        e = self.cfg.eval
        self.probes = [r for r in self.probes if r["step"] < step] + [
            {"step": step, **measure(net, self.probe, e.lipschitz_batch, e.power_iters,
                                     self.cfg.train.seed)}]
        self.save()

    def start(self, net) -> None:
        """Step-0 evaluations (skipped when a resumed run already has them)."""
        if self.evals or self.probes:
            return
        if self.scores:
            self.fd(net, 0, 0.0)
        if self.probe is not None:
            self.probe_now(net, 0)

    def __call__(self, state: TrainState) -> dict:
        self.state, e, step = state, self.cfg.eval, state.step
        end = step == self.cfg.train.steps or state.stopped is not None
        out = {}
        if self.probe is not None and (step % e.probe_every == 0 or end):
            self.probe_now(state.net, step)
        if self.scores and (step % e.every == 0 or end):
            out = self.fd(self.weights(state, e.weights[0]), step, state.train_seconds)
            out = {k: v for k, v in out.items() if k[:3] in SCORES}
        return out


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [_round(r.get(k)) for r in rows] for k in keys}


def _round(v):
    if isinstance(v, list):
        return [_round(a) for a in v]
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    return float(f"{float(v):.6g}") if math.isfinite(float(v)) else None


def spikes(curves: dict, e) -> dict:
    """First spike step of the loss and of the gradient norm (``first_spike``), and the first."""
    out = {}
    for key in ("loss", "grad_norm"):
        vals = [math.nan if v is None else v for v in curves.get(key, [])]
        i = first_spike(vals, k=e.spike_k, window=e.spike_window, warmup=e.spike_warmup)
        out[key] = None if i is None else curves["step"][i]
    found = [v for v in out.values() if v is not None]
    out["first"] = min(found) if found else None
    return out


# ---- one run of an experiment ---------------------------------------------------------------

def run_record(cfg: RunConfig, done: dict[str, Path], upstream: dict[str, float],
               log: Callable = print) -> dict:
    """Train (or resume) and evaluate one run of an experiment, its folder locked throughout
    (:func:`folder_lock`); returns its record (see :func:`_record`)."""
    with folder_lock(cfg):
        return _record(cfg, done, upstream, log)


def _record(cfg: RunConfig, done: dict[str, Path], upstream: dict[str, float],
            log: Callable = print) -> dict:
    """Train (or resume) and evaluate one run; returns its record: config,
    steps done, ``stopped`` / ``diverged_step``, seconds (``setup_s``, ``train_s``,
    ``upstream_s`` of the runs it starts from, ``total_s``; outside them ``ckpt_s``, the
    checkpoint writes, and inside ``train_s`` ``first_step_s``, each process's first step),
    ``curves`` (the training log), ``evals`` (FD during training), ``probes``, ``spike_step``,
    ``final`` ({weights: {steps: FD}} at the end) and ``sweep`` (the final FD of every solver x
    guidance x steps asked for). The record is also written to the run folder (``record.json``)."""
    t0 = time.perf_counter()
    built, setup_s = start_run(cfg, None, 1, done, log)
    flops = apply_flop_budget(cfg, built)
    monitor = Monitor(cfg, built, log)
    setup_s = monitor.setup_seconds(setup_s)
    refs = [r for r in (cfg.init, cfg.loss.teacher if cfg.loss.name == "cmt" else None) if r]
    up = sum(upstream.get(r, 0.0) for r in dict.fromkeys(refs))
    budgets = [b for b in (cfg.train.time_budget_s, None if cfg.train.total_budget_s is None
                           else cfg.train.total_budget_s - up - setup_s) if b is not None]
    built.loop.time_budget_s = max(0.0, min(budgets)) if budgets else None  # < 0: spent
    state, diverged = _train(cfg, built, monitor, log)
    history = [r for r in (state.history if state else []) if "loss" in r]
    curves = _columns([{k: r.get(k) for k in ("step", *CURVE_KEYS) if k in r} for r in history])
    train_s = state.train_seconds if state else 0.0
    ok = state is not None and not diverged
    final, sweep = _final(cfg, built, monitor, state) if ok else ({}, [])
    if ok and cfg.data.dataset in ("mnist", "fashion-mnist"):
        sample_grids(state.ema.module, cfg, cfg.run_dir)
    steps = state.step if state else 0
    rec = {"name": cfg.name, "config": config_to_dict(cfg),
           "params": sum(p.numel() for p in built.net.parameters()),
           "steps": cfg.train.steps, "steps_done": steps,
           "stopped": state.stopped if state else None, "diverged_step": diverged,
           "setup_s": setup_s, "train_s": train_s, "upstream_s": up,
           "ckpt_s": state.timings["ckpt_s"] if state else 0.0,
           "first_step_s": state.timings["first_step_s"] if state else [],
           "total_s": up + setup_s + train_s, "wall_s": time.perf_counter() - t0,
           "steps_per_s": steps / max(train_s, 1e-9), "flops_per_step": flops,
           "floor": toy_floor(cfg) if cfg.eval.metric == "w2" else None, "curves": curves,
           "evals": _columns(monitor.evals), "probes": _columns(monitor.probes),
           "spike_step": spikes(curves, cfg.eval), "final": final, "sweep": sweep}
    atomic_write_json(rec, cfg.run_dir / "record.json", indent=None)
    log(f"[{cfg.name}] {steps} steps in {train_s:.1f} s ({rec['steps_per_s']:.1f} steps/s), "
        f"total with upstream {rec['total_s']:.1f} s; final {final}")
    return rec


def _train(cfg: RunConfig, built: Built, monitor: Monitor, log: Callable):
    """(state, diverged step or None): train from the run folder's checkpoint if there is one."""
    resume = (cfg.run_dir / "checkpoint.pt").exists()
    if not resume:
        monitor.start(built.net)
    try:
        return train(built.net, built.loss, built.source, built.loop, resume=resume,
                     eval_fn=monitor, eval_every=1), None
    except FloatingPointError as err:
        log(f"[{cfg.name}] diverged: {err}")
        return monitor.state, (monitor.state.step if monitor.state else 0) + 1


def _final(cfg: RunConfig, built: Built, monitor: Monitor, state: TrainState
           ) -> tuple[dict, list[dict]]:
    """({weights: {str(steps): FD}} for every ``eval.weights``, the sweep rows {solver,
    cfg_scale, steps, nfe, fd} over ``eval.solvers`` x ``eval.cfg_scales`` x ``eval.steps`` of
    the first weights). FD entries say "error" for samples that are not finite. With
    ``eval.metric`` w2 (2D toys) the scores are W2 (``tvmlib.evaluation.toy``) and the sweep
    rows also hold ``w2_data``, the W2 to the data where the run is scored on a guided
    reference."""
    if cfg.eval.metric == "none":
        return {}, []
    if cfg.eval.metric == "w2":
        score, key = score_steps, "w2"
    else:
        features, ref, _ = monitor.metric if monitor.metric[0] is not None else \
            metric_setup(cfg, built.device)
        score, key = (lambda net, c: evaluate_net(net, c, features, ref)), "fd"
    out, e = {}, cfg.eval
    final = dataclasses.replace(cfg, eval=dataclasses.replace(
        e, num_samples=e.final_samples or e.num_samples))
    for which in e.weights:
        try:
            out[which] = {k: r[key] for k, r in score(monitor.weights(state, which),
                                                       final).items()}
        except ValueError as err:  # non-finite samples of an unstable run
            out[which] = {"error": str(err)[:200]}
    sweep = []
    net = monitor.weights(state, e.weights[0])
    for solver in e.solvers:
        for w in e.cfg_scales or [e.cfg_scale]:
            one = dataclasses.replace(cfg, eval=dataclasses.replace(e, solver=solver,
                                                                    cfg_scale=w))
            for k, r in score(net, one).items():
                sweep.append({"solver": solver, "cfg_scale": w, "steps": int(k),
                              "nfe": r["nfe"], **{m: r[m] for m in (key, "w2_data") if m in r}})
    return out, sweep


# ---- the experiment ------------------------------------------------------------------------

def run_experiment(exp: ExperimentConfig, runs: list[RunConfig], out: str | Path | None = None,
                   only: list[str] | None = None, command: str | None = None,
                   log: Callable = print) -> dict:
    """Run ``runs`` in order (``only``: just these names; earlier runs they start from must
    exist in the work folder) and write the results to ``out`` after each (None: figures/
    <name>.json; False: not written). Returns the results document."""
    from tvmlib.evaluation.evaluate import data_floor
    from tvmlib.utils.provenance import provenance

    t0 = time.perf_counter()
    if exp.num_threads:
        torch.set_num_threads(exp.num_threads)
    work = Path(exp.work_dir or f"runs/{exp.name}")
    work = work if work.is_absolute() else repo_root() / work
    out = figures_dir() / (exp.out or f"{exp.name}.json") if out is None else out
    done, upstream = {}, {}
    results = {"experiment": exp.name, "config": config_to_dict(exp), "runs": {},
               "reference_fd": data_floor(runs[0]), "wall_s": 0.0}
    doc = {"provenance": provenance(command=command, seed=runs[0].train.seed),
           "results": results}
    unknown = sorted(set(only or []) - {r.name for r in runs})
    if unknown:
        raise ValueError(f"--only names unknown runs {unknown}; runs: {[r.name for r in runs]}")
    for cfg in runs:
        cfg.out_dir = str(work / cfg.name)
        if only and cfg.name not in only:
            if (cfg.run_dir / "record.json").exists():  # a finished run others start from
                done[cfg.name] = cfg.run_dir
                upstream[cfg.name] = json.loads((cfg.run_dir / "record.json").read_text())[
                    "total_s"]
            continue
        rec = (in_fresh_process(run_record, cfg, done, upstream, name=cfg.name)
               if exp.cold_compile else run_record(cfg, done, upstream, log))
        if exp.grids and out is not False:  # beside the results file, not always in figures/
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            for png in cfg.run_dir.glob("samples_*step.png"):
                shutil.copyfile(png, Path(out).parent / f"{exp.name}_{cfg.name}_{png.name}")
        results["runs"][cfg.name] = rec
        done[cfg.name], upstream[cfg.name] = cfg.run_dir, rec["total_s"]
        results["wall_s"] = time.perf_counter() - t0
        if out is not False:
            atomic_write_json(doc, out, indent=None)
            log(f"wrote {out} ({results['wall_s']:.0f} s so far)")
    return doc
