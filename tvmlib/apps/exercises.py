"""Student copies of the master notebooks, made by nbgrader from their solution markers.

A master notebook marks each solution with nbgrader's lines

    ### BEGIN SOLUTION: the flow matching loss      (the ": <title>" suffix is optional)
    ...solution code...
    ### END SOLUTION

and follows the cell that holds them with a **check cell**: the next code cell calls a
``check_*`` function of ``tvmlib.teach.exercises``. The masters carry no nbgrader metadata;
``course_notebook`` adds it when a course is built, so new exercises need only the markers and
their check cell:

* the solution cell becomes an nbgrader "autograded answer" (``exercise-N-answer``);
* the check cell becomes its "autograder tests" cell (``exercise-N``, 1 point, locked), so the
  check's AssertionError message is what a student and the grade report see.

``nbgrader generate_assignment`` then writes the student copies ``notebooks/exercises/<name>``:
each solution region becomes ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` and outputs
are cleared. ``--check`` only compares the committed copies with a fresh build:

    python -m tvmlib.apps.exercises [--check] [NOTEBOOK ...]

Grading a folder of submissions: ``python -m tvmlib.apps.grade`` (same course build).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import nbformat

from tvmlib.apps import cli

ASSIGNMENT = "tvmlib"  # the nbgrader assignment that holds every graded notebook
BEGIN = "BEGIN SOLUTION"  # nbgrader's delimiters: a line that contains one is a marker
END = "END SOLUTION"
TITLE = re.compile(r"BEGIN SOLUTION:[ \t]*(?P<title>.*?)[ \t\r]*$")
CHECK_CALL = re.compile(r"\bcheck_\w+\s*\(")
DEFAULT_TITLE = "fill in this cell"
POINTS = 1
MIN_LEAK_CHARS = 20
# `name = expr`, `a, b = expr` or `return expr`: the expression a solution line computes.
ASSIGNED = re.compile(r"^(?:return\s+|[\w\s,.\[\]]+?(?<![=<>!])=(?!=))(?P<expr>.+)$")
# Execution records that only describe the master's last run; they are dropped from the copy.
VOLATILE_CELL_METADATA = ("execution", "papermill", "ExecuteTime")
VOLATILE_NB_METADATA = ("papermill", "widgets")


@dataclass(frozen=True)
class Exercise:
    """One exercise of a master: its number, title, solution cell and check cell (indices)."""

    number: int
    title: str
    answer_cell: int
    check_cell: int
    body: tuple[str, ...]  # the solution lines between the markers (markers excluded)

    @property
    def grade_id(self) -> str:
        return f"exercise-{self.number}"

    @property
    def answer_id(self) -> str:
        return f"exercise-{self.number}-answer"


def _source(cell: Mapping) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _regions(src: str, where: str) -> list[tuple[str, list[str]]]:
    """The (title, body lines) of each BEGIN/END SOLUTION region of one cell's source."""
    regions: list[tuple[str, list[str]]] = []
    inside: tuple[int, str] | None = None  # (line number, title) of the open BEGIN
    body: list[str] = []
    for lineno, line in enumerate(src.split("\n"), start=1):
        if BEGIN in line:
            if inside is not None:
                raise ValueError(f"{where}: '### BEGIN SOLUTION' on line {lineno} while the one "
                                 f"on line {inside[0]} is still open (regions cannot nest)")
            title = TITLE.search(line)
            inside, body = (lineno, (title and title["title"]) or DEFAULT_TITLE), []
        elif END in line:
            if inside is None:
                raise ValueError(f"{where}: '### END SOLUTION' on line {lineno} has no matching "
                                 "'### BEGIN SOLUTION' above it")
            regions.append((inside[1], body))
            inside = None
        elif inside is not None:
            body.append(line)
    if inside is not None:
        raise ValueError(f"{where}: '### BEGIN SOLUTION' on line {inside[0]} has no matching "
                         "'### END SOLUTION' in the same cell")
    return regions


def find_exercises(nb: Mapping, name: str = "notebook") -> list[Exercise]:
    """The exercises of a master notebook, in order.

    Raises ValueError, naming ``name`` and the cell, for unbalanced or nested markers, for
    markers in a markdown cell (nbgrader would cut them out of the text), and for a solution
    cell whose next code cell does not call a ``check_*`` function.
    """
    cells = list(nb.get("cells", []))
    found: list[Exercise] = []
    for i, cell in enumerate(cells):
        src = _source(cell)
        if cell.get("cell_type") != "code":
            if BEGIN in src or END in src:
                raise ValueError(f"{name}: cell {i} is {cell.get('cell_type')} but mentions "
                                 f"'{BEGIN}' or '{END}': nbgrader treats every line holding "
                                 "them as a solution marker; reword the text")
            continue
        regions = _regions(src, f"{name}: cell {i}")
        if not regions:
            continue
        nxt = next((j for j in range(i + 1, len(cells))
                    if cells[j].get("cell_type") == "code"), None)
        if nxt is None or not CHECK_CALL.search(_source(cells[nxt])) or any(
                BEGIN in line for line in _source(cells[nxt]).split("\n")):
            what = "does not exist" if nxt is None else f"(cell {nxt}) calls no check_* function"
            raise ValueError(
                f"{name}: cell {i} holds a solution ('{regions[0][0]}') but the next code cell "
                f"{what}: follow every solution cell with a check cell that calls a "
                "tvmlib.teach.exercises check_* function (it is the graded test)")
        body = tuple(line for _, lines in regions for line in lines)
        found.append(Exercise(len(found) + 1, regions[0][0], i, nxt, body))
    return found


def has_solutions(nb: Mapping) -> bool:
    """True if any code cell of the notebook holds a ``BEGIN SOLUTION`` line."""
    return any(cell.get("cell_type") == "code" and BEGIN in _source(cell)
               for cell in nb.get("cells", []))


def _nbgrader(grade_id: str, *, grade: bool, solution: bool, locked: bool) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = POINTS
    return meta


def course_notebook(master: Mapping, name: str = "notebook") -> nbformat.NotebookNode:
    """The master as nbgrader's source version (the input is not modified): the nbgrader cell
    metadata of each exercise added, the master's execution records dropped."""
    nb = nbformat.from_dict(copy.deepcopy(dict(master)))
    for key in VOLATILE_NB_METADATA:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.setdefault("metadata", {}).pop(key, None)
    for ex in find_exercises(nb, name):
        nb.cells[ex.answer_cell].metadata["nbgrader"] = _nbgrader(
            ex.answer_id, grade=False, solution=True, locked=False)
        nb.cells[ex.check_cell].metadata["nbgrader"] = _nbgrader(
            ex.grade_id, grade=True, solution=False, locked=True)
    return nb


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def key_fragments(line: str) -> set[str]:
    """The parts of one solution line that would give the answer away, whitespace removed: the
    statement without its comment, and the expression it assigns or returns. Fragments shorter
    than ``MIN_LEAK_CHARS`` (``return x``, ``s = q.shape[-1] ** -0.5``) are too common to count,
    and a line that only opens a block (``with torch.no_grad():``) gives nothing away."""
    code = line.split("#", 1)[0].strip()
    if code.endswith(":"):
        return set()
    frags = {code}
    rhs = ASSIGNED.match(code)
    if rhs:
        frags.add(rhs["expr"])
    return {f for f in map(_squash, frags) if len(f) >= MIN_LEAK_CHARS}


def solution_leaks(master: Mapping, student: Mapping, name: str = "notebook") -> list[str]:
    """Where a student copy shows part of an answer: for every solution line of the master,
    each of its ``key_fragments`` found in any cell of the copy (code or markdown, whitespace
    ignored), e.g. a helper cell above the exercise that makes the same ``torch.func.jvp``
    call, or a hint that quotes the solution's line. Empty when nothing leaks."""
    cells = [(i, _squash(_source(c))) for i, c in enumerate(student.get("cells", []))]
    leaks = []
    for ex in find_exercises(master, name):
        for frag in sorted({f for line in ex.body for f in key_fragments(line)}):
            for i, text in cells:
                if frag in text:
                    leaks.append(f"exercise {ex.number} ({ex.title}): {frag} in cell {i}")
    return leaks


# ---------------------------------------------------------------------------------------------
# The nbgrader course
# ---------------------------------------------------------------------------------------------

def nbgrader_api(root: Path, timeout: int = 600):
    """An ``NbGraderAPI`` on the course folder ``root`` (gradebook ``root/gradebook.db``);
    ``timeout``: seconds per cell when grading."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    # nbgrader runs the `alembic` command to version its gradebook: find it beside this Python
    # even when the virtual environment is not activated.
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = "tvmlib"
    c.Execute.timeout = timeout
    c.Exchange.root = str(root / "exchange")  # not used; keeps nbgrader off /srv
    c.NbGraderAPI.log_level = logging.WARNING
    return NbGraderAPI(config=c)


def build_course(masters: Iterable[Path], root: Path, timeout: int = 600):
    """Write each master's source version into the course ``root`` and run nbgrader's
    ``generate_assignment``; the student copies are then in ``root/release/tvmlib/``.
    Returns the ``NbGraderAPI`` and the exercises of each notebook (by file name)."""
    source = root / "source" / ASSIGNMENT
    source.mkdir(parents=True, exist_ok=True)
    exercises = {}
    for master in masters:
        nb = nbformat.read(master, as_version=4)
        exercises[master.name] = find_exercises(nb, master.name)
        nbformat.write(course_notebook(nb, master.name), source / master.name)
    api = nbgrader_api(root, timeout)
    result = api.generate_assignment(ASSIGNMENT)
    if not result["success"]:
        raise RuntimeError(f"nbgrader generate_assignment failed:\n{result.get('error', '')}"
                           f"\n{result.get('log', '')}")
    return api, exercises


@contextlib.contextmanager
def course(masters: Iterable[Path], root: Path | None = None,
           timeout: int = 600) -> Iterator[tuple[Path, object, dict]]:
    """``build_course`` in ``root`` (default: a temporary folder removed afterwards); yields
    (root, api, exercises)."""
    with tempfile.TemporaryDirectory(prefix="tvmlib-course-") as tmp:
        folder = Path(root) if root is not None else Path(tmp)
        api, exercises = build_course(masters, folder, timeout)
        yield folder, api, exercises


def student_copies(masters: Iterable[Path]) -> dict[str, str]:
    """The student copy of each master (file name -> notebook JSON text), built by nbgrader."""
    masters = list(masters)
    with course(masters) as (root, _, _):
        release = root / "release" / ASSIGNMENT
        return {m.name: (release / m.name).read_text(encoding="utf-8") for m in masters}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def _student_path(master: Path) -> Path:
    return master.parent / "exercises" / master.name


def numbered_notebooks() -> list[Path]:
    """Every ``notebooks/[0-9]*.ipynb`` of the repository."""
    from tvmlib.utils.paths import repo_root

    return sorted((repo_root() / "notebooks").glob("[0-9]*.ipynb"))


def masters_with_exercises(paths: Iterable[Path] | None = None) -> list[Path]:
    """The given notebooks (default: every numbered notebook) that hold solution markers."""
    paths = numbered_notebooks() if paths is None else paths
    return [p for p in paths if has_solutions(nbformat.read(p, as_version=4))]


def main(argv: Iterable[str] | None = None) -> int:
    """CLI: write (or with ``--check`` compare) the student copies. Returns the exit code."""
    parser = cli.Parser(
        prog="python -m tvmlib.apps.exercises",
        description="Write notebooks/exercises/<name> from each master notebook's "
                    "### BEGIN SOLUTION / ### END SOLUTION markers, through nbgrader.")
    parser.add_argument("notebooks", nargs="*", type=Path, metavar="NOTEBOOK",
                        help="master notebooks (default: every notebooks/[0-9]*.ipynb)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a student copy is missing or stale")
    args = parser.parse_args(list(argv) if argv is not None else None)
    paths = args.notebooks or numbered_notebooks()
    masters = masters_with_exercises(paths)
    stale: list[Path] = []
    for path in paths:
        if path in masters:
            continue
        if args.notebooks:
            print(f"{path}: no solution markers, no student copy")
        target = _student_path(path)
        if target.exists():  # a copy whose master lost its markers
            stale.append(target)
            print(f"{target}: master {path.name} has no solution markers any more"
                  + ("" if args.check else "; delete this copy"))
    copies = student_copies(masters) if masters else {}
    for master in masters:
        target, text = _student_path(master), copies[master.name]
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(target)
            why = "missing" if current is None else "differs from a fresh regeneration"
            print(f"{target}: {why} (run make exercises)")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    cli.run(main)
