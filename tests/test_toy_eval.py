"""The 2D toys' W2 evaluation (tvmlib.evaluation.toy), FLOP budgets (tvmlib.training.flops) and
the equal-compute experiment at smoke size through the runner."""

import json
from pathlib import Path

import pytest
import torch

from tvmlib.core.losses import FMLoss, TVMLoss
from tvmlib.evaluation.metrics import w2
from tvmlib.evaluation.toy import eval_inputs, floor, reference
from tvmlib.experiments.results import cmt_seed_summary, cmt_seed_table, mean_sd
from tvmlib.experiments.toy_results import toy_best, toy_curve, toy_groups, toy_table, toy_targets
from tvmlib.nn import MLP2D
from tvmlib.training.flops import step_flops, steps_for_budget
from tvmlib.utils.prose import mean_std

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def test_reference_is_class_matched_and_floor_is_computed_like_a_model():
    noise, y = eval_inputs("8gaussians", 300, seed=1)
    assert noise.shape == (300, 2) and y.shape == (300,)
    data = reference("8gaussians", 300, 1)
    centres = torch.stack([torch.cos(y * torch.pi / 4), torch.sin(y * torch.pi / 4)], 1) * 2
    assert float((data - centres).norm(dim=1).max()) < 0.6  # row i is of class y[i]
    out = floor("8gaussians", 300, 1, pairs=3)
    # the floor is the W2 of two further reference sets, as a model's samples would be scored
    assert out["runs"][0] == pytest.approx(w2(reference("8gaussians", 300, 1, index=1),
                                              reference("8gaussians", 300, 1, index=2)))
    assert out["w2"] == pytest.approx(sum(out["runs"]) / 3)
    assert reference("checkerboard", 300, 1).shape == (300, 2)


def test_guided_reference_is_the_exact_guided_ode():
    """Guidance w = 2 narrows each class across the circle and pushes it outwards, away from the
    other classes; w = 1 gives back class-matched data (std 0.1 around the centre)."""
    _, y = eval_inputs("8gaussians", 400, seed=0)
    u = torch.stack([torch.cos(y * torch.pi / 4), torch.sin(y * torch.pi / 4)], 1)  # (n, 2)
    tangent = torch.stack([-u[:, 1], u[:, 0]], 1)
    stats = {}
    for w in (1.0, 2.0):
        d = reference("8gaussians", 400, 0, w) - 2 * u
        stats[w] = (float((d * u).sum(1).mean()), float((d * tangent).sum(1).std()))
    assert abs(stats[1.0][0]) < 0.02 and abs(stats[1.0][1] - 0.1) < 0.015
    assert stats[2.0][0] > 0.06 and stats[2.0][1] < 0.7 * stats[1.0][1]
    with pytest.raises(ValueError, match="labelled mixture"):
        reference("checkerboard", 100, 0, 2.0)


def test_step_flops_counts_forward_and_backward_matmuls():
    torch.manual_seed(0)
    net, B = MLP2D(hidden=64, depth=2, time_scale=1.0), 32
    x = torch.randn(B, 2)
    widths = [(2 + 2 * 32, 64), (64, 64), (64, 2)]  # x and the two embeddings -> hidden -> 2
    fwd = sum(2 * B * i * o for i, o in widths)
    input_grads = sum(2 * B * i * o for i, o in widths[1:])  # no gradient w.r.t. the input
    state = torch.get_rng_state()
    assert step_flops(net, FMLoss(), x) == 2 * fwd + input_grads
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in net.parameters())
    assert step_flops(net, TVMLoss(net), x) > 3 * step_flops(net, FMLoss(), x)
    assert steps_for_budget(10.5, 2) == 5
    with pytest.raises(ValueError, match="does not cover one step"):
        steps_for_budget(1.0, 2)


def test_equal_compute_experiment_at_smoke_size(tmp_path, monkeypatch):
    from tvmlib.apps.experiment import main

    monkeypatch.setenv("TVMLIB_QUIET", "1")
    config = ROOT / "configs" / "experiments" / "toy2d_equal_compute_smoke.yaml"
    out = tmp_path / "toys.json"
    main([str(config), "--out", str(out), "--work-dir", str(tmp_path / "runs")])
    runs = json.loads(out.read_text())["results"]["runs"]
    flops = {n: r["flops_per_step"] * r["steps_done"] for n, r in runs.items()}
    budget = runs["checkerboard-fm-s0"]["config"]["train"]["flop_budget"]
    for name, f in flops.items():  # every run spends the budget, to within one of its steps
        assert budget - runs[name]["flops_per_step"] < f <= budget, name
    assert runs["checkerboard-fm-s0"]["steps_done"] > runs["checkerboard-tvm-s0"]["steps_done"]
    g8 = runs["8gaussians-fm-s0"]
    assert g8["floor"]["reference"] == "guided ODE" and g8["floor"]["guidance"] == 1.5
    assert set(toy_curve(g8)) == {2, 4}  # CFG: 2 NFE per Euler step
    fm = runs["checkerboard-fm-s0"]
    assert {r["solver"] for r in fm["sweep"]} == {"heun"} and toy_best(fm) <= toy_curve(fm)[1]
    groups = toy_groups(runs)
    assert set(groups) == {"checkerboard", "8gaussians"}
    groups["8gaussians"]["meanflow"] = groups["8gaussians"]["tvm"]  # the smoke has none
    assert len(toy_targets(groups)) == 4
    cb = groups["checkerboard"]
    head, blank, columns, rule, *rows = toy_table("checkerboard", cb).split("\n")
    assert head.startswith(f"**checkerboard** (W2 to the data, mean +- std over {len(cb['tvm'])}")
    pairs = [w for r in cb["tvm"] for w in r["floor"]["runs"]]  # single pairs, not seed means
    assert f"floor {mean_std(pairs)}: W2 between two independent sets" in head
    assert blank == "" and columns.startswith("| method | NFE 1 |") and rule.startswith("|---|")
    cells = {r.strip("| ").split(" | ")[0]: r.strip("| ").split(" | ")[1:] for r in rows}
    assert list(cells) == ["FM, Euler", "FM, Heun", "MeanFlow", "TVM"]
    assert cells["TVM"][0] == mean_std([toy_curve(r)[1] for r in cb["tvm"]])  # NFE 1
    assert cells["FM, Heun"][0] == "–"  # a Heun step is 2 NFE: no 1-NFE Heun sample


def test_toy_runs_are_scored_during_training_like_at_the_end(tmp_path, monkeypatch):
    """eval.every with the W2 metric: a w2_<k> column from step 0 on, and the last evaluation
    is the same number as the final score (same weights, samples and reference)."""
    from tvmlib.apps.experiment import main

    monkeypatch.setenv("TVMLIB_QUIET", "1")
    config = ROOT / "configs" / "experiments" / "cmt_2d_seeds.yaml"
    out = tmp_path / "cmt2d.json"
    names = ["teacher-s0", "mid-s0", "scratch-s0", "teacher_init-s0", "cmt-s0"]
    main([str(config), "--only", *names, "--set", "train.steps=8", "--set", "eval.every=4",
          "--set", "eval.num_samples=100", "--out", str(out), "--work-dir", str(tmp_path / "w")])
    runs = json.loads(out.read_text())["results"]["runs"]
    assert list(runs) == names and set(runs["teacher-s0"]["evals"]) == {"step", "train_s",
                                                                         "w2_16"}
    for name in names[2:]:
        ev, final = runs[name]["evals"], runs[name]["final"]["ema"]
        assert ev["step"] == [0, 4, 8] and set(ev) == {"step", "train_s", "w2_1", "w2_2"}
        assert ev["w2_1"][-1] == pytest.approx(final["1"]) and ev["w2_2"][-1] == \
            pytest.approx(final["2"])
    # the warm starts begin from their stage's weights, scratch from its own initialisation
    assert runs["teacher_init-s0"]["evals"]["w2_1"][0] != runs["scratch-s0"]["evals"]["w2_1"][0]
    sm = cmt_seed_summary(runs)
    last = {n: runs[f"{n}-s0"]["evals"]["w2_1"][-1] for n in ("scratch", "teacher_init", "cmt")}
    assert sm["seeds"] == 1 and sm["cmt_minus_teacher_init"] == pytest.approx(
        (last["cmt"] - last["teacher_init"], 0.0))
    assert sm["scratch"]["w2_1"] == pytest.approx((last["scratch"], 0.0))
    assert sm["scratch"]["reach"][0] in (0, 4, 8)  # scratch reaches its own final at the latest
    # the floor: single pairs, as a model is scored
    assert sm["floor"] == pytest.approx(mean_sd(runs["scratch-s0"]["floor"]["runs"]))
    table = cmt_seed_table(runs).split("\n")
    assert table[0].startswith("**2D checkerboard**") and len(table) == 2 + 2 + 3



def test_a_toy_target_inside_the_seed_spread_is_called_by_the_means():
    from tvmlib.experiments.toy_results import verdict

    def rec(method: str, w2: float) -> dict:  # a run record as toy_curve / toy_best read it
        return {"config": {"loss": {"name": method}, "eval": {"cfg_scale": None,
                                                              "weights": ["ema"]}},
                "final": {"ema": {"1": w2}}, "sweep": []}

    groups = {"toy": {"tvm": [rec("tvm", v) for v in (0.18, 0.15, 0.22)],  # 0.183 +- 0.035
                      "fm": [rec("fm", v) for v in (0.15, 0.15, 0.16)],  # bound 1.3 x 0.153
                      "meanflow": [rec("meanflow", 0.40)] * 3}}
    vs_fm, vs_mf = toy_targets(groups)
    assert vs_fm["hit"] and not vs_fm["resolved"]  # 0.016 below the bound: inside 2 x 0.035
    assert vs_mf["hit"] and vs_mf["resolved"]  # 0.217 below MeanFlow: beyond it
    assert verdict(vs_fm) == "**hit** (by the means; within two of TVM's seed stds)"
    assert verdict(vs_mf) == "**hit**"
