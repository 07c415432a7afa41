"""Numbers in prose come from results: a measured number typed into a notebook's markdown cell
must be one of that notebook's results (a figures/*.json file it names, or its code outputs).

Measured numbers are rendered from results in code cells (``tvmlib.utils.prose.say``), so a
markdown cell should hold none. What this test reads as a *measured* number in a markdown cell:

* a decimal, ``0.164``, ``14.8``, ``1.2e-3`` (not a version such as ``2.11.0``);
* a percentage, ``12%`` / ``12.5 %``;
* a multiplier, ``2.9x`` / ``10x`` / ``3×`` (not a shape such as ``32x32``).

Whole numbers without ``%`` or ``x`` are not checked: they are mostly counts, steps, sizes,
section, equation and figure numbers, years. Text that is not prose is skipped: code spans,
fenced code, links' targets, HTML tags, URLs.

A measured-looking number passes when it is

1. a result: a numeric value of the notebook's code outputs, or a scalar of a figures/*.json file
   the notebook names (long lists, i.e. training curves, are left out: with thousands of values
   almost any number would match by chance), equal to the typed number at the precision typed;
   a whole percentage or multiplier (``30%``, ``10x``) never passes as a result, since it
   rounds onto too many values: render it;
2. a setting: a decimal literal of the notebook's own code (hyperparameters, parameters);
   ``10%`` matches a literal ``0.1``, ``5x`` a literal ``5.0``;
3. a reference, after one of the words of ``REFERENCE_WORDS`` (``Eq. 16``, ``App. B.1``, an arXiv
   id), or one of the few constants of ``ALLOWED``.

A number a paper reports (its FID, its timings) is not a result of the notebook either: render it
from a file that records where it comes from, or add it to ``ALLOWED`` naming the table.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

# Words after which a number is a reference, not a measurement (the number follows within a few
# characters): equation, figure, table, section and appendix numbers, papers' ids.
REFERENCE_WORDS = ("Eq.", "Eqs.", "Fig.", "Figs.", "Figure", "Table", "Tab.", "§", "Sec.",
                   "Section", "section", "App.", "Appendix", "Theorem", "arXiv", "Python")

# Constants a notebook may state although neither its code nor its results hold them:
# (notebook stem or "*", number as typed) -> why it is not a measurement.
ALLOWED = {
    ("05_cmt_mid_training", "0.002"): "EDM's sigma_min, the end of the log-SNR grid "
                                      "(tvmlib.core.solvers.T_MIN)",
}

NUMBER = r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
MEASURED = re.compile(
    rf"(?<![\w./])(?P<num>{NUMBER})(?:(?P<pct>\s?%)|(?P<times>[x×]))?(?!\w)(?!\.\d)")
NON_PROSE = [re.compile(p, re.S) for p in (
    r"```.*?```",  # fenced code
    r"`[^`]*`",  # code spans
    r"\]\([^)]*\)",  # link targets
    r"<[^>]+>",  # HTML tags
    r"https?://\S+",  # bare URLs
)]
MAX_RESULT_LIST = 16  # longer lists in a results file are curves, not stated results


def prose(markdown: str) -> str:
    """The markdown without code, link targets, HTML tags and URLs."""
    for pattern in NON_PROSE:
        markdown = pattern.sub(" ", markdown)
    return markdown


def measured_numbers(markdown: str) -> list[str]:
    """Numbers in ``markdown`` that read as measurements (see the module docstring), as typed
    (``"0.164"``, ``"12%"``, ``"2.9x"``)."""
    text, found = prose(markdown), []
    for m in MEASURED.finditer(text):
        num = m.group("num")
        if not (m.group("pct") or m.group("times") or "." in num):
            continue  # a whole number: a count, a step, a section
        before = text[max(0, m.start() - 12):m.start()]
        if any(word in before for word in REFERENCE_WORDS):
            continue
        found.append(m.group(0).replace(" ", ""))
    return found


def _numbers_in(text: str) -> list[float]:
    out = []
    for tok in re.findall(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", text):
        try:
            out.append(abs(float(tok)))
        except ValueError:
            continue
    return out


def _json_scalars(node, out: list[float]) -> list[float]:
    if isinstance(node, bool):
        return out
    if isinstance(node, (int, float)):
        out.append(abs(float(node)))
    elif isinstance(node, dict):
        for v in node.values():
            _json_scalars(v, out)
    elif isinstance(node, list) and len(node) <= MAX_RESULT_LIST:
        for v in node:
            _json_scalars(v, out)
    return out


def _outputs_text(book) -> str:
    parts = []
    for cell in book.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(out.get("text", ""))
            for key, value in out.get("data", {}).items():
                if key.startswith("text/"):
                    parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


@cache
def results_of(path: Path) -> tuple[frozenset, tuple]:
    """(number literals of the code, results: numbers of the outputs and named JSON files)."""
    book = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in book.cells if c.cell_type == "code")
    settings = frozenset(float(tok) for tok in re.findall(NUMBER, code)
                         if "." in tok or "e" in tok.lower())
    values = _numbers_in(_outputs_text(book))
    everything = "\n".join(c.source for c in book.cells) + _outputs_text(book)
    for name in sorted(set(re.findall(r"[\w.\-]+\.json", everything))):
        file = ROOT / "figures" / Path(name).name
        if file.exists():
            _json_scalars(json.loads(file.read_text()), values)
    return settings, tuple(values)


def _as_typed(value: float, typed: str) -> bool:
    """Does ``value`` print as ``typed`` at the precision typed?"""
    if "e" in typed.lower():
        return math.isclose(value, float(typed), rel_tol=1e-12)
    decimals = len(typed.split(".")[1]) if "." in typed else 0
    return f"{value:.{decimals}f}" == typed


def supported(token: str, settings: frozenset, values: tuple) -> bool:
    """Is ``token`` (as typed: ``0.164``, ``12%``, ``2.9x``) a setting or a result?"""
    num = token.rstrip("%x×")
    if token == num:  # a decimal: a setting of the code, or a result at the precision typed
        return float(num) in settings or any(_as_typed(v, num) for v in values)
    setting = float(num) / 100 if token.endswith("%") else float(num)
    if setting in settings:  # 10% <-> 0.1, 5x <-> 5.0 in the code
        return True
    if "." not in num:  # a whole "10x" or "30%" rounds onto too many results to tell
        return False
    scaled = [100 * v for v in values] if token.endswith("%") else list(values)
    return any(_as_typed(v, num) for v in scaled)


def unsupported(path: Path, markdown: str) -> list[str]:
    """The measured numbers of ``markdown`` that ``path``'s results, code and allow-list lack."""
    settings, values = results_of(path)
    return [token for token in measured_numbers(markdown)
            if (path.stem, token) not in ALLOWED and ("*", token) not in ALLOWED
            and not supported(token, settings, values)]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_numbers_come_from_results(nb: Path):
    book = nbformat.read(nb, as_version=4)
    problems = []
    for i, cell in enumerate(book.cells):
        if cell.cell_type == "markdown":
            bad = unsupported(nb, cell.source)
            if bad:
                problems.append(f"cell {i}: {', '.join(bad)}")
    assert not problems, (
        f"{nb.name} states numbers in markdown that are not among its results; render them "
        "from the results with tvmlib.utils.prose.say:\n" + "\n".join(problems))


def test_what_reads_as_a_measured_number():
    text = ("W2 0.164 at 64 NFE, 2.9x FM and 12.5 % of the mass (a 14.8; 10x). Eq. 16, App. B.1, "
            "arXiv 2511.19797, torch 2.11.0, 32x32 images, `lr = 0.003`, [link](fig_0.5.png), "
            "<img src=\"a0.7.png\" width=\"140\">, https://x.org/v1.5 and -0.25")
    assert measured_numbers(text) == ["0.164", "2.9x", "12.5%", "14.8", "10x", "0.25"]


def test_a_typed_number_needs_a_result_or_a_setting(tmp_path):
    book = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("lr, label_dropout = 3e-4, 0.1", outputs=[nbformat.v4.new_output(
            "stream", name="stdout", text="W2 0.16427 and ratio 2.94\n")]),
        nbformat.v4.new_markdown_cell("x")])
    path = tmp_path / "99_toy.ipynb"
    nbformat.write(book, path)
    assert unsupported(path, "W2 0.164, 2.9x, lr 3e-4, dropout 10%, 0.1 of the batch") == []
    assert unsupported(path, "W2 0.165 (typed), 0.16 (fine), 2.94x, 3x, 20%") == [
        "0.165", "3x", "20%"]
