"""Classroom exercises through nbgrader (tvmlib.apps.exercises, tvmlib.apps.grade) on a small
master notebook built here with two real exercises and their real check_* functions: the grader
metadata added at build time, marker errors, the student copy nbgrader writes, solution leaks,
and grading a folder of submissions (solved, unsolved, a typical mistake with its check cell
deleted) into the CSV of scores per exercise, with the checks' messages."""

from __future__ import annotations

import csv
import json
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from tvmlib.apps import exercises as ex
from tvmlib.apps import grade as gr

CMT = """def cmt_target(x_i, t_i, x_j, t_j):
    \"\"\"(x_j - x_i) / (t_j - t_i).\"\"\"
    ### BEGIN SOLUTION: the CMT target
    gap = (t_j - t_i).reshape(-1, *[1] * (x_i.dim() - 1))  # (N, 1, ..., 1)
    return (x_j - x_i) / gap
    ### END SOLUTION"""
FM = """def flow_matching_loss(net, x0, eps, t):
    ### BEGIN SOLUTION
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    return (net(xt, t, t) - (eps - x0)).square().mean()
    ### END SOLUTION"""
SIGN_ERROR = ("return (x_j - x_i) / gap", "return (x_i - x_j) / gap")
# The toy's own check of exercise 1 (defined in the notebook, as a teacher might).
CHECK_CMT = """import torch

def check_cmt_target(fn):
    g = torch.Generator().manual_seed(0)
    x_i, x_j = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    t_i = 0.5 + 0.5 * torch.rand(5, generator=g)
    t_j = 0.5 * t_i
    want = (x_j - x_i) / (t_j - t_i)[:, None]
    got = fn(x_i, t_i, x_j, t_j)
    assert not torch.allclose(got, -want), (
        "check_cmt_target: sign error: the target is (x_j - x_i) / (t_j - t_i); flipping one "
        "of the two differences flips the sign")
    assert torch.allclose(got, want), "check_cmt_target: wrong target"
"""


def master_notebook() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell("# Toy master"),
        new_code_cell('scale = "default"', metadata={"tags": ["parameters"]}),
        new_code_cell("from tvmlib.teach.exercises import check_fm_loss\n" + CHECK_CMT),
        new_markdown_cell("### Exercise 1: the CMT target"),
        new_code_cell(CMT, execution_count=3, metadata={"papermill": {"duration": 0.1}},
                      outputs=[new_output("stream", name="stdout", text="hi\n")]),
        new_code_cell('check_cmt_target(cmt_target)\nprint("Exercise 1: correct")'),
        new_markdown_cell("### Exercise 2: the FM loss"),
        new_code_cell(FM),
        new_code_cell("check_fm_loss(flow_matching_loss)"),
    ]
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "papermill": {"duration": 3.0}})
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    return nb


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy master on disk and the student copy nbgrader makes of it."""
    folder = tmp_path_factory.mktemp("masters")
    master = folder / "01_toy.ipynb"
    nbformat.write(master_notebook(), master)
    student = nbformat.reads(ex.student_copies([master])[master.name], as_version=4)
    return master, student


def fill(student: nbformat.NotebookNode, master: nbformat.NotebookNode,
         change: tuple[str, str] | None = None) -> nbformat.NotebookNode:
    """What a student hands in: each stub of the copy replaced by the master's solution (the
    first exercise's with ``change`` = (old, new) applied: a typical mistake)."""
    nb = nbformat.from_dict(json.loads(json.dumps(student)))
    for e in ex.find_exercises(master):
        cell = next(c for c in nb.cells
                    if c.metadata.get("nbgrader", {}).get("grade_id") == e.answer_id)
        lines = cell.source.split("\n")
        at = next(i for i, line in enumerate(lines) if "raise NotImplementedError()" in line)
        assert lines[at - 1].strip() == "# YOUR CODE HERE"
        body = "\n".join(e.body)
        if change and e.number == 1:
            assert change[0] in body
            body = body.replace(*change)
        cell.source = "\n".join(lines[:at - 1] + [body] + lines[at + 1:])
    return nb


# ---- the master's exercises and their grader metadata -----------------------------------------

def test_exercises_and_metadata_added_at_build_time():
    master = master_notebook()
    before = nbformat.writes(master)
    found = ex.find_exercises(master, "toy")
    assert [(e.number, e.title, e.answer_cell, e.check_cell) for e in found] == [
        (1, "the CMT target", 4, 5), (2, "fill in this cell", 7, 8)]
    assert found[0].body[1].strip() == "return (x_j - x_i) / gap"
    source = ex.course_notebook(master, "toy")
    assert nbformat.writes(master) == before  # the master is not modified
    meta = [c.metadata.get("nbgrader") for c in source.cells]
    assert meta[4] == {"grade": False, "grade_id": "exercise-1-answer", "locked": False,
                       "schema_version": 3, "solution": True, "task": False}
    assert meta[5] == {"grade": True, "grade_id": "exercise-1", "locked": True, "points": 1,
                       "schema_version": 3, "solution": False, "task": False}
    assert meta[8]["grade_id"] == "exercise-2" and meta[7]["solution"]
    assert [i for i, m in enumerate(meta) if m] == [4, 5, 7, 8]
    assert "papermill" not in source.metadata and "papermill" not in source.cells[4].metadata
    assert source.cells[1].metadata["tags"] == ["parameters"]


@pytest.mark.parametrize("cells, what", [
    (["### BEGIN SOLUTION\nx = 1"], "no matching '### END SOLUTION'"),
    (["x = 1\n### END SOLUTION"], "no matching '### BEGIN SOLUTION'"),
    (["### BEGIN SOLUTION\n  ### BEGIN SOLUTION\n### END SOLUTION"], "cannot nest"),
    (["### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "print(x)"],
     r"cell 3\) calls no check_\* function"),
    (["### BEGIN SOLUTION\nx = 1\n### END SOLUTION"], "next code cell does not exist"),
])
def test_marker_errors_name_notebook_and_cell(cells, what):
    nb = new_notebook(cells=[new_markdown_cell("m"), new_code_cell("ok = 1")]
                      + [new_code_cell(c) for c in cells])
    with pytest.raises(ValueError, match=r"bad\.ipynb: cell 2") as err:
        ex.find_exercises(nb, "bad.ipynb")
    assert re.search(what, str(err.value)), str(err.value)


def test_markers_in_markdown_are_refused():
    nb = new_notebook(cells=[new_markdown_cell("write it between ### BEGIN SOLUTION lines")])
    with pytest.raises(ValueError, match="cell 0 is markdown.*reword"):
        ex.find_exercises(nb, "md.ipynb")
    assert not ex.has_solutions(nb)


# ---- the student copy ------------------------------------------------------------------------

def test_student_copy_from_nbgrader(toy):
    master, student = toy
    src = [c.source for c in student.cells]
    assert src[4] == ('def cmt_target(x_i, t_i, x_j, t_j):\n    """(x_j - x_i) / (t_j - t_i)."""'
                      '\n    # YOUR CODE HERE\n    raise NotImplementedError()')
    assert src[7].endswith("    # YOUR CODE HERE\n    raise NotImplementedError()")
    assert src[5] == master_notebook().cells[5].source  # the check cells stay, locked
    assert student.cells[5].metadata["nbgrader"]["locked"] and \
        student.cells[5].metadata["editable"] is False
    assert all(c.outputs == [] and c.execution_count is None
               for c in student.cells if c.cell_type == "code")
    assert [c["id"] for c in student.cells] == [f"cell-{i}" for i in range(9)]
    nbformat.validate(student)
    assert ex.solution_leaks(master_notebook(), student) == []


def test_solution_leaks_anywhere_in_the_copy(toy):
    _, student = toy
    leaky = nbformat.from_dict(json.loads(json.dumps(student)))
    leaky.cells.insert(2, new_code_cell("def helper(x0, eps, t, net):\n"
                                        "    y = net((1 - t[:, None]) * x0 + t[:, None] * eps)"))
    leaky.cells.append(new_markdown_cell("Hint: `gap = (t_j - t_i).reshape(-1, *[1] * "
                                         "(x_i.dim() - 1))`"))
    assert ex.solution_leaks(master_notebook(), leaky, "toy") == [
        "exercise 1 (the CMT target): (t_j-t_i).reshape(-1,*[1]*(x_i.dim()-1)) in cell 10",
        "exercise 1 (the CMT target): gap=(t_j-t_i).reshape(-1,*[1]*(x_i.dim()-1)) in cell 10",
        "exercise 2 (fill in this cell): (1-t[:,None])*x0+t[:,None]*eps in cell 2"]
    assert ex.key_fragments("    return x  # short") == set()
    assert ex.key_fragments("    with torch.no_grad():  # opens a block") == set()


def test_cli_writes_and_checks_copies(tmp_path, capsys):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    masters = [nb_dir / "01_toy.ipynb", nb_dir / "02_toy.ipynb"]
    for path in masters:
        nbformat.write(master_notebook(), path)
    plain = nb_dir / "03_plain.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), plain)
    copies = [nb_dir / "exercises" / m.name for m in masters]
    assert ex.main([*map(str, masters), str(plain)]) == 0
    assert all(c.exists() for c in copies) and not (nb_dir / "exercises" / plain.name).exists()
    first = copies[0].read_bytes()
    assert ex.main(["--check", *map(str, masters)]) == 0  # byte-identical on regeneration
    copies[0].write_text(first.decode().replace("YOUR CODE HERE", "YOUR CODE"))
    copies[1].unlink()
    capsys.readouterr()
    assert ex.main(["--check", *map(str, masters)]) == 1
    out = capsys.readouterr().out
    assert f"{copies[0]}: differs from a fresh regeneration" in out
    assert f"{copies[1]}: missing" in out
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), masters[0])  # markers gone
    assert ex.main(["--check", str(masters[0])]) == 1
    assert "has no solution markers any more" in capsys.readouterr().out


# ---- grading ---------------------------------------------------------------------------------

def test_grade_a_folder_of_submissions(toy, tmp_path, capsys):
    master, student = toy
    sub = tmp_path / "handed_in"
    mistaken = fill(student, master_notebook(), SIGN_ERROR)
    mistaken.cells[5].source = 'print("Exercise 1: correct")'  # and the check deleted
    copies = {"alice": fill(student, master_notebook()), "bob": student, "carol": mistaken}
    for name, nb in copies.items():
        (sub / name).mkdir(parents=True)
        nbformat.write(nb, sub / name / master.name)
    other = tmp_path / "02_toy.ipynb"  # a second notebook, handed in by alice only
    nbformat.write(master_notebook(), other)
    nbformat.write(copies["alice"], sub / "alice" / other.name)
    out = tmp_path / "grades.csv"
    argv = [str(sub), "--out", str(out), "--masters", str(master), str(other)]
    assert gr.main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert [k for k in rows[0]] == ["student", "notebook", "exercise", "title", "score",
                                    "max_score", "message"]
    assert len(rows) == 12  # 3 students x 2 notebooks x 2 exercises
    second = {(r["student"], r["exercise"]): (float(r["score"]), r["message"]) for r in rows
              if r["notebook"] == other.name}
    assert second["alice", "exercise-1"] == second["alice", "exercise-2"] == (1.0, "")
    assert second["bob", "exercise-2"] == second["carol", "exercise-1"] == (0.0, "not submitted")
    rows = [r for r in rows if r["notebook"] == master.name]
    got = {(r["student"], r["exercise"]): (float(r["score"]), r["message"]) for r in rows}
    assert all(float(r["max_score"]) == 1 for r in rows)
    assert got["alice", "exercise-1"] == got["alice", "exercise-2"] == (1.0, "")
    for e in ("exercise-1", "exercise-2"):
        assert got["bob", e] == (0.0, "NotImplementedError: ")
    sign = ("AssertionError: check_cmt_target: sign error: the target is (x_j - x_i) / "
            "(t_j - t_i); flipping one of the two differences flips the sign")
    # nbgrader restored the locked check cell from the master, so the mistake is caught
    assert got["carol", "exercise-1"][0] == 0 and got["carol", "exercise-1"][1].startswith(sign)
    assert got["carol", "exercise-2"] == (1.0, "")
    assert [r["title"] for r in rows[:2]] == ["the CMT target", "fill in this cell"]
    assert "carol" in capsys.readouterr().out


def test_grade_refuses_unknown_notebooks(toy, tmp_path, capsys):
    master, student = toy
    (tmp_path / "eve").mkdir()
    nbformat.write(student, tmp_path / "eve" / "99_other.ipynb")
    assert gr.main([str(tmp_path), "--masters", str(master)]) == 2
    err = capsys.readouterr().err
    assert "99_other.ipynb is not a notebook with exercises" in err and "01_toy.ipynb" in err
    assert gr.main([str(tmp_path / "nowhere"), "--masters", str(master)]) == 2
    assert "is not a folder" in capsys.readouterr().err
