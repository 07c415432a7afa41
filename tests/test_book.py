"""The book (``make book``, tvmlib.apps.book): Sphinx + MyST-NB build the README and the numbered
notebooks, in order and with their stored outputs, with no warning; every internal link and
anchor resolves; nothing is loaded from the network, and the site opens from the build folder
in headless Chromium with every request outside it refused."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from tvmlib.apps import book

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    assert book.main(["--out", str(out)]) == 0, "the book build failed (see the output above)"
    return out


def test_book_has_the_readme_and_every_notebook_in_order(site):
    front = (site / "README.html").read_text()
    assert "tvmlib: one- and few-step generative models" in front
    links = [f'href="notebooks/{nb.stem}.html"' for nb in NOTEBOOKS]
    assert all(link in front for link in links)
    assert [front.index(link) for link in links] == sorted(front.index(link) for link in links)
    assert (site / "index.html").read_text().count("README.html") == 1  # redirects to it
    page = (site / "notebooks" / "01_flow_matching_2d.html").read_text()
    # the stored outputs (the committed run at default scale), not a new execution
    assert '"scale": "default"' in html.unescape(page)
    assert page.count('<img alt="_images') + page.count('src="../_images/') >= 3
    assert book.check_site(site) == []


def test_check_site_reports_broken_links_and_remote_resources(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.html").write_text(
        '<a id="top" href="sub/b.html#here">ok</a><a href="sub/b.html#nowhere">x</a>'
        '<a href="missing.html">x</a><a href="https://example.org/">external link: fine</a>'
        '<img src="data:image/png;base64,AA"><script src="https://cdn.example/x.js"></script>'
        '<link rel="stylesheet" href="style.css"><a href="#top">self</a>')
    (tmp_path / "sub" / "b.html").write_text('<p id="here"></p><a href="../a.html#top">up</a>')
    (tmp_path / "style.css").write_text("body { background: url('//cdn.example/bg.png') }")
    assert book.check_site(tmp_path) == [
        "a.html: <a> sub/b.html#nowhere: no element with id 'nowhere' in sub/b.html",
        "a.html: <a> missing.html leads to a missing file",
        "a.html: <script> loads https://cdn.example/x.js from the network",
        "style.css: a url() loads from the network"]


@pytest.mark.browser
def test_book_opens_offline_in_chromium(site, browser):
    outside: list[str] = []
    context = browser.new_context()
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
        "file://") else (outside.append(route.request.url), route.abort()))
    page = context.new_page()
    for name in ("README.html", "notebooks/02_flow_maps_and_tvm_2d.html"):
        page.goto((site / name).as_uri())
        page.wait_for_load_state("load")
        broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || "
                               "i.naturalWidth === 0).map(i => i.src)")
        assert broken == [], f"{name}: images that did not load: {broken}"
    # MathJax (from the build folder) typeset the notebook's formulas
    page.wait_for_function("document.querySelectorAll('.MathJax, .MathJax_Display').length > 20",
                           timeout=60_000)
    assert outside == [], f"the site asked the network for {outside}"
    context.close()
