"""CMT experiment: does mid-training make TVM post-training cheaper? (Fashion-MNIST 32x32)

    python -m tvmlib.experiments.cmt --config configs/cmt_fashion.yaml [--out figures/05_cmt.json]

Stages, each run by ``tvmlib.training.loop.train`` (bf16 autocast on CUDA):

  (a) teacher: a class-conditional DiT trained with flow matching (``FMLoss``);
  (b) mid: CMT mid-training (``CMTLoss``) of a copy of the teacher on the teacher's own
      ODE trajectories;
  (c) post: TVM post-training (``TVMLoss``) with one budget from three starts: "scratch"
      (random init), "teacher_init" (the FM teacher's weights) and "cmt" (the mid-trained
      weights), each loaded with ``load_student_weights`` into the net, its EMA and TVM's target.

Every ``eval_every`` post-training steps (and at step 0) the evaluation EMA samples with 1 and
2 flow-map steps and the Frechet distance of the project's classifier features to the real test
split is recorded (``tvmlib.metrics.classifier_fd``; not comparable with Inception FID), with
the CUDA-synchronised wall time of the run's training so far (evaluation excluded). Output:

    {"provenance": {...},
     "runs": {"scratch": [{"step", "fd_1", "fd_2", "gpu_seconds"}, ...], "teacher_init": [...],
              "cmt": [...]},
     "stages": {"teacher_gpu_seconds", "mid_gpu_seconds", "teacher_fd", "teacher_nfe"},
     "config": {...}}

plus sample grids ``05_samples_<run>_<k>step.png`` (one row per class) next to the JSON, and
``05_samples_teacher.png`` (the teacher with its CMT solver). Checkpoints and training logs go to
``work_dir`` (git-ignored ``runs/``).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn

from tvmlib.data.images import TensorSource, load_mnist
from tvmlib.core.losses import FMLoss, TVMLoss
from tvmlib.core.losses.cmt import CMTLoss, load_student_weights
from tvmlib.metrics import classifier_fd, classifier_features, feature_stats
from tvmlib.nn.dit import DiT, dit_from_preset
from tvmlib.utils.paths import figures_dir, repo_root
from tvmlib.utils.provenance import provenance
from tvmlib.core.solvers import sample_flowmap
from tvmlib.training.loop import TrainConfig, atomic_save, atomic_write_text, train
from tvmlib.trajectories import teacher_trajectory

RUNS = ("scratch", "teacher_init", "cmt")
SECTIONS = ("dataset", "seed", "batch_size", "work_dir", "model", "teacher", "mid", "post",
            "eval")
_STAGE = ("steps", "lr", "warmup", "betas", "ema_decay", "grad_clip", "amp", "log_every",
          "print_every", "cuda_graph")
KEYS = {  # the keys each section may hold (anything else is a typo and an error)
    "": (*SECTIONS, "attn_backend", "scale"),
    "teacher": (*_STAGE, "time_sampler", "mean", "std", "label_dropout"),
    "mid": (*_STAGE, "solver", "grid", "solver_steps", "t_max", "t_min", "exact_ends",
            "points", "endpoint_only", "space", "labels", "label_dropout", "cfg_scale", "pool",
            "pool_batch"),
    "post": (*_STAGE, "eval_every", "target_decay", "label_dropout", "cfg_scale",
             "scale_param"),
    "eval": ("n_samples", "n_reference", "batch", "grid_cols"),
    "attn_backend": ("teacher", "mid", "post", "eval"),
}


# ---- configuration ----------------------------------------------------------------------------

def load_config(path: str | Path) -> dict:
    """Read a YAML run config and check that every section is present."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    cfg = yaml.safe_load(path.read_text())
    missing = [k for k in SECTIONS if k not in (cfg or {})]
    if missing:
        raise ValueError(f"{path} lacks the sections {missing}; needed: {list(SECTIONS)} "
                         "(see configs/cmt_fashion.yaml)")
    model_keys = ("preset", *inspect.signature(DiT.__init__).parameters)
    for section, allowed in {**KEYS, "model": model_keys}.items():
        values = cfg if section == "" else (cfg.get(section) or {})
        unknown = [k for k in values if k not in allowed]
        if unknown:
            where = f"section {section!r}" if section else "the top level"
            raise ValueError(f"{path}: unknown key(s) {unknown} in {where}; valid keys: "
                             f"{sorted(k for k in allowed if k != 'self')}")
    return cfg


def scale_steps(cfg: dict, factor: float) -> dict:
    """A copy of ``cfg`` with every stage's ``steps`` and the post ``eval_every`` multiplied by
    ``factor`` (at least 1); the factor is recorded as ``cfg["scale"]``."""
    if factor <= 0:
        raise ValueError(f"scale must be > 0, got {factor}")
    cfg = copy.deepcopy(cfg)
    for stage in ("teacher", "mid", "post"):
        cfg[stage]["steps"] = max(1, round(cfg[stage]["steps"] * factor))
    if cfg["post"].get("eval_every"):
        cfg["post"]["eval_every"] = max(1, round(cfg["post"]["eval_every"] * factor))
    cfg["scale"] = factor
    return cfg


def build_model(model_cfg: dict, num_classes: int, seed: int, device: torch.device) -> DiT:
    """A class-conditional DiT from ``model: {preset: "DiT-S/4", ...DiT kwargs}`` (preset null:
    all DiT arguments from the config). Built on the CPU with a fixed seed, then moved."""
    kwargs = {k: v for k, v in model_cfg.items() if k != "preset"}
    kwargs.update(input_size=32, in_channels=1, num_classes=num_classes)
    torch.manual_seed(seed)
    preset = model_cfg.get("preset")
    net = dit_from_preset(preset, **kwargs) if preset else DiT(**kwargs)
    return net.to(device)


def train_config(stage: dict, cfg: dict, name: str, steps: int | None = None) -> TrainConfig:
    work = Path(cfg["work_dir"])
    return TrainConfig(
        steps=int(stage["steps"] if steps is None else steps), lr=float(stage["lr"]),
        betas=tuple(stage.get("betas", (0.9, 0.999))), grad_clip=stage.get("grad_clip", 1.0),
        ema_decay=float(stage.get("ema_decay", 0.999)), log_every=int(stage.get("log_every", 100)),
        ckpt_path=str(work / f"{name}.pt"), log_path=str(work / f"{name}_log"),
        seed=int(cfg["seed"]), amp=stage.get("amp", "auto"), progress=False,
        cuda_graph=bool(stage.get("cuda_graph", False)))


# ---- timing, sampling, evaluation ----------------------------------------------------------

class GpuClock:
    """Wall time with CUDA synchronisation at both ends; ``pause()`` excludes a block."""

    def __init__(self, device: torch.device):
        self.device, self.excluded, self.start = device, 0.0, None

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def begin(self) -> GpuClock:
        self.start, self.excluded = self.now(), 0.0
        return self

    def seconds(self) -> float:
        """Seconds since ``begin`` minus the paused blocks."""
        return self.now() - self.start - self.excluded

    @contextmanager
    def pause(self):
        t0 = self.now()
        try:
            yield
        finally:
            self.excluded += self.now() - t0


def eval_noise(n: int, seed: int, num_classes: int, device) -> tuple[Tensor, Tensor]:
    """Fixed evaluation noise (n, 1, 32, 32) and balanced labels, the same for every run."""
    g = torch.Generator().manual_seed(seed + 12345)
    noise = torch.randn(n, 1, 32, 32, generator=g)
    return noise.to(device), (torch.arange(n) % num_classes).to(device)


@contextmanager
def attention_backend(net: nn.Module, backend: str | None):
    """Temporarily set ``net.attn_backend`` (a DiT attribute) to ``backend`` (None: keep)."""
    old = getattr(net, "attn_backend", None)
    if backend is not None:
        net.attn_backend = backend
    try:
        yield net
    finally:
        if backend is not None:
            net.attn_backend = old


@torch.no_grad()
def flowmap_samples(net: nn.Module, noise: Tensor, y: Tensor, steps: int, batch: int,
                    backend: str | None) -> Tensor:
    """k-step flow-map samples (TVM Fig. 3, uniform grid) in fp32, clamped to [-1, 1]."""
    net.eval()
    with attention_backend(net, backend):
        out = [sample_flowmap(net, noise[i:i + batch], steps=steps, y=y[i:i + batch]).x
               for i in range(0, len(noise), batch)]
    return torch.cat(out).clamp(-1, 1)


def reference_stats(dataset: str, n: int | None, device) -> tuple:
    """(mu, sigma) of the classifier features of the first ``n`` test images (all if None),
    computed on ``device``."""
    x, _ = load_mnist(dataset, "test")
    return feature_stats(classifier_features(x[:n].to(device), dataset))


def evaluate(net: nn.Module, cfg: dict, noise: Tensor, y: Tensor, ref: tuple,
             backend: str | None = None) -> dict[str, float]:
    """fd_k for k in (1, 2): classifier Frechet distance of k-step samples to the test split."""
    out = {}
    for k in (1, 2):
        x = flowmap_samples(net, noise, y, k, int(cfg["eval"].get("batch", 500)), backend)
        out[f"fd_{k}"] = classifier_fd(x, ref, cfg["dataset"])
    return out


def export_weights(net: nn.Module, path: Path, model_cfg: dict, num_classes: int,
                   **meta) -> None:
    """Save ``net``'s weights in bf16 (half of fp32's size) with what rebuilds the network:
    ``{"state_dict", "model", "num_classes", **meta}`` (see ``tvmlib.checkpoints_fashion``)."""
    sd = {k: v.detach().to("cpu", torch.bfloat16) if v.is_floating_point() else v.cpu()
          for k, v in net.state_dict().items()}
    atomic_save({"state_dict": sd, "model": dict(model_cfg), "num_classes": num_classes,
                 **meta}, path)


def save_grid(images: Tensor, path: Path, nrow: int) -> None:
    """Save images in [-1, 1] as one PNG grid (written to a temporary name, then renamed)."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    save_image(images.float().cpu(), tmp, nrow=nrow, normalize=True, value_range=(-1, 1),
               padding=1)
    tmp.replace(path)


def grid_inputs(cfg: dict, num_classes: int, device) -> tuple[Tensor, Tensor]:
    """Noise and labels of the sample grids: ``eval.grid_cols`` samples per class, one row per
    class."""
    cols = int(cfg["eval"].get("grid_cols", 10))
    g = torch.Generator().manual_seed(int(cfg["seed"]) + 777)
    noise = torch.randn(num_classes * cols, 1, 32, 32, generator=g).to(device)
    y = torch.arange(num_classes).repeat_interleave(cols).to(device)
    return noise, y


def autocast(device: torch.device, amp: str = "auto"):
    """bf16 autocast where ``tvmlib.training.loop`` would use it (CUDA with amp "auto", or "bf16")."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def log_every(name: str, every: int):
    """A ``train`` callback printing the loss every ``every`` steps (flushed)."""
    def callback(state, logs) -> None:
        if every and state.step % every == 0:
            print(f"[{name}] step {state.step}: loss {float(logs['loss']):.4g}", flush=True)
    return callback


def lr_warmup(base_lr: float, warmup: int, then=None):
    """A ``train`` callback ramping the learning rate linearly over ``warmup`` steps."""
    def callback(state, logs) -> None:
        for group in state.opt.param_groups:
            group["lr"] = base_lr * min(1.0, (state.step + 1) / warmup) if warmup else base_lr
        if then is not None:
            then(state, logs)
    return callback


def run_stage(name: str, net: nn.Module, loss_fn, source, cfg: dict, stage: dict,
              clock: GpuClock, eval_fn=None) -> tuple[object, float]:
    """``train`` one stage with warm-up and progress lines; returns (state, GPU seconds)."""
    tcfg = train_config(stage, cfg, name)
    warm = int(stage.get("warmup", 0))
    base_lr = tcfg.lr
    tcfg.lr = base_lr / warm if warm else base_lr
    every = int(stage.get("print_every", stage.get("log_every", 100)))
    print(f"[{name}] {tcfg.steps} steps, batch {cfg['batch_size']}, lr {base_lr:g}", flush=True)
    clock.begin()
    state = train(net, loss_fn, source, tcfg, eval_fn=eval_fn,
                  eval_every=int(stage.get("eval_every", 0)) if eval_fn else 0,
                  callback=lr_warmup(base_lr, warm, log_every(name, every)))
    seconds = clock.seconds()
    print(f"[{name}] done in {seconds:.1f} GPU s", flush=True)
    return state, seconds


# ---- the experiment ---------------------------------------------------------------------------

EXPORTS = {"teacher": "fashion_fm_teacher.pt", "scratch": "fashion_tvm_scratch.pt",
           "cmt": "fashion_tvm_cmt.pt"}  # file names of --export (EMA weights, bf16)


def run(cfg: dict, out: Path, device: torch.device, command: str,
        export: Path | None = None) -> dict:
    t_start = time.perf_counter()
    seed = int(cfg["seed"])
    work = Path(cfg["work_dir"])
    if not work.is_absolute():
        work = repo_root() / work
    cfg = {**cfg, "work_dir": str(work)}
    work.mkdir(parents=True, exist_ok=True)
    x, y = load_mnist(cfg["dataset"], "train")
    num_classes = int(y.max()) + 1
    x, y = x.to(device), y.to(device)
    n_ref = cfg["eval"].get("n_reference") or 10_000  # the whole test split by default
    ref = reference_stats(cfg["dataset"], n_ref, device)
    noise, labels = eval_noise(int(cfg["eval"]["n_samples"]), seed, num_classes, device)
    grid_noise, grid_y = grid_inputs(cfg, num_classes, device)
    cols = int(cfg["eval"].get("grid_cols", 10))
    clock = GpuClock(device)
    backends = {"teacher": "math", "mid": "math", "post": "math", "eval": None,
                **(cfg.get("attn_backend") or {})}

    def model(stage: str) -> DiT:
        net = build_model(cfg["model"], num_classes, seed, device)
        net.attn_backend = backends[stage]
        return net

    # (a) teacher ------------------------------------------------------------------------------
    tc = cfg["teacher"]
    net = model("teacher")
    print(f"model: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters on "
          f"{device}", flush=True)
    fm = FMLoss(tc.get("time_sampler", "uniform"), float(tc.get("mean", 0.0)),
                float(tc.get("std", 1.0)), float(tc.get("label_dropout", 0.1)), num_classes)
    src = TensorSource(x, y, int(cfg["batch_size"]), seed)
    state, teacher_seconds = run_stage("teacher", net, fm, src, cfg, tc, clock)
    teacher = state.ema.module.eval()
    teacher_ckpt = work / "teacher.pt"

    mc = cfg["mid"]
    solver = dict(steps=int(mc.get("solver_steps", 16)), solver=mc.get("solver", "dpm++2m"),
                  grid=mc.get("grid", "logsnr"),
                  **{k: mc[k] for k in ("t_max", "t_min", "exact_ends") if k in mc})
    with torch.no_grad(), attention_backend(teacher, backends["eval"]):
        tr = teacher_trajectory(teacher, grid_noise, y=grid_y, cfg_scale=mc.get("cfg_scale"),
                                **solver)
        save_grid(tr.x.clamp(-1, 1), out.parent / "05_samples_teacher.png", cols)
        bs = int(cfg["eval"].get("batch", 500))
        xs = torch.cat([teacher_trajectory(teacher, noise[i:i + bs], y=labels[i:i + bs],
                                           cfg_scale=mc.get("cfg_scale"), **solver).x
                        for i in range(0, len(noise), bs)]).clamp(-1, 1)
    teacher_fd = classifier_fd(xs, ref, cfg["dataset"])
    print(f"[teacher] FD with {solver['solver']} {tr.nfe} NFE: {teacher_fd:.3f}", flush=True)
    if export is not None:
        export_weights(teacher, export / EXPORTS["teacher"], cfg["model"], num_classes,
                       kind="fm", steps=int(tc["steps"]), sampler=solver,
                       fd={f"{solver['solver']}_{tr.nfe}": teacher_fd}, command=command)

    # (b) mid-training -------------------------------------------------------------------------
    student = model("mid")
    load_student_weights(teacher_ckpt, student)
    cmt = CMTLoss(copy.deepcopy(teacher), **solver, points=mc.get("points"),
                  endpoint_only=bool(mc.get("endpoint_only", False)),
                  space=mc.get("space", "velocity"), labels=mc.get("labels", "batch"),
                  label_dropout=float(mc.get("label_dropout", 0.0)),
                  cfg_scale=mc.get("cfg_scale"), seed=seed)
    pool_seconds = 0.0
    if mc.get("pool", False):  # all trajectories up front, in large teacher batches
        n_pool = int(mc["steps"]) * cmt.num_trajectories(int(cfg["batch_size"]))
        clock.begin()
        with autocast(device, mc.get("amp", "auto")):
            cmt.prefill(n_pool, x[:1], batch=int(mc.get("pool_batch", 1000)))
        pool_seconds = clock.seconds()
        print(f"[mid] {n_pool} teacher trajectories ({tr.nfe} NFE each) in {pool_seconds:.1f} "
              "GPU s", flush=True)
    src = TensorSource(x, y, int(cfg["batch_size"]), seed + 1)
    _, mid_seconds = run_stage("mid", student, cmt, src, cfg, mc, clock)
    mid_seconds += pool_seconds
    del cmt, student

    def write_result() -> dict:  # after each post run, so an interrupted run keeps the others
        stages = {"teacher_gpu_seconds": teacher_seconds, "mid_gpu_seconds": mid_seconds,
                  "teacher_fd": teacher_fd, "teacher_nfe": tr.nfe}
        prov = provenance(command=command, seed=seed, wall_seconds=time.perf_counter() - t_start,
                          metric=f"classifier Frechet distance ({cfg['dataset']} SmallCNN "
                                 f"features, {len(noise)} samples vs {n_ref} test images)",
                          gpu_seconds="CUDA-synchronised wall time of training only (evaluation "
                                      "excluded); post-training rows count the post run alone")
        result = {"provenance": prov, "runs": runs, "stages": stages, "config": cfg}
        atomic_write_text(json.dumps(result, indent=1), out)
        return result

    # (c) post-training from three starts ------------------------------------------------------
    pc = cfg["post"]
    inits = {"scratch": None, "teacher_init": teacher_ckpt, "cmt": work / "mid.pt"}
    runs = {}
    for name in RUNS:
        net = model("post")
        tvm = TVMLoss(net, target_decay=float(pc.get("target_decay", 0.99)),
                      num_classes=num_classes, label_dropout=float(pc.get("label_dropout", 0.1)),
                      cfg_scale=pc.get("cfg_scale"), scale_param=bool(pc.get("scale_param", True)))
        if inits[name] is not None:
            load_student_weights(inits[name], net, loss=tvm)
        rows = []

        def eval_fn(state, rows=rows, name=name) -> dict:
            with clock.pause():
                fd = evaluate(state.ema.module, cfg, noise, labels, ref, backends["eval"])
            row = {"step": state.step, **fd, "gpu_seconds": clock.seconds()}
            rows.append(row)
            print(f"[{name}] step {state.step}: FD 1-step {fd['fd_1']:.3f}, 2-step "
                  f"{fd['fd_2']:.3f}, {row['gpu_seconds']:.1f} GPU s", flush=True)
            return fd

        fd0 = evaluate(net, cfg, noise, labels, ref, backends["eval"])
        rows.append({"step": 0, **fd0, "gpu_seconds": 0.0})
        print(f"[{name}] step 0: FD 1-step {fd0['fd_1']:.3f}, 2-step {fd0['fd_2']:.3f}",
              flush=True)
        src = TensorSource(x, y, int(cfg["batch_size"]), seed + 2)
        state, _ = run_stage(f"post_{name}", net, tvm, src, cfg, pc, clock, eval_fn)
        ema = state.ema.module
        for k in (1, 2):
            grid = flowmap_samples(ema, grid_noise, grid_y, k, len(grid_noise),
                                   backends["eval"])
            save_grid(grid, out.parent / f"05_samples_{name}_{k}step.png", cols)
        runs[name] = rows
        write_result()
        if export is not None and name in EXPORTS:
            export_weights(ema, export / EXPORTS[name], cfg["model"], num_classes, kind="tvm",
                           steps=int(pc["steps"]), init=name, scale_param=tvm.scale_param,
                           fd={k: rows[-1][k] for k in ("fd_1", "fd_2")}, command=command)
        del net, tvm, state, ema

    result = write_result()
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f} s wall in all)", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML run config (configs/cmt_*.yaml)")
    p.add_argument("--out", default=None, help="results JSON (default figures/05_cmt.json); "
                   "sample grids are written next to it")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps "
                   "(and eval_every) by this factor, e.g. 0.5 for a half-budget run")
    p.add_argument("--export", default=None, metavar="DIR", help="also save the EMA weights "
                   f"(bf16) of the teacher and of two post runs as {sorted(EXPORTS.values())}")
    args = p.parse_args(argv)
    cfg = scale_steps(load_config(args.config), args.scale)
    out = Path(args.out) if args.out else figures_dir() / "05_cmt.json"
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    command = "python -m tvmlib.experiments.cmt " + " ".join(
        sys.argv[1:] if argv is None else argv)
    return run(cfg, out, device, command, Path(args.export) if args.export else None)


if __name__ == "__main__":
    main()
