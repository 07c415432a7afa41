"""Stored notebook outputs are fit to publish: no absolute paths of the machine that ran them, and
no committed image read back and embedded a second time (show a figure once: inline when it is
made, or a Markdown link to the committed file)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
# Absolute paths of a machine (not a URL: no letter, digit, dot or slash right before them).
ABSOLUTE = re.compile(r"(?<![\w./:])/(?:work|home|root|tmp|Users|mnt|private|var/folders)/\S*")
# Reading an image file back into a figure or a display object re-embeds it in the notebook.
REEMBED = re.compile(r"imread\(|Image\(\s*(?:filename\s*=\s*)?[^)]*\.(?:png|jpe?g)")


def output_texts(book) -> list[tuple[int, str]]:
    """(cell index, text) for every text part of every stored output."""
    found = []
    for i, cell in enumerate(book.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts = [out.get("text", ""), "\n".join(out.get("traceback", []))]
            parts += [v if isinstance(v, str) else "".join(v)
                      for k, v in out.get("data", {}).items() if k.startswith("text/")]
            found += [(i, p) for p in parts if p]
    return found


def test_the_patterns():
    assert ABSOLUTE.findall("wrote /tmp/nbrun/figures/x.json; --out /root/out/a.json") == [
        "/tmp/nbrun/figures/x.json;", "/root/out/a.json"]
    assert not ABSOLUTE.findall("../figures/x.json, figures/tmp/x, https://github.com/home/x")
    assert REEMBED.search('ax.imshow(mpimg.imread(path))')
    assert REEMBED.search('display(Image(filename="../figures/05_x.png"))')
    assert not REEMBED.search("display(Image(figure_jpeg(fig, dpi=100)))")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_absolute_paths_in_outputs(nb: Path):
    book = nbformat.read(nb, as_version=4)
    leaks = [f"cell {i}: {m}" for i, text in output_texts(book) for m in ABSOLUTE.findall(text)]
    assert not leaks, f"{nb.name} stores absolute paths in its outputs:\n" + "\n".join(leaks)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_committed_image_embedded_again(nb: Path):
    book = nbformat.read(nb, as_version=4)
    cells = [i for i, c in enumerate(book.cells)
             if c.cell_type == "code" and REEMBED.search(c.source)]
    assert not cells, (f"{nb.name} reads image files back into its outputs (cells {cells}); link "
                       "the committed file from Markdown instead")
