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
from tvmlib.teach import exercises_cmt as checks_cmt

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


def cmt_loss_right(student, traj, times, k, l, flip=1.0, rows=None, call="kl", detach=False):
    n, P = k.shape
    r = torch.arange(n).repeat_interleave(P) if rows is None else rows  # (n P,) trajectory
    x_k, x_l = traj[k.flatten(), r], traj[l.flatten(), r]  # (n P, ...)
    t_k, t_l = times[k.flatten()], times[l.flatten()]
    gap = (t_l - t_k).reshape(-1, *[1] * (x_k.dim() - 1))
    F = student(x_k, t_k, t_l) if call == "kl" else student(x_k, t_k, t_k)
    F = F.detach() if detach else F
    return (F - flip * (x_l - x_k) / gap).square().mean()


def test_check_cmt_loss_accepts_the_loss_and_names_the_usual_mistakes():
    assert checks_cmt.check_cmt_loss(cmt_loss_right) is None
    with pytest.raises(AssertionError, match="wrong sign"):
        checks_cmt.check_cmt_loss(lambda *a: cmt_loss_right(*a, flip=-1.0))
    with pytest.raises(AssertionError, match="regressed the velocity"):
        checks_cmt.check_cmt_loss(lambda *a: cmt_loss_right(*a, call="kk"))
    with pytest.raises(AssertionError, match="wrong trajectories"):
        checks_cmt.check_cmt_loss(lambda s, x, t, k, l: cmt_loss_right(
            s, x, t, k, l, rows=torch.arange(k.shape[0]).repeat(k.shape[1])))
    with pytest.raises(AssertionError, match="no gradient reaches"):
        checks_cmt.check_cmt_loss(lambda *a: cmt_loss_right(*a, detach=True))


def test_check_cmt_loss_asks_for_images_too():
    def flat_2d_only(student, traj, times, k, l):  # the gap does not broadcast over images
        r = torch.arange(k.shape[0]).repeat_interleave(k.shape[1])
        x_k, x_l = traj[k.flatten(), r], traj[l.flatten(), r]
        t_k, t_l = times[k.flatten()], times[l.flatten()]
        return (student(x_k, t_k, t_l) - (x_l - x_k) / (t_l - t_k)[:, None]).square().mean()

    with pytest.raises(AssertionError, match=r"states of shape \(7, 5, 1, 4, 4\).*broadcast"):
        checks_cmt.check_cmt_loss(flat_2d_only)
    with pytest.raises(AssertionError, match="scalar"):
        checks_cmt.check_cmt_loss(lambda *a: cmt_loss_right(*a).reshape(1))

    def stub(*args):
        raise NotImplementedError("Exercise 1: the mid-training loss")

    with pytest.raises(NotImplementedError, match="Exercise 1"):  # not read as a shape error
        checks_cmt.check_cmt_loss(stub)
