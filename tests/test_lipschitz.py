"""tvmlib.evaluation.lipschitz (power iteration, perturbation ratios, DiT measurements, spike
detection) against exact Jacobians and finite differences, and the ablation experiment end to
end at smoke size through the runner."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tvmlib.core.flowmap import displacement
from tvmlib.evaluation.lipschitz import (
    block_inputs,
    block_lipschitz,
    block_part,
    dfds_rms,
    first_spike,
    jacobian_spectral_norm,
    modulation_rms,
    perturbation_ratio,
    velocity_lipschitz,
)
from tvmlib.nn.dit import DiT, LipschitzConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2,
            num_classes=3, guidance=True, freq_dim=32)


def tiny_dit(lip: LipschitzConfig, randomize: bool = True, seed: int = 0) -> DiT:
    """A float64 tiny DiT; ``randomize`` gives the zero-initialised layers (adaLN outputs, final
    linear) random weights so that gates and modulation are not 0."""
    torch.manual_seed(seed)
    net = DiT(**TINY, lipschitz=lip).double()
    if randomize:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for m in net.zero_init_linears():
                for p in (m.weight, m.bias):
                    p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def dit_inputs(B: int = 3):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64)
    t = (0.3 + 0.7 * torch.rand(B, generator=g, dtype=torch.float64))
    s = t * torch.rand(B, generator=g, dtype=torch.float64)
    y = torch.arange(B) % 4  # 3 = null class
    w = torch.full((B,), 2.0, dtype=torch.float64)
    return x, t, s, y, w


def jacobian_matrix(fn, x1: torch.Tensor) -> torch.Tensor:
    """The full Jacobian (out, in) of fn at one sample x1 (1, ...), by reverse mode."""
    return torch.func.jacrev(fn)(x1).detach().reshape(fn(x1).numel(), x1.numel())


def exact_norm(fn, x1: torch.Tensor) -> float:
    """||d fn / d x||_2 of one sample x1 (1, ...) from the full Jacobian matrix."""
    return float(torch.linalg.matrix_norm(jacobian_matrix(fn, x1), ord=2))


def matrix_power_iteration(J: torch.Tensor, v0: torch.Tensor, iters: int) -> float:
    """The same power iteration as jacobian_spectral_norm, on an explicit matrix J."""
    v = v0.flatten() / v0.norm()
    for _ in range(iters):
        v = J.T @ (J @ v)
        v = v / v.norm()
    return float((J @ v).norm())


def first_start_vector(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Sample 0's start vector of jacobian_spectral_norm(..., generator seeded with seed)."""
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)[0]


# ---------------------------------------------------------------------------- linear maps
def known_matrices(B=3, m=6, n=5, seed=0):
    """Matrices U diag(sv) V^T with known singular values, float64: (B, m, n) and sv (B, n)."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(B, m, m, generator=g, dtype=torch.float64))[0][..., :n]
    V = torch.linalg.qr(torch.randn(B, n, n, generator=g, dtype=torch.float64))[0]
    sv = torch.tensor([[4.0, 2.0, 1.0, 0.5, 0.1], [1.5, 1.0, 0.9, 0.2, 0.1],
                       [9.0, 3.0, 3.0, 1.0, 0.0]], dtype=torch.float64)[:B, :n]
    return U @ torch.diag_embed(sv) @ V.transpose(1, 2), sv


def test_power_iteration_is_exact_on_linear_maps():
    A, sv = known_matrices()
    x = torch.randn(3, 5, dtype=torch.float64)
    fn = lambda z: torch.einsum("bij,bj->bi", A, z)  # noqa: E731
    sigma = jacobian_spectral_norm(fn, x, iters=60, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sigma, sv[:, 0], rtol=1e-10, atol=0)
    # whole-tensor mode: fn(X) = M X has Jacobian I (x) M, spectral norm ||M||_2
    M = A[0]
    X = torch.randn(5, 7, dtype=torch.float64)
    whole = jacobian_spectral_norm(lambda Z: M @ Z, X, iters=60, per_sample=False)
    assert whole.dim() == 0 and abs(float(whole) - 4.0) < 1e-10


def test_power_iterates_are_lower_bounds_that_increase():
    A, sv = known_matrices()
    x = torch.randn(3, 5, dtype=torch.float64)
    fn = lambda z: torch.einsum("bij,bj->bi", A, z)  # noqa: E731
    prev = torch.zeros(3, dtype=torch.float64)
    for k in (1, 2, 4, 8):
        s = jacobian_spectral_norm(fn, x, iters=k, generator=torch.Generator().manual_seed(3))
        assert bool((s <= sv[:, 0] * (1 + 1e-12)).all())
        assert bool((s >= prev * (1 - 1e-12)).all())
        prev = s


def test_perturbation_ratio_is_a_lower_bound_attained_on_the_top_vector():
    A, sv = known_matrices()
    x = torch.randn(3, 5, dtype=torch.float64)
    fn = lambda z: torch.einsum("bij,bj->bi", A, z)  # noqa: E731
    ratio = perturbation_ratio(fn, x, radius=0.1, n_dirs=16,
                               generator=torch.Generator().manual_seed(2))
    assert bool((ratio <= sv[:, 0] * (1 + 1e-12)).all())
    assert bool((ratio >= sv[:, -1]).all())
    assert bool((ratio < 0.999 * sv[:, 0]).any())  # random directions miss the top one
    _, v = jacobian_spectral_norm(fn, x, iters=60, return_vector=True)
    along_top = perturbation_ratio(fn, x, radius=0.1, directions=[v])
    torch.testing.assert_close(along_top, sv[:, 0], rtol=1e-10, atol=0)


def test_power_iteration_matches_exact_jacobian_of_a_nonlinear_map():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 4)).double()
    x = torch.randn(2, 6, dtype=torch.float64)
    sigma = jacobian_spectral_norm(mlp, x, iters=200)
    for i in range(2):
        assert abs(float(sigma[i]) - exact_norm(mlp, x[i:i + 1])) < 1e-8
    ratio = perturbation_ratio(mlp, x, radius=1e-6, n_dirs=8)
    assert bool((ratio <= sigma * (1 + 1e-4)).all())


# ---------------------------------------------------------------------------- DiT measurements
def test_blocks_are_identity_at_zero_init():
    net = tiny_dit(LipschitzConfig.off(), randomize=False)
    x, t, s, y, w = dit_inputs()
    lip = block_lipschitz(net, x, t, s, y, w, part="block", iters=3)
    assert lip.shape == (2, 3)
    torch.testing.assert_close(lip, torch.ones_like(lip), rtol=1e-12, atol=0)


@pytest.mark.parametrize("lip_cfg", [LipschitzConfig.off(), LipschitzConfig()], ids=["off", "on"])
@pytest.mark.parametrize("part", ["block", "attn", "mlp"])
def test_block_lipschitz_matches_explicit_jacobian(lip_cfg, part):
    """Same start vector and iteration count on the explicit Jacobian: the same number, and a
    lower bound of the exact spectral norm."""
    net = tiny_dit(lip_cfg)
    x, t, s, y, w = dit_inputs(2)
    K = 6
    est = block_lipschitz(net, x, t, s, y, w, part=part, iters=K,
                          generator=torch.Generator().manual_seed(7))  # (depth, B)
    hs, c = block_inputs(net, x, t, s, y, w)
    # block_lipschitz draws one start vector per block from the shared generator, in order
    g = torch.Generator().manual_seed(7)
    for i, (block, h) in enumerate(zip(net.blocks, hs)):
        v0 = torch.randn(h.shape, generator=g, dtype=h.dtype)[0]
        J = jacobian_matrix(block_part(block, c[:1], part), h[:1])
        assert abs(float(est[i, 0]) - matrix_power_iteration(J, v0, K)) < 1e-9
        assert float(est[i, 0]) <= float(torch.linalg.matrix_norm(J, ord=2)) * (1 + 1e-9)


def test_velocity_lipschitz_matches_explicit_jacobian():
    net = tiny_dit(LipschitzConfig())
    x, t, s, y, w = dit_inputs(2)
    K = 6
    est = velocity_lipschitz(net, x, t, y, w, scale_param=True, iters=K,
                             generator=torch.Generator().manual_seed(3))
    J = jacobian_matrix(lambda z: 2.0 * net(z, t[:1], t[:1], y[:1], w[:1]), x[:1])
    assert abs(float(est[0]) - matrix_power_iteration(J, first_start_vector(x, 3), K)) < 1e-9


def test_dfds_rms_matches_finite_differences():
    net = tiny_dit(LipschitzConfig.off())
    x, t, s, y, w = dit_inputs()
    h = 1e-5
    f = lambda s_: displacement(net, x, t, s_, y, w, scale_param=True)  # noqa: E731
    with torch.no_grad():
        fd = (f(s + h) - f(s - h)) / (2 * h)
    expected = fd.flatten(1).square().mean(1).sqrt()
    torch.testing.assert_close(dfds_rms(net, x, t, s, y, w, scale_param=True), expected,
                               rtol=1e-7, atol=0)


def test_modulation_rms_raw_and_normalized():
    x, t, s, y, w = dit_inputs()
    off = tiny_dit(LipschitzConfig(mod_norm=False))
    on = tiny_dit(LipschitzConfig(mod_norm=True))  # same seed: same weights, only mod_norm differs
    c = off.conditioning(x, t, s, y, w)
    lin = off.final_layer.adaln[1]
    raw_final = F.linear(F.silu(c), lin.weight, lin.bias).square().mean(1).sqrt()
    lin0 = off.blocks[0].adaln[1]
    raw_block0 = F.linear(F.silu(c), lin0.weight, lin0.bias).square().mean(1).sqrt()
    for net in (off, on):
        raw = modulation_rms(net, x, t, s, y, w, normalized=False)
        assert list(raw) == ["block0", "block1", "final"]
        torch.testing.assert_close(raw["final"], raw_final)
        torch.testing.assert_close(raw["block0"], raw_block0)
    used_off = modulation_rms(off, x, t, s, y, w, normalized=True)
    used_on = modulation_rms(on, x, t, s, y, w, normalized=True)
    torch.testing.assert_close(used_off["final"], raw_final)  # no mod_norm: raw is used
    for v in used_on.values():  # every chunk RMS-normalized: RMS 1 up to eps
        torch.testing.assert_close(v, torch.ones_like(v), rtol=1e-4, atol=0)
    assert not torch.allclose(raw_final, torch.ones_like(raw_final), rtol=0.05)


# ---------------------------------------------------------------------------- spikes
def test_first_spike():
    flat = [1.0, 1.1, 0.9] * 20
    assert first_spike(flat, k=4, window=10, warmup=5) is None
    assert first_spike(flat + [4.5], k=4, window=10, warmup=5) == 60
    assert first_spike(flat + [3.9], k=4, window=10, warmup=5) is None
    assert first_spike([1.0] * 10 + [math.nan], k=4, window=5, warmup=3) == 10
    assert first_spike([1.0, 100.0] + [1.0] * 10, k=4, window=5, warmup=3) is None  # warmup
    decaying = [100.0 * 0.97 ** i for i in range(100)]
    assert first_spike(decaying, k=2, window=20, warmup=5) is None
    with pytest.raises(ValueError, match="k > 1"):
        first_spike(flat, k=1.0)


# ---------------------------------------------------------------------------- the ablation
def test_ablation_configs_are_lists_of_runs_with_the_lipschitz_variants():
    from tvmlib.experiments.results import lipschitz_flags
    from tvmlib.training.config import load_experiment

    _, runs = load_experiment(ROOT / "configs" / "experiments" / "lipschitz_ablation.yaml")
    by = {r.name: r for r in runs}
    assert list(by) == ["base-off", "base-on", "stress-off", "stress-on", "alone-qk_norm",
                        "alone-mod_norm", "alone-rmsnorm", "alone-spectral_init"]
    for name, r in by.items():
        variant = name.split("-", 1)[1]
        flags = {k: getattr(r.model.lipschitz, k) for k in lipschitz_flags("on")}
        assert flags == lipschitz_flags(variant), name
        assert r.loss.cfg_scale == 2.0 and r.model.guidance and r.train.grad_clip is None
    assert by["base-on"].train.lr == 3e-4 and by["stress-on"].train.betas == [0.9, 0.999]
    assert by["alone-rmsnorm"].train.steps == 700 and by["stress-off"].train.steps == 2000


@pytest.mark.slow
def test_ablation_end_to_end_at_smoke_size(tmp_path):
    from tvmlib.apps.experiment import main
    from tvmlib.experiments.results import by_group
    from tvmlib.training.config import load_experiment

    config = ROOT / "configs" / "experiments" / "lipschitz_ablation_smoke.yaml"
    out = tmp_path / "ablation.json"
    main([str(config), "--out", str(out), "--work-dir", str(tmp_path / "runs")])
    doc = json.loads(out.read_text())
    prov, res = doc["provenance"], doc["results"]
    assert {"command", "commit", "device", "torch", "seed", "date"} <= set(prov)
    _, cfgs = load_experiment(config)
    cfg = cfgs[0]
    assert res["reference_fd"]["n"] == cfg.eval.num_samples
    assert list(by_group(res["runs"])) == ["base", "stress"]
    assert list(by_group(res["runs"])["base"]) == ["off", "on"]
    for rec in res["runs"].values():
        steps = rec["config"]["train"]["steps"]
        assert rec["steps_done"] == steps and rec["diverged_step"] is None
        assert rec["curves"]["step"] == list(range(1, steps + 1))
        for key in ("loss", "terminal", "fm", "grad_norm"):
            assert len(rec["curves"][key]) == steps
            assert all(math.isfinite(v) for v in rec["curves"][key])
        assert rec["probes"]["step"] == [0, 3, 6]
        assert all(len(b) == 2 for b in rec["probes"]["lip_blocks"])  # depth 2
        assert set(rec["spike_step"]) == {"loss", "grad_norm", "first"}
        for weights in ("ema", "net"):
            fd = rec["final"][weights]
            assert set(fd) == {"1", "2"} and all(v > 0 for v in fd.values())
        assert rec["wall_s"] >= rec["train_s"] > 0

    # --only runs a part of the experiment; --merge joins the parts
    part = tmp_path / "part.json"
    main([str(config), "--out", str(part), "--only", "stress-off", "--work-dir",
          str(tmp_path / "runs")])
    assert list(json.loads(part.read_text())["results"]["runs"]) == ["stress-off"]
    merged = main(["--merge", str(out), str(part), "--out", str(tmp_path / "m.json")])
    assert list(merged["results"]["runs"]) == ["base-off", "base-on", "stress-off"]
    assert len(merged["provenance"]["parts"]) == 2
    with pytest.raises(SystemExit):  # an unknown run name is refused before any work
        main([str(config), "--only", "nope", "--out", str(part)])


def test_run_summary_reads_a_record():
    from tvmlib.experiments.results import run_summary

    rec = {"steps": 40, "steps_done": 40, "diverged_step": None,
           "spike_step": {"loss": None, "grad_norm": 12, "first": 12},
           "curves": {"loss": [float(40 - i) for i in range(40)],
                      "grad_norm": [1.0] * 11 + [9.0] + [1.0] * 28},
           "probes": {"step": [0, 20, 40], "lip_velocity": [0.0, 2.0, 3.5],
                      "lip_blocks": [[1.0, 1.0], [1.2, 1.1], [1.4, 2.5]]}}
    s = run_summary(rec)
    assert s["final_loss"] == pytest.approx(2.5)  # mean of the last 4 losses 4, 3, 2, 1
    assert s["max_grad"] == 9.0 and s["spike"] == 12 and s["diverged"] is None
    assert s["lip_velocity"] == 3.5 and s["lip_blocks_max"] == 2.5
    rec["diverged_step"] = 30
    assert run_summary(rec)["lip_velocity"] is None and run_summary(rec)["diverged"] == 30
