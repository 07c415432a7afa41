"""CMT: teacher trajectories, the log-SNR grid, the mid-training loss, weight carry-over into a
TVM student, the trajectory cache, and the GPU experiment at smoke size on the CPU.

References are independent: the closed-form Gaussian flow (``tvmlib.core.analytic.GaussianFlow``) as
exact teacher and exact student, float64 throughout where exactness is claimed."""

import json
import math
from pathlib import Path

import pytest
import torch

from tvmlib.core.analytic import GaussianFlow
from tvmlib.core.ema import EMA
from tvmlib.core.losses import TVMLoss
from tvmlib.core.losses.cmt import CMTLoss, all_pairs, cmt_targets
from tvmlib.core.solvers import T_MAX, T_MIN, logsnr, sample, t_of_logsnr, time_grid
from tvmlib.nn import MLP2D
from tvmlib.nn.dit import DiT
from tvmlib.training.loop import TrainConfig, train
from tvmlib.training.weights import CheckpointMismatchError, load_weights
from tvmlib.utils.shards import TrajectoryCache

D = torch.float64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many tiny ops; on a shared CPU one thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gaussian() -> GaussianFlow:
    return GaussianFlow(torch.tensor([1.0, -0.5]), 0.5)


def _noise(n: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=D)


def logsnr_grid(steps: int, **kw) -> torch.Tensor:
    return time_grid(steps, "logsnr", **kw)


def teacher_trajectory(net, noise, steps: int = 16, solver: str = "dpm++2m", **kw):
    """A CMT teacher trajectory: every state of ``solver`` on the log-SNR grid."""
    return sample(net, noise, steps, solver=solver, grid="logsnr", return_trajectory=True, **kw)


def _exact_end(gf: GaussianFlow, noise: torch.Tensor, t: float = 0.0) -> torch.Tensor:
    n = len(noise)
    return gf.flow_map(noise, torch.ones(n, dtype=D), torch.full((n,), t, dtype=D))


# ---- time grid ---------------------------------------------------------------------------

def test_logsnr_grid_is_monotone_uniform_in_logsnr_with_exact_ends():
    for steps in (1, 2, 5, 16):
        t = logsnr_grid(steps)
        assert t.shape == (steps + 1,) and t.dtype == D
        assert t[0] == 1.0 and t[-1] == 0.0  # exact pure noise and exact data
        assert bool((t[1:] < t[:-1]).all())
    t = logsnr_grid(16)
    lam = logsnr(t[1:-1])  # interior points, finite log-SNR
    steps = lam[1:] - lam[:-1]
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-12, atol=0)
    # ... and they are the interior of the uniform grid between logSNR(t_max) and logSNR(t_min)
    full = torch.linspace(float(logsnr(T_MAX)), float(logsnr(T_MIN)), 17, dtype=D)
    torch.testing.assert_close(lam, full[1:-1], rtol=1e-12, atol=1e-12)
    # Without exact ends the grid runs from t_max to t_min, geometric in EDM's sigma = t/(1-t)
    t = logsnr_grid(16, exact_ends=False)
    torch.testing.assert_close(t[[0, -1]], torch.tensor([T_MAX, T_MIN], dtype=D))
    sigma = t / (1 - t)
    torch.testing.assert_close(sigma[0], torch.tensor(80.0, dtype=D))
    ratio = sigma[1:] / sigma[:-1]
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-10, atol=0)
    # logSNR = log((1-t)^2 / t^2) and its inverse
    tt = torch.tensor([0.1, 0.5, 0.9], dtype=D)
    torch.testing.assert_close(logsnr(tt), torch.log((1 - tt) ** 2 / tt**2))
    torch.testing.assert_close(t_of_logsnr(logsnr(tt)), tt)
    with pytest.raises(ValueError, match="t_min < t_max"):
        logsnr_grid(8, t_max=0.1, t_min=0.2)
    with pytest.raises(ValueError, match="unknown grid"):
        time_grid(8, "cosine")


# ---- teacher solvers ----------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["heun", "dpm++2m"])
def test_second_order_solvers_reach_the_exact_gaussian_endpoint(solver):
    gf, noise = _gaussian(), _noise()
    exact = _exact_end(gf, noise)
    out = teacher_trajectory(gf, noise, steps=512, solver=solver)
    assert (out.x - exact).abs().max() < 1e-4
    # every intermediate state lies on the exact trajectory psi(noise, 1, t_k)
    for k in (64, 256, 448):
        ref = _exact_end(gf, noise, float(out.times[k]))
        assert (out.trajectory[k] - ref).abs().max() < 1e-4


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("dpm++2m", 2)])
def test_solver_convergence_order_on_the_logsnr_grid(solver, order):
    gf, noise = _gaussian(), _noise()
    exact = _exact_end(gf, noise)
    err = [(teacher_trajectory(gf, noise, m, solver).x - exact).abs().max().item()
           for m in (32, 64, 128)]
    ratios = [err[0] / err[1], err[1] / err[2]]
    for r in ratios:  # halving the log-SNR step divides the error by 2^order
        assert 2**order * 0.8 < r < 2**order * 1.25, (solver, err)


def test_trajectory_layout_nfe_and_guidance():
    gf, noise = _gaussian(), _noise(16)
    for solver, nfe in (("euler", 8), ("heun", 16), ("dpm++2m", 8), ("flowmap", 8)):
        out = teacher_trajectory(gf, noise, steps=8, solver=solver)
        assert out.trajectory.shape == (9, 16, 2) and out.nfe == nfe
        assert torch.equal(out.trajectory[0], noise) and torch.equal(out.trajectory[-1], out.x)
        torch.testing.assert_close(out.times, logsnr_grid(8))
    # Guidance: w = 1 is the conditional field, w = 0 the unconditional one; 2 NFE per step.
    torch.manual_seed(0)
    net = MLP2D(hidden=32, depth=2, num_classes=3).double()
    y = torch.tensor([0, 1, 2, 1] * 4)
    cond = teacher_trajectory(net, noise, 6, "heun", y=y)
    one = teacher_trajectory(net, noise, 6, "heun", y=y, cfg_scale=1.0)
    zero = teacher_trajectory(net, noise, 6, "heun", y=y, cfg_scale=0.0)
    null = teacher_trajectory(net, noise, 6, "heun", y=torch.full_like(y, 3))
    torch.testing.assert_close(one.trajectory, cond.trajectory)
    torch.testing.assert_close(zero.trajectory, null.trajectory)
    assert one.nfe == 2 * cond.nfe == 24
    with pytest.raises(ValueError, match="unknown solver"):
        teacher_trajectory(gf, noise, 4, "rk4")


def test_flow_map_targets_compose_along_an_exact_trajectory():
    """Jump i -> j then j -> k equals the direct jump i -> k, and each regression target is the
    exact flow-map output F(x_i, t_i, t_j) = (psi(x_i, t_i, t_j) - x_i) / (t_j - t_i)."""
    gf, noise = _gaussian(), _noise(64)
    out = teacher_trajectory(gf, noise, steps=8, solver="flowmap")
    traj, times = out.trajectory, out.times
    n = noise.shape[0]

    def tv(i):
        return times[i].expand(n)

    for i, j, k in ((0, 3, 8), (1, 2, 5), (2, 6, 7), (0, 1, 8)):
        T_ij = cmt_targets(traj[i], traj[j], tv(i), tv(j))
        T_jk = cmt_targets(traj[j], traj[k], tv(j), tv(k))
        T_ik = cmt_targets(traj[i], traj[k], tv(i), tv(k))
        two_jumps = traj[i] + (times[j] - times[i]) * T_ij + (times[k] - times[j]) * T_jk
        torch.testing.assert_close(two_jumps, traj[i] + (times[k] - times[i]) * T_ik,
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(T_ik, gf(traj[i], tv(i), tv(k)), rtol=0, atol=1e-12)
    k_all, l_all = all_pairs(8)
    assert len(k_all) == 36 and bool((k_all < l_all).all())


# ---- the CMT loss -------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint_only", [False, True])
@pytest.mark.parametrize("space", ["velocity", "sample"])
def test_cmt_loss_is_zero_for_the_exact_flow_map(endpoint_only, space):
    gf = _gaussian()
    loss = CMTLoss(gf, steps=16, solver="flowmap", endpoint_only=endpoint_only, space=space)
    value, logs = loss(gf, torch.zeros(64, 2, dtype=D))  # 4 trajectories x 16 pairs
    assert value.item() < 1e-10 and logs["loss"].item() < 1e-10
    # a slightly wrong student (data std 0.55 instead of 0.5) is not
    wrong = GaussianFlow(torch.tensor([1.0, -0.5]), 0.55)
    assert loss(wrong, torch.zeros(64, 2, dtype=D))[0].item() > 1e-4


def test_cmt_loss_matches_a_hand_written_endpoint_loss():
    """CM form with deterministic pairs: replay the noise and sum by hand."""
    torch.manual_seed(0)
    teacher = MLP2D(hidden=32, depth=2).double()
    student = MLP2D(hidden=32, depth=2).double()
    loss = CMTLoss(teacher, steps=6, solver="heun", endpoint_only=True)
    torch.manual_seed(3)
    value, _ = loss(student, torch.zeros(12, 2, dtype=D))  # 2 trajectories x 6 points
    torch.manual_seed(3)
    noise = torch.randn(2, 2, dtype=D)
    out = teacher_trajectory(teacher, noise, 6, "heun")
    terms = []
    for k in range(6):
        t = out.times[k].expand(2)
        F = student(out.trajectory[k], t, torch.zeros(2, dtype=D))
        terms.append((F - (out.x - out.trajectory[k]) / (0 - t[:, None])).square().mean(1))
    torch.testing.assert_close(value, torch.stack(terms).mean())
    # the gradient reaches the student only; the teacher is frozen
    value.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.body[0].weight.grad.abs().sum() > 0


def test_small_batch_and_pair_settings_raise_clear_errors():
    loss = CMTLoss(MLP2D(hidden=16, depth=1), steps=16)
    with pytest.raises(ValueError, match="smaller than the 16 points.*pitfall 2"):
        loss(MLP2D(hidden=16, depth=1), torch.zeros(8, 2))
    with pytest.raises(ValueError, match="not a multiple.*use 32 or 48"):
        loss.num_trajectories(40)
    assert loss.num_trajectories(128) == 8
    with pytest.raises(ValueError, match="points must be None or 16"):
        CMTLoss(MLP2D(), steps=16, endpoint_only=True, points=4)
    with pytest.raises(ValueError, match="points must be in"):
        CMTLoss(MLP2D(), steps=4, points=11)
    k, l = CMTLoss(MLP2D(), steps=4, points=10).sample_pairs(3)  # all 10 pairs, each once
    assert k.shape == (3, 10) and bool((k < l).all())
    assert all(len(set(zip(k[r].tolist(), l[r].tolist()))) == 10 for r in range(3))


# ---- carrying weights into the TVM student --------------------------------------------------

def _tiny_dit(**kw) -> DiT:
    torch.manual_seed(kw.pop("seed", 0))
    args = dict(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=1,
                num_heads=2, num_classes=3)
    return DiT(**{**args, **kw})


def test_mid_trained_weights_load_into_student_ema_and_tvm_target(tmp_path):
    # A real tvmlib.training.loop checkpoint of a (mid-trained) network.
    net = _tiny_dit()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))

    class Source:
        def next_batch(self):
            return x[:8], y[:8]

    ckpt = tmp_path / "mid.pt"
    state = train(net, CMTLoss(_tiny_dit(seed=1), steps=2, points=2), Source(),
                  TrainConfig(steps=2, lr=1e-2, ema_decay=0.5, ckpt_path=str(ckpt),
                              progress=False))
    saved = torch.load(ckpt, weights_only=True)
    assert set(saved) == {"step", "net", "ema", "opt", "loss", "source", "rng", "history",
                          "train_seconds", "log_window", "timings", "meta", "sha256"}
    want = state.ema.module.state_dict()

    student = _tiny_dit(seed=2)
    tvm = TVMLoss(student, num_classes=3)  # its target holds the random init
    ema = EMA(student, 0.999)
    report = load_weights(ckpt, student, ema=ema, loss=tvm)
    assert report == {"loaded": len(want), "kept_init": []}
    for module in (student, ema.module, tvm.target.module):
        got = module.state_dict()
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
    # which="net" takes the raw weights; a bare state_dict works too
    load_weights(ckpt, student, which="net")
    assert all(torch.equal(student.state_dict()[k], saved["net"][k]) for k in want)
    load_weights(want, student)
    assert all(torch.equal(student.state_dict()[k], want[k]) for k in want)


def test_wrong_checkpoints_give_a_clear_error():
    want = _tiny_dit().state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(4\): beta_embedder"):
        load_weights(want, _tiny_dit(guidance=True))
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches \(1\): y_embedder"):
        load_weights(want, _tiny_dit(num_classes=5))
    extra = {**want, "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\): extra.weight"):
        load_weights(extra, _tiny_dit())
    with pytest.raises(CheckpointMismatchError, match="not a state_dict"):
        load_weights({"weights": want}, _tiny_dit())
    # New parameters named explicitly keep their init
    guided = _tiny_dit(guidance=True, seed=3)
    before = guided.beta_embedder.mlp[0].weight.clone()
    report = load_weights(want, guided, allow_missing=("beta_embedder.",))
    assert len(report["kept_init"]) == 4
    assert torch.equal(guided.beta_embedder.mlp[0].weight, before)
    assert torch.equal(guided.t_embedder.mlp[0].weight, want["t_embedder.mlp.0.weight"])


# ---- the trajectory cache -----------------------------------------------------------------

def test_trajectory_cache_round_trips_exactly(tmp_path):
    meta = {"solver": "heun", "steps": 4}
    cache = TrajectoryCache(tmp_path / "c", meta)
    a, b = torch.randn(5, 3, 1, 4, 4), torch.randn(5, 2, 1, 4, 4)
    times = logsnr_grid(4)
    cache.append(a, times, torch.tensor([0, 1, 2]))
    cache.append(b, times, torch.tensor([2, 0]))
    (tmp_path / "c" / "shard_000002_n9.pt.tmp").write_bytes(b"torn")  # an interrupted write
    assert len(cache) == 5
    traj, t, y = TrajectoryCache(tmp_path / "c", meta).load()  # reopened: meta matches
    assert torch.equal(traj, torch.cat([a, b], dim=1)) and torch.equal(t, times)
    assert torch.equal(y, torch.tensor([0, 1, 2, 2, 0]))
    with pytest.raises(ValueError, match="steps: cache 4 vs run 8"):
        TrajectoryCache(tmp_path / "c", {"solver": "heun", "steps": 8})


def test_cmt_loss_fills_then_reuses_its_cache(tmp_path):
    torch.manual_seed(0)
    teacher = MLP2D(hidden=16, depth=1, num_classes=3)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    batch = (torch.zeros(16, 2), torch.tensor([0, 1, 2, 0] * 4))

    def make():
        return CMTLoss(teacher, steps=4, solver="euler", cache=tmp_path / "c",
                       cache_trajectories=8)

    first = make()
    made = [first.trajectories(4, batch[0], batch[1]) for _ in range(2)]
    assert len(calls) == 8 and len(TrajectoryCache(tmp_path / "c", first.cache_meta(
        batch[0]))) == 8
    calls.clear()
    second = make()  # a later run: the cache is complete, the teacher is never called
    read = [second.trajectories(4, batch[0]) for _ in range(2)]  # one full pass
    assert not calls
    stored = torch.cat([m[0] for m in made], dim=1)
    got = torch.cat([r[0] for r in read], dim=1)
    order = [next(i for i in range(8) if torch.equal(got[:, j], stored[:, i])) for j in range(8)]
    assert sorted(order) == list(range(8))  # a permutation of the stored trajectories
    assert torch.equal(torch.cat([r[1] for r in read]),
                       torch.cat([m[1] for m in made])[order])
    value, _ = second(MLP2D(hidden=16, depth=1, num_classes=3), batch)
    assert torch.isfinite(value) and not calls and second.state_dict() == {"cursor": 12}
    with pytest.raises(ValueError, match="solver: cache 'euler' vs run 'heun'"):
        CMTLoss(teacher, steps=4, solver="heun", cache=tmp_path / "c",
                cache_trajectories=8)(teacher, batch)


def test_prefilled_pool_is_made_in_large_batches_and_read_once_per_pass(tmp_path):
    torch.manual_seed(0)
    teacher = MLP2D(hidden=16, depth=1, num_classes=3)
    calls = []
    teacher.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    like = torch.zeros(1, 2)
    loss = CMTLoss(teacher, steps=4, solver="euler", labels="random", cache=tmp_path / "c")
    loss.prefill(10, like, batch=4)  # 3 teacher batches of 4, 4, 2 trajectories
    assert calls == [4] * 4 + [4] * 4 + [2] * 4
    pool, y = loss._pool
    assert pool.shape == (5, 10, 2) and y.shape == (10,) and int(y.max()) < 3
    read = [loss.trajectories(5, like) for _ in range(2)]  # one pass: a permutation
    got = torch.cat([r[0] for r in read], dim=1)
    assert sorted(next(i for i in range(10) if torch.equal(got[:, j], pool[:, i]))
                   for j in range(10)) == list(range(10))
    # the same pool comes back from the cache folder without calling the teacher
    calls.clear()
    again = CMTLoss(teacher, steps=4, solver="euler", labels="random", cache=tmp_path / "c")
    again.prefill(10, like, batch=4)
    assert not calls and torch.equal(again._pool[0], pool) and torch.equal(again._pool[1], y)
    with pytest.raises(ValueError, match="call prefill"):
        CMTLoss(teacher, steps=4, cache=tmp_path / "d")(teacher, (torch.zeros(8, 2), None))


# ---- the GPU experiment, at smoke size on the CPU -----------------------------------------

def test_experiment_smoke_runs_every_stage_and_counts_upstream_seconds(tmp_path, monkeypatch):
    from tvmlib.apps.experiment import main
    from tvmlib.training.config import ConfigError, load_experiment

    monkeypatch.setenv("TVMLIB_FIGURES", str(tmp_path / "fig"))
    config = ROOT / "configs" / "experiments" / "cmt_smoke.yaml"
    out = tmp_path / "05_cmt.json"
    main([str(config), "--out", str(out), "--work-dir", str(tmp_path / "runs")])
    res = json.loads(out.read_text())["results"]
    runs = res["runs"]
    assert list(runs) == ["teacher", "mid", "scratch", "teacher_init", "cmt"]
    exp, cfgs = load_experiment(config)
    post = {c.name: c for c in cfgs}["scratch"]
    for name in ("scratch", "teacher_init", "cmt"):
        ev = runs[name]["evals"]
        assert ev["step"] == list(range(0, post.train.steps + 1, post.eval.every))
        assert all(v > 0 for v in ev["fd_1"] + ev["fd_2"]) and ev["train_s"][0] == 0
        assert set(runs[name]["final"]["ema"]) == {"1", "2"}
    t, m = runs["teacher"]["total_s"], runs["mid"]["total_s"]
    assert runs["mid"]["upstream_s"] == t and m > t
    assert runs["scratch"]["upstream_s"] == 0 and runs["teacher_init"]["upstream_s"] == t
    assert runs["cmt"]["upstream_s"] == m  # teacher and mid-training both counted
    assert (tmp_path / "runs" / "cmt" / "samples_1step.png").exists()
    # the notebook-07 models are exported from such a run folder, with the steps each run made
    from tvmlib.apps.checkpoints_fashion import RUN_OF, export
    from tvmlib.evaluation.pretrained import FASHION_MODELS
    export(tmp_path / "runs", out, tmp_path / "ckpt", "a command")
    for name, info in FASHION_MODELS.items():
        ckpt = torch.load(tmp_path / "ckpt" / info.file, map_location="cpu", weights_only=True)
        run = runs[RUN_OF[name]]
        assert ckpt["steps"] == run["steps_done"] and ckpt["kind"] == info.kind
        assert set(ckpt["fd"].values()) == set(run["final"]["ema"].values())
    # a typo is an error before any work starts, naming the run and the key
    with pytest.raises(ConfigError, match=r"runs\[0\] \(teacher\): loss.pool_bach: unknown "):
        load_experiment(config, ["loss.pool_bach=4"])


def test_experiment_runs_resume_and_refuse_other_settings(tmp_path):
    """A run continues from its folder (longer training, same settings) with its evaluations;
    a changed setting is refused; a total budget counts the runs a run starts from."""
    from tvmlib.experiments.runner import run_experiment
    from tvmlib.training.config import experiment_from_dict

    spec = {"name": "resume", "work_dir": str(tmp_path), "defaults": {
        "device": "cpu", "data": {"dataset": "fashion-mnist"},
        "model": {"preset": "DiT", "patch_size": 8, "hidden_size": 32, "depth": 1,
                  "num_heads": 2, "guidance": False},
        "train": {"steps": 2, "global_batch": 8, "lr": 1e-3, "log_every": 1, "ckpt_every": 0},
        "eval": {"num_samples": 16, "batch_size": 16, "steps": [1], "every": 2,
                 "attn_backend": "math"}},
        "runs": [{"name": "fm", "loss": {"name": "fm"}},
                 {"name": "tvm", "init": "fm", "loss": {"name": "tvm"},
                  "train": {"total_budget_s": 0.0}}]}
    first = run_experiment(*experiment_from_dict(spec), out=False, log=lambda m: None)
    assert first["results"]["runs"]["fm"]["evals"]["step"] == [0, 2]
    tvm = first["results"]["runs"]["tvm"]  # its budget is spent upstream: no step at all
    assert tvm["stopped"] == "time budget" and tvm["steps_done"] == 0
    assert tvm["upstream_s"] == first["results"]["runs"]["fm"]["total_s"] > 0
    longer = run_experiment(*experiment_from_dict(spec, ["train.steps=4"]), out=False,
                            only=["fm"], log=lambda m: None)
    fm = longer["results"]["runs"]["fm"]
    assert fm["steps_done"] == 4 and fm["evals"]["step"] == [0, 2, 4]
    assert fm["curves"]["step"] == [1, 2, 3, 4]  # one history across the two calls
    with pytest.raises(ValueError, match="other settings.*train.lr"):
        run_experiment(*experiment_from_dict(spec, ["train.lr=0.5"]), out=False, only=["fm"],
                       log=lambda m: None)


def test_guided_student_starts_from_an_unguided_run(tmp_path):
    """TVM with w folded in (a beta embedding) from an FM run without one: every other weight
    is the FM run's, the beta embedding keeps its initialisation."""
    from tvmlib.experiments.runner import run_experiment
    from tvmlib.training.checkpoint import read_checkpoint
    from tvmlib.training.config import experiment_from_dict

    spec = {"name": "guided", "work_dir": str(tmp_path), "defaults": {
        "device": "cpu", "data": {"dataset": "fashion-mnist"},
        "model": {"preset": "DiT", "patch_size": 8, "hidden_size": 32, "depth": 1,
                  "num_heads": 2, "guidance": False},
        "train": {"steps": 1, "global_batch": 8, "log_every": 1, "ckpt_every": 0},
        "eval": {"metric": "none"}},
        "runs": [{"name": "fm", "loss": {"name": "fm"}},
                 {"name": "tvm_w15", "init": "fm", "model": {"guidance": True},
                  "loss": {"name": "tvm", "cfg_scale": 1.5}, "train": {"lr": 1e-12}}]}
    runs = run_experiment(*experiment_from_dict(spec), out=False,
                          log=lambda m: None)["results"]["runs"]
    assert runs["tvm_w15"]["steps_done"] == 1
    fm = read_checkpoint(tmp_path / "fm" / "checkpoint.pt")["ema"]["module"]
    student = read_checkpoint(tmp_path / "tvm_w15" / "checkpoint.pt")["net"]
    assert any(k.startswith("beta_embedder.") for k in student)
    for k, v in fm.items():  # lr 1e-12: the student still has the weights it started from
        torch.testing.assert_close(student[k], v, rtol=0, atol=1e-9)


def test_final_sweep_scores_every_solver_and_guidance(tmp_path):
    from tvmlib.experiments.runner import run_experiment
    from tvmlib.training.config import experiment_from_dict

    spec = {"name": "sweep", "work_dir": str(tmp_path), "defaults": {
        "device": "cpu", "data": {"dataset": "fashion-mnist"},
        "model": {"preset": "DiT", "patch_size": 8, "hidden_size": 32, "depth": 1,
                  "num_heads": 2, "guidance": False},
        "train": {"steps": 1, "global_batch": 8, "log_every": 1, "ckpt_every": 0},
        "eval": {"num_samples": 16, "batch_size": 16, "steps": [1, 2], "attn_backend": "math",
                 "solvers": ["euler", "heun"], "cfg_scales": [1.0, 2.0]}},
        "runs": [{"name": "fm", "loss": {"name": "fm"}}]}
    sweep = run_experiment(*experiment_from_dict(spec), out=False,
                           log=lambda m: None)["results"]["runs"]["fm"]["sweep"]
    got = {(r["solver"], r["cfg_scale"], r["steps"]): r["nfe"] for r in sweep}
    assert got == {("euler", 1.0, 1): 1, ("euler", 1.0, 2): 2, ("euler", 2.0, 1): 2,
                   ("euler", 2.0, 2): 4, ("heun", 1.0, 1): 2, ("heun", 1.0, 2): 4,
                   ("heun", 2.0, 1): 4, ("heun", 2.0, 2): 8}
    assert all(r["fd"] > 0 for r in sweep)


@pytest.mark.slow
def test_equal_time_experiment_at_smoke_size(tmp_path):
    """The image comparison's runs (fm with its solver sweep, tvm, meanflow, teacher -> mid ->
    cmt, teacher_init) on a CPU in seconds; the GPU config differs only in sizes and budgets."""
    from tvmlib.experiments.runner import run_experiment
    from tvmlib.training.config import load_experiment

    exp, runs = load_experiment(ROOT / "configs" / "experiments" / "fashion_equal_time.yaml")
    smoke, small = load_experiment(ROOT / "configs" / "experiments" /
                                   "fashion_equal_time_smoke.yaml")
    # the smoke file has every run but the extra training seeds ("<run>_seed<N>")
    full = [r for r in runs if "_seed" not in r.name]
    assert [r.name for r in full] == [r.name for r in small]
    assert [(r.loss.name, r.init, r.loss.cfg_scale, r.model.guidance) for r in full] == \
        [(r.loss.name, r.init, r.loss.cfg_scale, r.model.guidance) for r in small]
    budget = {r.name: (r.train.time_budget_s, r.train.total_budget_s) for r in runs}
    assert {budget[n] for n in ("fm", "tvm", "meanflow")} == {(100.0, None)}
    assert budget["cmt"] == budget["teacher_init"] == (None, 100.0)  # every stage counted
    smoke.work_dir = str(tmp_path)
    res = run_experiment(smoke, small, out=False, log=lambda m: None)["results"]
    assert {r["solver"] for r in res["runs"]["fm"]["sweep"]} == {"euler", "heun", "dpm++2m"}
    assert res["runs"]["cmt"]["upstream_s"] == res["runs"]["mid"]["total_s"]
    assert set(res["reference_fd"]["by_n"]) == {"32", "48"}


def test_equal_time_targets_read_the_records():
    from tvmlib.experiments.results import equal_time_targets

    def rec(fd1, fd4=None, up=0.0, train=(0.0, 10.0), total=10.0):
        return {"evals": {"fd_1": list(fd1), "fd_4": [fd4] * len(fd1), "train_s": list(train)},
                "upstream_s": up, "setup_s": 1.0, "total_s": total}

    runs = {"tvm": rec([90.0, 12.0], 9.0, total=100.0),
            "fm": {"sweep": [{"fd": 10.0}, {"fd": 20.0}]},
            "meanflow": rec([50.0, 13.0]),
            "cmt": rec([40.0, 12.0], up=30.0, train=(0.0, 18.0))}
    got = {r["target"][:12]: (r["value"], r["bound"], r["hit"]) for r in equal_time_targets(runs)}
    assert got["TVM 1 NFE <="] == (12.0, 13.0, True)  # 12 <= 1.3 x 10
    assert got["TVM 4 NFE <="] == (9.0, 10.0, True)
    assert got["TVM 1 NFE < "] == (12.0, 13.0, True)
    assert got["CMT -> TVM r"] == (49.0, 50.0, True)  # 30 upstream + 1 setup + 18 training
    runs["cmt"]["evals"]["fd_1"] = [40.0, 12.5]  # never reaches scratch's 12
    assert not equal_time_targets(runs)[-1]["hit"] and equal_time_targets(runs)[-1]["value"] is None
    # a comparison without MeanFlow and the CMT chain (the 300 s file) has only FM's targets
    short = equal_time_targets({"tvm": runs["tvm"], "fm": runs["fm"]})
    assert [r["target"][:12] for r in short] == ["TVM 1 NFE <=", "TVM 4 NFE <="]
    # teacher init on the same axis: 20 upstream + 1 setup + 40 training = 61 s > 50 s
    runs["teacher_init"] = rec([30.0, 11.0], up=20.0, train=(0.0, 40.0))
    chains = {r["runs"][0]: r for r in equal_time_targets(runs) if r["seeds"] == [1, 1]}
    assert chains["teacher_init"]["value"] == 61.0 and not chains["teacher_init"]["hit"]
    assert chains["teacher_init"]["runs"] == ["teacher_init", "tvm"]
    # chains with guidance folded in are judged against the guided scratch run
    guided = equal_time_targets({"tvm_w15": runs["tvm"], "fm": runs["fm"],
                                 "cmt_w15": rec([40.0, 11.0], up=30.0, train=(0.0, 18.0))})
    assert guided[-1]["runs"] == ["cmt_w15", "tvm_w15"] and guided[-1]["hit"]


def test_equal_time_targets_average_seeds_and_take_each_method_at_its_best():
    """Seeds ("<run>_seed<N>") are averaged; TVM and MeanFlow are taken at their better variant
    (with or without folded guidance) at each target's NFE; FM at each seed's best sampler."""
    from tvmlib.experiments.results import equal_time_summary, equal_time_targets

    def rec(fd1, fd4=0.0, final=None):
        return {"evals": {"fd_1": [999.0, fd1], "fd_4": [999.0, fd4], "train_s": [0.0, 9.0]},
                "upstream_s": 0.0, "setup_s": 1.0, "total_s": 10.0, "train_s": 9.0,
                "steps_done": 5, "final": {"ema": final or {"1": fd1}}}

    runs = {"fm": {"sweep": [{"fd": 10.0}, {"fd": 30.0}]}, "fm_seed1": {"sweep": [{"fd": 20.0}]},
            "tvm": rec(40.0, 30.0), "tvm_seed1": rec(50.0, 30.0),
            "tvm_w15": rec(16.0, 12.0), "tvm_w15_seed1": rec(22.0, 18.0),
            "meanflow": rec(30.0), "meanflow_w15": rec(25.0), "cmt": rec(45.0)}
    got = {r["target"][:12]: r for r in equal_time_targets(runs)}
    one = got["TVM 1 NFE <="]
    assert one["runs"] == ["tvm_w15", "fm"] and one["seeds"] == [2, 2]
    assert one["value"] == pytest.approx(19.0) and one["bound"] == pytest.approx(19.5)
    assert one["value_sd"] == pytest.approx(math.sqrt(18.0)) and one["hit"]
    four = got["TVM 4 NFE <="]
    assert four["value"] == pytest.approx(15.0) and four["bound"] == pytest.approx(15.0)
    assert four["hit"]  # at or below
    mf = got["TVM 1 NFE < "]
    assert mf["runs"] == ["tvm_w15", "meanflow_w15"] and mf["bound"] == 25.0 and mf["hit"]
    assert got["CMT -> TVM r"]["runs"] == ["cmt", "tvm"]  # scratch: the unguided seed 0 run
    rows = {r["run"]: r for r in equal_time_summary({k: v for k, v in runs.items()
                                                     if "final" in v})}
    assert rows["tvm_w15"]["seeds"] == 2 and rows["tvm_w15"]["fd"]["1"][0] == pytest.approx(19.0)
    # the 4-NFE target takes TVM's best variant at 4 jumps, which may not be the 1-jump one
    runs["tvm"], runs["tvm_seed1"] = rec(40.0, 9.0), rec(50.0, 11.0)
    got = {r["target"][:12]: r for r in equal_time_targets(runs)}
    assert got["TVM 1 NFE <="]["runs"] == ["tvm_w15", "fm"]
    four = got["TVM 4 NFE <="]
    assert four["runs"] == ["tvm", "fm"] and four["value"] == pytest.approx(10.0) and four["hit"]


def test_fm_rows_at_equal_nfe():
    """FM's best within an NFE budget and the fewest NFE that match a flow map, over the sweeps
    of several runs (fm and its few-step re-run)."""
    from tvmlib.experiments.results import best_sweep_within, fewest_nfe_below

    def row(nfe, fd):
        return {"solver": "euler", "cfg_scale": 1.0, "steps": nfe, "nfe": nfe, "fd": fd}

    fm = {"sweep": [row(8, 40.0), row(16, 12.0), row(32, 9.0)]}
    few = {"sweep": [row(1, 900.0), row(2, 300.0), row(4, 80.0), row(4, 70.0)]}
    assert best_sweep_within([fm, few], 4)["fd"] == 70.0
    assert best_sweep_within([fm, few], 2)["fd"] == 300.0
    assert best_sweep_within([fm], 4) is None
    assert fewest_nfe_below([fm, few], 30.0)["nfe"] == 16  # 8 NFE gives 40: not enough
    assert fewest_nfe_below([fm, few], 80.0) == row(4, 70.0)  # the better of the two at 4 NFE
    assert fewest_nfe_below([fm, few], 5.0) is None


def test_plot_sweep_draws_one_line_per_solver_and_guidance_in_nfe_order():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tvmlib.experiments.results import plot_sweep

    def row(solver, w, nfe, fd):
        return {"solver": solver, "cfg_scale": w, "steps": nfe, "nfe": nfe, "fd": fd}

    fm = {"sweep": [row("euler", 1.0, 8, 40.0), row("heun", 1.5, 16, 30.0),
                    row("euler", 1.0, 16, 20.0)]}
    few = {"sweep": [row("euler", 1.0, 2, 300.0)]}
    fig, ax = plt.subplots()
    plot_sweep(ax, [fm, few])
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"FM euler, w = 1.0", "FM heun, w = 1.5"}
    euler = lines["FM euler, w = 1.0"]
    assert list(euler.get_xdata()) == [2, 8, 16] and list(euler.get_ydata()) == [300.0, 40.0, 20.0]
    assert euler.get_linestyle() == "-" and lines["FM heun, w = 1.5"].get_linestyle() == "--"
    plt.close(fig)


def test_ablation_verdicts_read_each_run_against_base_seeds():
    from tvmlib.experiments.results import ablation_verdicts

    def rec(fd1):
        return {"train_s": 9.0, "total_s": 10.0, "steps_done": 5, "final": {"ema": {"1": fd1}}}

    # base seeds 90, 100, 110: mean 100, sd 10, so 2 sd = 20 either side
    runs = {"base": rec(90.0), "base_seed1": rec(100.0), "base_seed2": rec(110.0),
            "good": rec(79.0), "bad": rec(121.0), "same": rec(119.0)}
    got = {r["run"]: r for r in ablation_verdicts(runs)}
    assert set(got) == {"good", "bad", "same"}
    assert got["good"]["verdict"] == "better" and got["bad"]["verdict"] == "worse"
    assert got["same"]["verdict"] == "within base's spread"
    assert got["good"]["delta"] == pytest.approx(-21.0)
    # one base seed: nothing to read a difference against
    one = ablation_verdicts({"base": rec(100.0), "x": rec(300.0)})
    assert one[0]["verdict"] == "not resolved"


def test_grid_table_shows_each_committed_grid_with_its_fd_and_marks_the_missing(tmp_path):
    from tvmlib.experiments.results import grid_table

    runs = {"tvm": {"final": {"ema": {"1": 12.34, "2": 5.0}}},
            "fm": {"final": {"ema": {"8": 40.0, "64": 3.0}}}}
    for name, k in (("tvm", 1), ("tvm", 4), ("fm", 8), ("fm", 64)):  # tvm 2: no grid file
        (tmp_path / f"exp_{name}_samples_{k}step.png").write_bytes(b"")
    table = grid_table(runs, "exp", [("tvm", "TVM", (1, 2, 4)), ("fm", "FM", (8, 64))],
                       src="figs", width=99, figures=tmp_path).splitlines()
    assert table[:2] == ["| run | | | |", "|---|---|---|---|"]
    tvm = [c.strip() for c in table[2].strip("|").split("|")]
    assert tvm[0] == "TVM"
    assert tvm[1] == '<img src="figs/exp_tvm_samples_1step.png" width="99"><br>1 NFE: FD 12.3'
    assert tvm[2] == "-" and tvm[3] == "-"  # no grid at 2 steps; no FD at 4 steps
    fm = [c.strip() for c in table[3].strip("|").split("|")]
    assert fm[1].endswith("8 NFE: FD 40.0") and fm[2].endswith("64 NFE: FD 3.0") and fm[3] == ""


def test_mid_training_is_called_only_beyond_two_seed_stds():
    from tvmlib.experiments.results import mid_training_verdict, ordered

    assert ordered(10.0, 14.1, 2.0) and not ordered(10.0, 14.0, 2.0)  # gap > 2 x spread
    assert "does not say" in mid_training_verdict(36.4, 31.4, 6.8)  # within two stds
    assert "did not help" in mid_training_verdict(22.6, 18.0, 2.0)  # CMT behind, resolved
    helped = mid_training_verdict(15.0, 20.0, 1.0)
    assert helped.startswith("Mid-training helped") and "15.0 against 20.0" in helped


def test_compiled_pairs_and_targets_put_each_compiled_run_beside_its_uncompiled_seed_0():
    """A compiled re-run's rows pair each run with the uncompiled run of the same name (not its
    other seeds); its targets take FM and TVM from the re-run and MeanFlow, which compile
    cannot speed up, from the uncompiled runs with all their seeds."""
    from tvmlib.experiments.results import compiled_pairs, compiled_targets

    def rec(fd1, fd4, steps, sweep=None):
        r = {"evals": {"fd_1": [fd1], "fd_4": [fd4], "train_s": [9.0]}, "upstream_s": 0.0,
             "setup_s": 1.0, "total_s": 10.0, "train_s": 9.0, "steps_done": steps,
             "final": {"ema": {"1": fd1 + 1, "4": fd4 + 1}}}
        return {**r, "sweep": sweep} if sweep else r

    plain = {"fm": rec(0, 0, 100, [{"fd": 10.0}, {"fd": 8.0}]), "tvm": rec(30.0, 20.0, 30),
             "tvm_seed1": rec(50.0, 40.0, 31), "meanflow": rec(40.0, 30.0, 60),
             "meanflow_seed1": rec(60.0, 30.0, 61)}
    comp = {"fm": rec(0, 0, 200, [{"fd": 6.0}]), "tvm": rec(25.0, 15.0, 55),
            "teacher": rec(0, 0, 7)}  # no uncompiled teacher: no row
    comp["tvm"]["setup_s"] = 4.0
    pairs = {p["run"]: p for p in compiled_pairs(plain, comp)}
    assert pairs["tvm"]["setup_s"] == (1.0, 4.0)
    assert set(pairs) == {"fm", "tvm"}
    assert pairs["tvm"]["steps"] == (30, 55) and pairs["tvm"]["fd"] == {"1": (31.0, 26.0),
                                                                          "4": (21.0, 16.0)}
    assert pairs["fm"]["fd"]["best"] == (8.0, 6.0)
    got = {t["target"][:12]: t for t in compiled_targets(plain, comp)}
    assert got["TVM 1 NFE <="]["value"] == 25.0 and got["TVM 1 NFE <="]["bound"] == 1.3 * 6.0
    assert got["TVM 1 NFE < "]["bound"] == 50.0 and got["TVM 1 NFE < "]["seeds"] == [1, 2]
    assert got["TVM 1 NFE < "]["hit"]


def test_compiled_rows_mark_the_runs_a_compiled_config_leaves_eager():
    """CMT's teacher and mid-training stay eager in the compiled configs (a cold compile would
    take their whole budget): the README's table must not present them as compiled."""
    from tvmlib.apps.readme_compiled import _pair_rows

    def rec(jvp):
        return {"config": {"model": {"jvp": jvp}}, "steps_done": 10, "train_s": 1.0,
                "setup_s": 0.5, "final": {"ema": {"1": 3.0}}, "evals": {}}

    plain = {"teacher": rec("fused"), "tvm": rec("fused")}
    comp = {"teacher": rec("fused"), "tvm": rec("compiled")}
    rows = {r[0]: r for r in _pair_rows(plain, comp)}
    assert set(rows) == {"teacher (eager in both)", "tvm"}
    assert rows["tvm"][5] == "1: 3 -> 3"


def test_startup_seconds_is_the_first_segment_less_the_steady_rate():
    from tvmlib.experiments.timing import startup_seconds

    # 10 ms per step after a 30 s start: evaluations at steps 0, 1000, 2000, 3000
    rec = {"evals": {"step": [0, 1000, 2000, 3000], "train_s": [0.0, 40.0, 50.0, 60.0]}}
    assert startup_seconds(rec) == pytest.approx(30.0)
    rec["evals"]["train_s"][3] = 80.0  # the median of the later segments: a slow one
    assert startup_seconds(rec) == pytest.approx(20.0)  # median of 10 and 30 ms: 20 ms
    assert startup_seconds({"evals": {"step": [0, 10, 20], "train_s": [0, 1, 2]}}) is None


def test_checkpoint_write_fit_separates_writes_from_steps():
    from tvmlib.experiments.timing import checkpoint_write_fit

    # 80 ms per step, 1.5 s per write every 500 steps, evaluations every 250 steps after a
    # 20 s start: segments [250, 500) hold no write, [500, 750) one, ...
    steps = list(range(0, 3001, 250))
    secs = [0.0]
    for a, b in zip(steps[:-1], steps[1:]):
        writes = len([k for k in range(500, b, 500) if k >= a])
        secs.append(secs[-1] + (b - a) * 0.08 + 1.5 * writes + (20.0 if a == 0 else 0.0))
    rec = {"evals": {"step": steps, "train_s": secs}, "config": {"train": {"ckpt_every": 500}}}
    write, se = checkpoint_write_fit(rec)
    assert write == pytest.approx(1.5) and se == pytest.approx(0.0, abs=1e-9)
    noise = [0.0, 0.0, 0.3, -0.3, 0.2, -0.2, 0.1, -0.1, 0.0, 0.3, -0.3, 0.0, 0.0]
    rec["evals"]["train_s"] = [t + e for t, e in zip(secs, noise)]  # noisy: a real error bar
    write, se = checkpoint_write_fit(rec)
    assert abs(write - 1.5) < 3 * se and 0.05 < se < 1.0
    rec["config"]["train"]["ckpt_every"] = 250  # one write in every segment: not separable
    assert checkpoint_write_fit(rec) is None


def test_target_init_share_is_what_an_unwarmed_target_keeps_of_its_start():
    from tvmlib.experiments.results import UNSETTLED, target_init_share

    def rec(decay, steps):
        return {"config": {"loss": {"target_decay": decay}}, "steps_done": steps}

    # theta_n = d theta_{n-1} + (1 - d) online: the start's weight after n updates is d ** n
    weight = 1.0
    for _ in range(1015):
        weight *= 0.999
    assert target_init_share(rec(0.999, 1015)) == pytest.approx(weight)
    assert target_init_share(rec(0.999, 1015)) > UNSETTLED > target_init_share(rec(0.99, 1015))
    assert target_init_share(rec(0.0, 10)) == 0.0 and target_init_share(rec(None, 10)) == 0.0


def test_detach_effects_pairs_each_jvp_with_and_without_the_gradient_through_it():
    from tvmlib.experiments.timing import detach_effects

    def row(jvp, detach, kernels, ms):
        return {"jvp": jvp, "detach_jvp": detach, "kernels": kernels,
                "saved_mb": ms * 5, "cpu_ms_median": ms}

    rows = [row("fused", False, 100, 10.0), row("fused", True, 99, 9.9),
            row("func", False, 150, 20.0), row("func", True, 100, 14.0), row("compiled", False,
                                                                              None, 5.0)]
    got = detach_effects(rows)
    assert set(got) == {"fused", "func"}  # compiled has no detached row
    assert got["func"] == {"kernels": (150, 100), "saved_mb": (100.0, 70.0), "cpu_ms": (20.0, 14.0)}
    assert got["fused"]["kernels"] == (100, 99)


def _timed_run(loss, first_s, ckpt_s=None, steps=2000, jvp="compiled"):
    """A results record with evaluations every 500 steps, 50 ms a step after ``first_s``."""
    secs = [0.0] + [first_s + 0.05 * k for k in range(500, steps + 1, 500)]
    rec = {"config": {"loss": {"name": loss}, "train": {"ckpt_every": 500},
                      "model": {"jvp": jvp}}, "steps_done": steps,
           "train_s": secs[-1], "first_step_s": [first_s], "final": {"ema": {"1": 9.0}},
           "evals": {"step": list(range(0, steps + 1, 500)), "train_s": secs,
                     "fd_1": [400.0, 40.0, 30.0, 20.0, 10.0]}}
    return rec if ckpt_s is None else {**rec, "ckpt_s": ckpt_s}


def test_write_seconds_divides_the_recorded_writes_by_their_number():
    from tvmlib.experiments.timing import write_seconds

    assert write_seconds(_timed_run("tvm", 5.0, ckpt_s=6.0)) == pytest.approx(1.5)  # 4 writes
    assert write_seconds(_timed_run("tvm", 5.0)) is None  # writes inside the clock: not recorded


def test_writes_in_clock_counts_only_the_writes_a_run_timed_as_training():
    from tvmlib.experiments.timing import writes_in_clock

    assert writes_in_clock(_timed_run("fm", 5.0)) == 4  # 2000 steps, a write every 500
    assert writes_in_clock(_timed_run("fm", 5.0, ckpt_s=6.0)) == 0  # recorded outside
    rec = _timed_run("fm", 5.0)
    rec["config"]["train"]["ckpt_every"] = 0
    assert writes_in_clock(rec) == 0


def test_a_warm_compile_cache_is_found_and_cut_back_to_a_cold_start():
    from tvmlib.experiments.timing import cold_equivalent, cut_at, warm_starts

    runs = {"fm": _timed_run("fm", 60.0), "tvm_w15": _timed_run("tvm", 55.0),
            "tvm": _timed_run("tvm", 5.0)}
    warm, = warm_starts(runs)  # fm compiles another network: not compared with the TVM runs
    assert (warm["run"], warm["like"], warm["head_s"]) == ("tvm", "tvm_w15", 50.0)
    assert warm_starts({"tvm": runs["tvm"], "fm": runs["fm"]}) == []
    # CMT's teacher trains FM eagerly: a short first step without compiling is not a warm cache
    assert warm_starts({"fm": runs["fm"], "teacher": _timed_run("fm", 0.5, jvp="fused")}) == []
    cold = cold_equivalent(runs)
    assert cold["tvm_w15"] is runs["tvm_w15"] and cold["fm"] is runs["fm"]
    # 105 s of training less the 50 s head start: the evaluations up to 55 s (steps 0 to 1000)
    assert cold["tvm"]["evals"]["step"] == [0, 500, 1000] and cold["tvm"]["final"] == {}
    assert cold["tvm"]["evals"]["fd_1"][-1] == 30.0 and cold["tvm"]["train_s"] == 55.0
    assert cut_at(runs["tvm"], 1e9)["evals"] == runs["tvm"]["evals"]


def test_empty_caches_points_the_compile_caches_at_new_folders_and_restores_them(monkeypatch):
    import os

    from tvmlib.experiments.isolate import CACHE_VARS, empty_caches

    monkeypatch.setenv("TRITON_CACHE_DIR", "/somewhere/else")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    with empty_caches("fm") as env:
        assert set(env) == set(CACHE_VARS) and all(os.environ[k] == v for k, v in env.items())
        assert len({os.path.dirname(v) for v in env.values()}) == 1
        folder = os.path.dirname(env["TRITON_CACHE_DIR"])
        assert os.listdir(folder) == []  # nothing compiled there yet
    assert not os.path.exists(folder)
    assert os.environ["TRITON_CACHE_DIR"] == "/somewhere/else"
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_cold_compile_runs_each_run_in_a_fresh_process_with_the_same_results(tmp_path):
    """``cold_compile: true`` trains each run in a spawned process (empty compile caches): the
    records are those of the same experiment run in this process, to the bit on a CPU."""
    from tvmlib.experiments.runner import run_experiment
    from tvmlib.training.config import experiment_from_dict

    def spec(cold, work):
        return {"name": "cold", "work_dir": str(work), "cold_compile": cold, "defaults": {
            "device": "cpu", "data": {"dataset": "fashion-mnist"},
            "model": {"preset": "DiT", "patch_size": 8, "hidden_size": 32, "depth": 1,
                      "num_heads": 2, "guidance": False},
            "train": {"steps": 2, "global_batch": 8, "lr": 1e-3, "log_every": 1,
                      "ckpt_every": 0},
            "eval": {"num_samples": 16, "batch_size": 16, "steps": [1], "every": 2,
                     "attn_backend": "math"}},
            "runs": [{"name": "fm", "loss": {"name": "fm"}},
                     {"name": "tvm", "init": "fm", "loss": {"name": "tvm"}}]}

    here, cold = (run_experiment(*experiment_from_dict(spec(c, tmp_path / str(c))), out=False,
                                 log=lambda m: None)["results"]["runs"] for c in (False, True))
    for name in ("fm", "tvm"):
        assert cold[name]["curves"] == here[name]["curves"]
        assert cold[name]["evals"]["fd_1"] == here[name]["evals"]["fd_1"]
    assert cold["tvm"]["upstream_s"] == cold["fm"]["total_s"]  # the chain's seconds still add up


def test_experiment_grids_land_beside_the_results_file(tmp_path):
    """``grids: true`` copies each run's sample grids next to the results file it writes (so a
    smoke run written to /tmp leaves figures/ alone), and none when no file is written."""
    from tvmlib.experiments.runner import run_experiment
    from tvmlib.training.config import experiment_from_dict
    from tvmlib.utils.paths import figures_dir

    spec = {"name": "gridded", "work_dir": str(tmp_path / "runs"), "grids": True, "defaults": {
        "device": "cpu", "data": {"dataset": "fashion-mnist"},
        "model": {"preset": "DiT", "patch_size": 8, "hidden_size": 32, "depth": 1,
                  "num_heads": 2, "guidance": False},
        "train": {"steps": 1, "global_batch": 8, "log_every": 1, "ckpt_every": 0},
        "eval": {"num_samples": 16, "batch_size": 16, "steps": [1], "every": 0,
                 "attn_backend": "math"}},
        "runs": [{"name": "tvm", "loss": {"name": "tvm"}}]}
    before = set(figures_dir().glob("gridded_*"))
    run_experiment(*experiment_from_dict(spec), out=tmp_path / "res" / "r.json",
                   log=lambda m: None)
    made = sorted(p.name for p in (tmp_path / "res").glob("gridded_tvm_samples_*step.png"))
    assert made and made == sorted(f"gridded_tvm_{p.name}"
                                   for p in (tmp_path / "runs" / "tvm").glob("samples_*step.png"))
    assert set(figures_dir().glob("gridded_*")) == before
