"""The student-copy generator (tvmlib.apps.exercises) and the check_* helpers
(tvmlib.teach.exercises)."""

from __future__ import annotations

import math

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from tvmlib.apps import exercises as ex
from tvmlib.teach import exercises as checks

torch.set_num_threads(1)

SOLVED_1 = """import math
### BEGIN SOLUTION: the answer
answer = 6 * 7
### END SOLUTION
assert answer == 42"""

SOLVED_2 = """def f(x):
    if x > 0:
        ### BEGIN SOLUTION
        y = math.sqrt(x)
        return y
        ### END SOLUTION
    return 0.0"""


def master_notebook() -> nbformat.NotebookNode:
    params = new_code_cell("steps = 10", metadata={"tags": ["parameters"]}, execution_count=1)
    c1 = new_code_cell(SOLVED_1, execution_count=2, metadata={"papermill": {"duration": 0.1}},
                       outputs=[new_output("stream", name="stdout", text="hi\n")])
    c2 = new_code_cell(SOLVED_2, execution_count=3, metadata={"tags": ["keep-me"]},
                       outputs=[new_output("execute_result", data={"text/plain": "1"},
                                           execution_count=3)])
    nb = new_notebook(cells=[new_markdown_cell("# Title"), params, c1, c2,
                             new_code_cell("print(f(4.0))", execution_count=4)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"},
                                "papermill": {"duration": 3.0}})
    for i, cell in enumerate(nb.cells):  # fixed ids: the generator must not invent any
        cell["id"] = f"cell-{i}"
    return nb


def test_student_copy_replaces_exactly_the_solutions():
    master = master_notebook()
    before = nbformat.writes(master)
    student = ex.make_student_copy(master, "toy.ipynb")
    assert nbformat.writes(master) == before  # input untouched
    src = [c.source for c in student.cells]
    assert src[0] == "# Title" and src[1] == "steps = 10" and src[4] == "print(f(4.0))"
    assert src[2] == ('import math\nraise NotImplementedError("Exercise 1: the answer")\n'
                      'assert answer == 42')
    assert src[3] == ('def f(x):\n    if x > 0:\n'
                      '        raise NotImplementedError("Exercise 2: fill in this cell")\n'
                      '    return 0.0')
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        assert "papermill" not in cell.metadata
    assert student.cells[1].metadata["tags"] == ["parameters"]
    assert student.cells[3].metadata["tags"] == ["keep-me"]
    assert "papermill" not in student.metadata
    assert student.metadata["kernelspec"]["name"] == "python3"
    assert [c["id"] for c in student.cells] == [f"cell-{i}" for i in range(5)]
    nbformat.validate(student)


def test_student_cells_raise_and_master_runs():
    master = master_notebook()
    student = ex.make_student_copy(master)
    ns: dict = {}
    exec(master.cells[2].source, ns)  # noqa: S102
    exec(master.cells[3].source, ns)  # noqa: S102
    assert ns["answer"] == 42 and ns["f"](4.0) == 2.0
    with pytest.raises(NotImplementedError, match=r"^Exercise 1: the answer$"):
        exec(student.cells[2].source, {})  # noqa: S102
    ns = {}
    exec(student.cells[3].source, ns)  # noqa: S102  (defining f is fine, calling it is not)
    with pytest.raises(NotImplementedError, match=r"^Exercise 2: fill in this cell$"):
        ns["f"](4.0)
    assert ns["f"](-1.0) == 0.0


def test_regeneration_is_byte_identical(tmp_path):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    master = nb_dir / "01_toy.ipynb"
    nbformat.write(master_notebook(), master)
    plain = nb_dir / "02_plain.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), plain)
    assert ex.main([str(master), str(plain)]) == 0
    out = nb_dir / "exercises" / "01_toy.ipynb"
    first = out.read_bytes()
    assert first.endswith(b"\n") and not (nb_dir / "exercises" / "02_plain.ipynb").exists()
    assert first.decode() == ex.student_copy_text(nbformat.read(master, as_version=4),
                                                  "01_toy.ipynb")
    assert ex.main([str(master)]) == 0 and out.read_bytes() == first
    assert ex.main(["--check", str(master)]) == 0
    out.write_text(first.decode().replace("Exercise 1", "Exercise 9"))
    assert ex.main(["--check", str(master)]) == 1
    assert ex.main([str(master)]) == 0 and out.read_bytes() == first
    out.unlink()
    assert ex.main(["--check", str(master)]) == 1 and not out.exists()


@pytest.mark.parametrize("source, what", [
    ("### BEGIN SOLUTION\nx = 1", "no matching '### END SOLUTION'"),
    ("x = 1\n### END SOLUTION", "no matching '### BEGIN SOLUTION'"),
    ("### BEGIN SOLUTION\n  ### BEGIN SOLUTION\n### END SOLUTION", "cannot nest"),
])
def test_unbalanced_markers_name_notebook_and_cell(source, what):
    nb = new_notebook(cells=[new_markdown_cell("m"), new_code_cell("ok = 1"),
                             new_code_cell(source)])
    with pytest.raises(ValueError, match=r"bad\.ipynb: cell 2: .*") as err:
        ex.make_student_copy(nb, "bad.ipynb")
    assert what in str(err.value)


def test_missing_cell_ids_are_deterministic():
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "metadata": {}, "execution_count": 3, "outputs": [],
         "source": ["### BEGIN SOLUTION\n", "x = 1\n", "### END SOLUTION"]},
        {"cell_type": "markdown", "id": "cell-0", "metadata": {}, "source": "text"}]}
    text = ex.student_copy_text(nb, "ids.ipynb")
    assert text == ex.student_copy_text(nb, "ids.ipynb")
    ids = [c["id"] for c in nbformat.reads(text, as_version=4).cells]
    assert ids[1] == "cell-0" and ids[0] not in ("cell-0", "") and len(set(ids)) == 2


def test_has_solutions_ignores_markdown():
    assert ex.has_solutions(master_notebook())
    assert not ex.has_solutions(new_notebook(cells=[new_markdown_cell("### BEGIN SOLUTION")]))


# ---- check helpers: a right answer passes, typical mistakes get the documented message ------

def fm_right(net, x0, eps, t):
    tc = t[:, None]
    return (net((1 - tc) * x0 + tc * eps, t, t) - (eps - x0)).square().mean()


def fm_sign(net, x0, eps, t):
    tc = t[:, None]
    return (net((1 - tc) * x0 + tc * eps, t, t) - (x0 - eps)).square().mean()


def fm_data_at_one(net, x0, eps, t):
    tc = t[:, None]
    return (net(tc * x0 + (1 - tc) * eps, t, t) - (eps - x0)).square().mean()


def fm_detached(net, x0, eps, t):
    with torch.no_grad():
        return fm_right(net, x0, eps, t)


def fm_per_sample(net, x0, eps, t):
    tc = t[:, None]
    return (net((1 - tc) * x0 + tc * eps, t, t) - (eps - x0)).square().mean(1)


def test_check_fm_loss():
    assert checks.check_fm_loss(fm_right) is None
    with pytest.raises(AssertionError, match="wrong sign.*eps - x0"):
        checks.check_fm_loss(fm_sign)
    with pytest.raises(AssertionError, match="t is mixed up.*data at t = 1"):
        checks.check_fm_loss(fm_data_at_one)
    with pytest.raises(AssertionError, match="no gradient reaches"):
        checks.check_fm_loss(fm_detached)
    with pytest.raises(AssertionError, match=r"scalar.*shape \(64,\)"):
        checks.check_fm_loss(fm_per_sample)
    with pytest.raises(AssertionError, match="wrong value: expected"):
        checks.check_fm_loss(lambda *a: 1.5 * fm_right(*a))


def euler_right(velocity, x, times):
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * velocity(x, t)
    return x


def euler_backwards(velocity, x, times):
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t - t_next) * velocity(x, t)
    return x


def euler_extra_step(velocity, x, times):
    for t, t_next in zip(times, torch.cat([times[1:], times[-1:]])):
        x = x + (t_next - t) * velocity(x, t)
    return x


def test_check_euler():
    assert checks.check_euler(euler_right) is None
    with pytest.raises(AssertionError, match="wrong direction of time"):
        checks.check_euler(euler_backwards)
    with pytest.raises(AssertionError, match="one step too many"):
        checks.check_euler(euler_extra_step)
    with pytest.raises(AssertionError, match="not the whole trajectory"):
        checks.check_euler(lambda u, x, times: torch.stack([x] * len(times)))
    with pytest.raises(AssertionError, match=r"shape \(16, 1\), expected \(16, 2\)"):
        checks.check_euler(lambda u, x, times: euler_right(u, x, times)[:, :1])


def dfds_right(net, x, t, s):
    return torch.func.jvp(lambda s_: (s_ - t)[:, None] * net(x, t, s_), (s,),
                          (torch.ones_like(s),))[1]


def dfds_no_factor(net, x, t, s):
    return torch.func.jvp(lambda s_: net(x, t, s_), (s,), (torch.ones_like(s),))[1]


def dfds_tangent_on_x(net, x, t, s):
    return torch.func.jvp(lambda x_: (s - t)[:, None] * net(x_, t, s), (x,),
                          (torch.ones_like(x),))[1]


def test_check_terminal_velocity():
    assert checks.check_terminal_velocity(dfds_right) is None
    with pytest.raises(AssertionError, match=r"missing the \(s - t\) factor"):
        checks.check_terminal_velocity(dfds_no_factor)
    with pytest.raises(AssertionError, match="tangent is on x, not s"):
        checks.check_terminal_velocity(dfds_tangent_on_x)
    with pytest.raises(AssertionError, match="no gradient reaches.*detach"):
        checks.check_terminal_velocity(lambda *a: dfds_right(*a).detach())


def attention_jvp(q, k, v, tq, tk, tv, mu_term=True):
    """O and Ȯ written out (independently of tvmlib's reference)."""
    sc = 1.0 / math.sqrt(q.shape[-1])
    P = torch.softmax(sc * q @ k.transpose(-1, -2), dim=-1)
    o = P @ v
    sdot = sc * (tq @ k.transpose(-1, -2) + q @ tk.transpose(-1, -2))
    to = (P * sdot) @ v + P @ tv
    if mu_term:
        to = to - (P * sdot).sum(-1, keepdim=True) * o
    return o, to


def test_check_attention_jvp():
    assert checks.check_attention_jvp(attention_jvp) is None
    with pytest.raises(AssertionError, match="missing the μ correction"):
        checks.check_attention_jvp(lambda *a: attention_jvp(*a, mu_term=False))
    with pytest.raises(AssertionError, match="wrong O: the scores need the scale"):
        checks.check_attention_jvp(
            lambda q, k, v, *t: (torch.softmax(q @ k.transpose(-1, -2), -1) @ v,
                                 attention_jvp(q, k, v, *t)[1]))
    with pytest.raises(AssertionError, match="wrong tangent"):
        checks.check_attention_jvp(lambda *a: (attention_jvp(*a)[0], 2 * attention_jvp(*a)[1]))


def cmt_right(x_i, t_i, x_j, t_j):
    gap = (t_j - t_i).view(-1, *([1] * (x_i.dim() - 1)))
    return (x_j - x_i) / gap


def test_check_cmt_target():
    assert checks.check_cmt_target(cmt_right) is None
    with pytest.raises(AssertionError, match="sign error"):
        checks.check_cmt_target(lambda x_i, t_i, x_j, t_j: cmt_right(x_j, t_i, x_i, t_j))
    with pytest.raises(AssertionError, match="forgot to divide"):
        checks.check_cmt_target(lambda x_i, t_i, x_j, t_j: x_j - x_i)
    with pytest.raises(AssertionError, match=r"reshape the time gap to \(6, 1\)"):
        checks.check_cmt_target(lambda x_i, t_i, x_j, t_j: (x_j - x_i) / (t_j - t_i))


# ---- notebook 02's loss exercises (tvmlib.teach.exercises_losses) -------------------------------

def _jvp_s(net, xt, t, s):
    """(f, d/ds f) for f = (s - t) F(x_t, t, s), written out."""
    return torch.func.jvp(lambda s_: (s_ - t)[:, None] * net(xt, t, s_), (s,),
                          (torch.ones_like(s),))


def tvm_terms_right(net, target, x0, eps, t, s, s_fm, detach_end=True, mask=True,
                    at_start=False, fm_sign=1.0):
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    f, dfds = _jvp_s(net, xt, t, s)
    end = xt if at_start else xt + (f.detach() if detach_end else f)
    terminal = (dfds - target(end, s, s)).square().mean(1)
    if mask:
        terminal = terminal * ~torch.isclose(t, s)
    x_fm = (1 - s_fm[:, None]) * x0 + s_fm[:, None] * eps
    fm = (net(x_fm, s_fm, s_fm) - fm_sign * (eps - x0)).square().mean(1)
    return terminal, fm


def test_check_tvm_terms():
    assert checks.check_tvm_terms(tvm_terms_right) is None
    with pytest.raises(AssertionError, match="at the start point x_t"):
        checks.check_tvm_terms(lambda *a: tvm_terms_right(*a, at_start=True))
    with pytest.raises(AssertionError, match=r"not zeroed where t = s"):
        checks.check_tvm_terms(lambda *a: tvm_terms_right(*a, mask=False))
    with pytest.raises(AssertionError, match="detach the end point"):
        checks.check_tvm_terms(lambda *a: tvm_terms_right(*a, detach_end=False))
    with pytest.raises(AssertionError, match="FM target has the wrong sign"):
        checks.check_tvm_terms(lambda *a: tvm_terms_right(*a, fm_sign=-1.0))
    with pytest.raises(AssertionError, match="use the EMA target"):
        checks.check_tvm_terms(lambda net, target, *a: tvm_terms_right(
            net, lambda *b: net(*b).detach(), *a))
    with pytest.raises(AssertionError, match="no gradient reaches"):
        checks.check_tvm_terms(lambda *a: tuple(v.detach() for v in tvm_terms_right(*a)))
    with pytest.raises(AssertionError, match=r"shape \(32, 2\), expected \(32,\)"):
        checks.check_tvm_terms(lambda *a: (torch.zeros(32, 2), torch.zeros(32)))


def cfg_target_right(target, x_s, s, y, v, w, null=None, w_uncond=1.0, swap=False):
    null = torch.full_like(y, target.num_classes) if null is None else null
    with torch.no_grad():
        w_in = torch.full_like(w, w_uncond) if isinstance(w_uncond, float) else w_uncond
        u = w_in[:, None] * target(x_s, s, s, null, w_in)  # scaled parameterization
    a = (1 - w if swap else w)[:, None]
    return a * v + (1 - a) * u


def test_check_cfg_target():
    assert checks.check_cfg_target(cfg_target_right) is None
    with pytest.raises(AssertionError, match="weights are swapped"):
        checks.check_cfg_target(lambda *a: cfg_target_right(*a, swap=True))
    with pytest.raises(AssertionError, match="null class.*not the labels y"):
        checks.check_cfg_target(lambda tg, x, s, y, v, w: cfg_target_right(tg, x, s, y, v, w,
                                                                            null=y))
    with pytest.raises(AssertionError, match="evaluates it at w = 1"):
        checks.check_cfg_target(lambda tg, x, s, y, v, w: cfg_target_right(tg, x, s, y, v, w,
                                                                            w_uncond=w))
    with pytest.raises(AssertionError, match=r"num_classes \(here 4\), not 0"):
        checks.check_cfg_target(lambda tg, x, s, y, v, w: cfg_target_right(
            tg, x, s, y, v, w, null=torch.zeros_like(y)))

    def with_grad(target, x_s, s, y, v, w):
        null = torch.full_like(y, target.num_classes)
        return w[:, None] * v + (1 - w[:, None]) * target(x_s, s, s, null, torch.ones_like(w))

    with pytest.raises(AssertionError, match="under torch.no_grad"):
        checks.check_cfg_target(with_grad)


def meanflow_right(net, x, t, r, v, tangents=None, sign=-1.0, detach=True):
    tangents = tangents or (v, torch.ones_like(t), torch.zeros_like(r))
    u, dudt = torch.func.jvp(lambda a, b, c: net(a, b, c), (x, t, r), tangents)
    tgt = v + sign * (t - r)[:, None] * dudt
    return u, (tgt.detach() if detach else tgt)


def test_check_meanflow_target():
    assert checks.check_meanflow_target(meanflow_right) is None
    with pytest.raises(AssertionError, match="wrong sign"):
        checks.check_meanflow_target(lambda *a: meanflow_right(*a, sign=1.0))
    with pytest.raises(AssertionError, match="tangent is on r, not t"):
        checks.check_meanflow_target(lambda n, x, t, r, v: meanflow_right(
            n, x, t, r, v, (v, torch.zeros_like(t), torch.ones_like(r))))
    with pytest.raises(AssertionError, match=r"misses v \. d_x F"):
        checks.check_meanflow_target(lambda n, x, t, r, v: meanflow_right(
            n, x, t, r, v, (torch.zeros_like(v), torch.ones_like(t), torch.zeros_like(r))))
    with pytest.raises(AssertionError, match="MeanFlow stops it"):
        checks.check_meanflow_target(lambda *a: meanflow_right(*a, detach=False))
    with pytest.raises(AssertionError, match="average velocity F"):
        checks.check_meanflow_target(lambda n, x, t, r, v: (n(x, t, t),
                                                              meanflow_right(n, x, t, r, v)[1]))
