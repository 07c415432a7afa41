"""Student copies of the master notebooks, from their solution markers.

A master notebook marks each solution with nbgrader-style lines

    ### BEGIN SOLUTION: the flow matching loss      (the ": <title>" suffix is optional)
    ...solution code...
    ### END SOLUTION

``make_student_copy`` replaces every such region (markers included) by one line at the BEGIN
line's indentation, ``raise NotImplementedError("Exercise N: <title>")``, numbering exercises in
order through the notebook, and clears all outputs and execution counts. The command writes
``notebooks/exercises/<name>`` for every master notebook with markers; ``--check`` only compares:

    python -m tvmlib.apps.exercises [--check] [NOTEBOOK ...]
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import nbformat

from tvmlib.apps import cli

# ---------------------------------------------------------------------------------------------
# Student copies
# ---------------------------------------------------------------------------------------------

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?::[ \t]*(?P<title>.*?))?[ \t\r]*$")
END = re.compile(r"^[ \t]*### END SOLUTION[ \t\r]*$")
DEFAULT_TITLE = "fill in this cell"
# Execution records that only describe the master's last run; they are dropped from the copy.
VOLATILE_CELL_METADATA = ("execution", "papermill")
VOLATILE_NB_METADATA = ("papermill", "widgets")


def _source(cell: Mapping) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _stub(indent: str, n: int, title: str) -> str:
    # json.dumps gives a valid Python double-quoted literal for any title.
    return f"{indent}raise NotImplementedError({json.dumps(f'Exercise {n}: {title}')})"


def _replace_solutions(src: str, first: int, where: str) -> tuple[str, int]:
    """Swap each BEGIN/END SOLUTION region of one cell's source for a stub.

    Returns the new source and the number of exercises found. ``first`` is the number of the
    cell's first exercise; ``where`` names the cell in error messages.
    """
    out: list[str] = []
    n, inside = 0, None  # inside: (line number, indent, title) of the open BEGIN
    for lineno, line in enumerate(src.split("\n"), start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if inside is not None:
                raise ValueError(f"{where}: '### BEGIN SOLUTION' on line {lineno} while the one "
                                 f"on line {inside[0]} is still open (regions cannot nest)")
            inside = (lineno, begin["indent"], begin["title"] or DEFAULT_TITLE)
        elif end:
            if inside is None:
                raise ValueError(f"{where}: '### END SOLUTION' on line {lineno} has no matching "
                                 "'### BEGIN SOLUTION' above it")
            out.append(_stub(inside[1], first + n, inside[2]))
            n, inside = n + 1, None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise ValueError(f"{where}: '### BEGIN SOLUTION' on line {inside[0]} has no matching "
                         "'### END SOLUTION' in the same cell")
    return "\n".join(out), n


def has_solutions(nb: Mapping) -> bool:
    """True if any code cell of the notebook holds a ``### BEGIN SOLUTION`` line."""
    return any(cell.get("cell_type") == "code"
               and any(BEGIN.match(line) for line in _source(cell).split("\n"))
               for cell in nb.get("cells", []))


def _fill_missing_ids(nb: nbformat.NotebookNode) -> None:
    """Give cells without an id (nbformat >= 4.5 wants one) a deterministic id from their
    index; left to nbformat, validation would invent random ones and break byte-identity."""
    if (nb.get("nbformat", 4), nb.get("nbformat_minor", 0)) < (4, 5):
        return
    taken = {cell["id"] for cell in nb.cells if "id" in cell}
    for i, cell in enumerate(nb.cells):
        if "id" not in cell:
            new_id = f"cell-{i}"
            while new_id in taken:
                new_id += "x"
            cell["id"] = new_id
            taken.add(new_id)


def make_student_copy(master_nb: Mapping, name: str = "notebook") -> nbformat.NotebookNode:
    """The student version of a master notebook (the input is not modified).

    Every code cell's solution regions become ``raise NotImplementedError("Exercise N: ...")``
    (N counts through the notebook), every code cell loses its outputs and execution count,
    and the execution records (cell metadata ``execution`` / ``papermill``, notebook metadata
    ``papermill`` / ``widgets``) are dropped; tags (``parameters``), cell ids and other
    metadata stay (cells of an nbformat >= 4.5 notebook without an id get ``cell-<index>``).

    Raises ValueError naming ``name`` and the cell index for unbalanced or nested markers.
    """
    nb = nbformat.from_dict(copy.deepcopy(dict(master_nb)))
    for key in VOLATILE_NB_METADATA:
        nb.metadata.pop(key, None)
    _fill_missing_ids(nb)
    n_done = 0
    for i, cell in enumerate(nb.cells):
        meta = cell.setdefault("metadata", nbformat.NotebookNode())
        for key in VOLATILE_CELL_METADATA:
            meta.pop(key, None)
        if cell.cell_type != "code":
            continue
        src, n = _replace_solutions(_source(cell), n_done + 1, f"{name}: cell {i}")
        cell.source, n_done = src, n_done + n
        cell.outputs, cell.execution_count = [], None
    return nb


def student_copy_text(master_nb: Mapping, name: str = "notebook") -> str:
    """The student copy serialized deterministically (nbformat v4 JSON, trailing newline)."""
    text = nbformat.writes(make_student_copy(master_nb, name), version=4)
    return text if text.endswith("\n") else text + "\n"


def _student_path(master: Path) -> Path:
    return master.parent / "exercises" / master.name


def _default_masters() -> list[Path]:
    from tvmlib.utils.paths import repo_root

    return sorted((repo_root() / "notebooks").glob("[0-9]*.ipynb"))


def main(argv: Iterable[str] | None = None) -> int:
    """CLI: write (or with ``--check`` compare) the student copies. Returns the exit code."""
    parser = cli.Parser(
        prog="python -m tvmlib.apps.exercises",
        description="Write notebooks/exercises/<name> from each master notebook's "
                    "### BEGIN SOLUTION / ### END SOLUTION markers.")
    parser.add_argument("notebooks", nargs="*", type=Path, metavar="NOTEBOOK",
                        help="master notebooks (default: every notebooks/[0-9]*.ipynb)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a student copy is missing or stale")
    args = parser.parse_args(list(argv) if argv is not None else None)
    explicit = bool(args.notebooks)
    masters = args.notebooks or _default_masters()
    stale: list[Path] = []
    for master in masters:
        nb = nbformat.read(master, as_version=4)
        target = _student_path(master)
        if not has_solutions(nb):
            if explicit:
                print(f"{master}: no solution markers, no student copy")
            if target.exists():  # a copy whose master lost its markers
                stale.append(target)
                print(f"{target}: master {master.name} has no solution markers any more"
                      + ("" if args.check else "; delete this copy"))
            continue
        text = student_copy_text(nb, master.name)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(target)
            why = "missing" if current is None else "differs from a fresh regeneration"
            print(f"{target}: {why} (run python -m tvmlib.apps.exercises {master})")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    cli.run(main)
