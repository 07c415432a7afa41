"""Grade a folder of handed-in student notebooks with nbgrader into a CSV of scores per exercise.

    python -m tvmlib.apps.grade SUBMISSIONS [--out grades.csv] [--scale smoke] [--course DIR]

``SUBMISSIONS`` holds one folder per student, each with that student's notebooks under the
names of the masters (``alice/01_flow_matching_2d.ipynb``, ...). The command builds the nbgrader
course from the current masters (``tvmlib.apps.exercises``), runs ``nbgrader autograde`` for
every student (the graded cells are the locked check cells, restored from the masters, so a
student cannot weaken them), and writes one CSV row per student, notebook and exercise:

    student,notebook,exercise,title,score,max_score,message

``message`` is the failing check's error (``AssertionError: check_fm_loss: the velocity target
has the wrong sign ...``), "not submitted", or empty for a passed exercise. The notebooks run
at ``--scale`` (the ``TVMLIB_SCALE`` of their parameters cell; default ``smoke``: seconds per
notebook, enough for every check). Like any autograder it runs the students' code: run it where
that is acceptable. ``--course DIR`` keeps nbgrader's course folder (gradebook,
autograded notebooks) for its other tools, e.g. ``nbgrader generate_feedback``.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from unittest import mock

import nbformat

from tvmlib.apps import cli
from tvmlib.apps.exercises import ASSIGNMENT, course, masters_with_exercises

SCALES = ("smoke", "default")


@dataclass
class Row:
    """One exercise of one student's notebook in the grade report."""

    student: str
    notebook: str
    exercise: str
    title: str
    score: float
    max_score: float
    message: str


def find_submissions(folder: Path, known: Iterable[str]) -> dict[str, dict[str, Path]]:
    """student -> {notebook name -> path} from ``folder/<student>/<notebook>.ipynb``.

    Raises ValueError for a missing or empty folder and for a notebook whose name is not one of
    ``known`` (the masters with exercises), listing the valid names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: give a folder with one sub-folder per "
                         "student holding that student's notebooks")
    known = sorted(known)
    found: dict[str, dict[str, Path]] = {}
    for student in sorted(p for p in folder.iterdir() if p.is_dir()):
        notebooks = {p.name: p for p in sorted(student.glob("*.ipynb"))}
        unknown = sorted(set(notebooks) - set(known))
        if unknown:
            raise ValueError(f"{student}: {', '.join(unknown)} is not a notebook with exercises; "
                             f"name submissions after the masters: {', '.join(known)}")
        if notebooks:
            found[student.name] = notebooks
    if not found:
        raise ValueError(f"{folder} has no <student>/<notebook>.ipynb files; expected one "
                         f"sub-folder per student with notebooks named {', '.join(known)}")
    return found


def _messages(notebook: Path) -> dict[str, str]:
    """grade_id -> the error ("Name: value") of each failed graded cell of an autograded
    notebook."""
    nb = nbformat.read(notebook, as_version=4)
    out = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if meta.get("grade") and errors:
            out[meta["grade_id"]] = f"{errors[0]['ename']}: {errors[0]['evalue']}"
    return out


def _failure(result: dict) -> str:
    """The last line of a failed nbgrader run's error, as a report message."""
    lines = (result.get("error") or result.get("log") or "").strip().splitlines()
    return "could not be graded: " + (lines[-1] if lines else "nbgrader gave no reason")


def grade(submissions: Path, scale: str = "smoke", course_dir: Path | None = None,
          timeout: int = 600, masters: Iterable[Path] | None = None) -> list[Row]:
    """Autograde every student's notebooks; the rows of the report (see the module doc)."""
    from nbgrader.api import Gradebook

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    by_name = {p.name: p for p in masters_with_exercises(masters)}
    students = find_submissions(submissions, by_name)
    graded = sorted({name for nbs in students.values() for name in nbs})
    rows: list[Row] = []
    with (course([by_name[n] for n in graded], course_dir, timeout) as (root, api, exercises),
          tempfile.TemporaryDirectory(prefix="tvmlib-grade-figures-") as figures,
          mock.patch.dict(os.environ, TVMLIB_SCALE=scale, TVMLIB_QUIET="1",
                          TVMLIB_FIGURES=figures)):
        for student, notebooks in students.items():
            folder = root / "submitted" / student / ASSIGNMENT
            folder.mkdir(parents=True, exist_ok=True)
            for name, path in notebooks.items():
                shutil.copyfile(path, folder / name)
            result = api.autograde(ASSIGNMENT, student)
            failure = None if result["success"] else _failure(result)
            with Gradebook(api.coursedir.db_url, api.coursedir.course_id) as gb:
                for name in graded:
                    done = root / "autograded" / student / ASSIGNMENT / name
                    messages = _messages(done) if done.exists() else {}
                    for ex in exercises[name]:
                        if failure is None:
                            g = gb.find_grade(ex.grade_id, Path(name).stem, ASSIGNMENT, student)
                            score, max_score = g.score, g.max_score
                        else:
                            score, max_score = 0.0, 1.0
                        message = (failure or ("not submitted" if name not in notebooks
                                               else messages.get(ex.grade_id, "")))
                        rows.append(Row(student, name, ex.grade_id, ex.title, score, max_score,
                                        message))
    return rows


def write_csv(rows: Iterable[Row], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[fld.name for fld in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def main(argv: Iterable[str] | None = None) -> int:
    parser = cli.Parser(
        prog="python -m tvmlib.apps.grade",
        description="Autograde SUBMISSIONS/<student>/<notebook>.ipynb with nbgrader; write a "
                    "CSV with one row per student, notebook and exercise.")
    parser.add_argument("submissions", type=Path, help="folder with one sub-folder per student")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"),
                        help="the CSV to write (default: grades.csv)")
    parser.add_argument("--scale", default="smoke", choices=SCALES,
                        help="TVMLIB_SCALE for the graded runs (default: smoke)")
    parser.add_argument("--course", type=Path, default=None,
                        help="keep nbgrader's course folder here (default: a temporary one)")
    parser.add_argument("--timeout", type=int, default=600,
                        help="seconds per cell before a run is stopped (default: 600)")
    parser.add_argument("--masters", type=Path, nargs="+", default=None, metavar="NOTEBOOK",
                        help="the master notebooks (default: every notebooks/[0-9]*.ipynb)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        rows = grade(args.submissions, args.scale, args.course, args.timeout, args.masters)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_csv(rows, args.out)
    for r in rows:
        print(f"{r.student:<16}{r.notebook:<34}{r.exercise:<12}{r.score:g}/{r.max_score:g}"
              + (f"  {r.message}" if r.message else ""))
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    cli.run(main)
