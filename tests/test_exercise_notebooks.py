"""Classroom exercises: the student copies ``notebooks/exercises/<name>`` of the master notebooks.

(a) every committed student copy is byte-identical to a fresh regeneration from its master
    (the logic of ``python -m tvmlib.apps.exercises --check``), every master with solution markers
    has a copy, and no copy is left without a master;
(b) every student copy, executed top to bottom at smoke scale, stops at its **first** exercise
    with ``NotImplementedError("Exercise 1: <title>")``, raised by the check cell right after
    the first stub, after all earlier cells ran cleanly (the exercises come early, so this is
    fast);
(c) that the masters (with their solutions) run top to bottom and pass their ``check_*`` cells
    is covered by ``tests/test_notebooks.py``, which executes every ``notebooks/[0-9]*.ipynb``
    at smoke scale; its glob does not reach ``notebooks/exercises/``, so the failing student
    copies are only run here.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from tvmlib.apps import exercises as ex

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
EX_DIR = NB_DIR / "exercises"
MASTERS = [p for p in sorted(NB_DIR.glob("[0-9]*.ipynb"))
           if ex.has_solutions(nbformat.read(p, as_version=4))]
STUB = re.compile(r'raise NotImplementedError\("(Exercise 1: [^"]*)"\)')

pytestmark = pytest.mark.notebook


def _ids(path: Path) -> str:
    return path.stem


def test_masters_with_exercises_exist():
    assert MASTERS, f"no notebooks/[0-9]*.ipynb under {NB_DIR} has '### BEGIN SOLUTION' markers"


@pytest.mark.parametrize("master", MASTERS, ids=_ids)
def test_student_copy_in_sync(master: Path):
    """The committed copy equals the copy regenerated in memory from the master, byte for byte."""
    copy = EX_DIR / master.name
    assert copy.exists(), f"{copy} is missing: run python -m tvmlib.apps.exercises"
    fresh = ex.student_copy_text(nbformat.read(master, as_version=4), master.name)
    assert copy.read_text(encoding="utf-8") == fresh, (
        f"{copy} is stale: run python -m tvmlib.apps.exercises {master.relative_to(ROOT)}")


def test_no_orphan_student_copies():
    orphans = sorted(p.name for p in EX_DIR.glob("*.ipynb")) if EX_DIR.exists() else []
    orphans = [name for name in orphans if name not in {m.name for m in MASTERS}]
    assert not orphans, f"student copies without a master that has solution markers: {orphans}"


def test_cli_check_passes(capsys):
    assert ex.main(["--check"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("master", MASTERS, ids=_ids)
def test_student_copy_stops_at_first_exercise(master: Path, tmp_path: Path, monkeypatch):
    """Execute the student copy at smoke scale: it must raise Exercise 1's NotImplementedError
    in the cell right after the first stub, and nothing before may fail."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    book = nbformat.read(EX_DIR / master.name, as_version=4)
    stubs = [i for i, cell in enumerate(book.cells)
             if cell.cell_type == "code" and STUB.search(cell.source)]
    assert stubs, f"{master.name}: no 'Exercise 1' stub in the student copy"
    title = STUB.search(book.cells[stubs[0]].source).group(1)

    monkeypatch.setenv("TVMLIB_SCALE", "smoke")
    monkeypatch.setenv("TVMLIB_QUIET", "1")
    monkeypatch.setenv("TVMLIB_FIGURES", str(tmp_path / "figures"))  # the kernel inherits env
    client = NotebookClient(book, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}})
    with pytest.raises(CellExecutionError) as info:
        client.execute()
    err = info.value
    assert err.ename == "NotImplementedError", f"stopped on {err.ename}: {err.evalue}"
    assert err.evalue == title, f"expected {title!r}, got {err.evalue!r}"

    failed = [i for i, cell in enumerate(book.cells) if cell.cell_type == "code"
              and any(o.get("output_type") == "error" for o in cell.get("outputs", []))]
    assert failed == [stubs[0] + 1], (
        f"expected only the check cell {stubs[0] + 1} after the first stub to fail, got {failed}")
