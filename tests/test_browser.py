"""The sampling explorer (notebook 07) in a real browser: a JupyterLab server, headless Debian
Chromium driven by Playwright, the notebook run at smoke scale from the Run menu, then the image
explorer's steps slider dragged and its model selector changed; the plot and the Frechet
distance label must change each time, and no cell may fail.

Needs the ``chromium`` executable (``apt-get install chromium``; ``$TVMLIB_CHROMIUM`` names
another). Without it the test is skipped, except under CI (``CI`` set), where it fails. The
screenshot goes to ``$TVMLIB_SCREENSHOTS`` (``make browser-test`` sets ``figures/``), else
into the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "07_sampling_explorer.ipynb"
SCREENSHOT = "07_explorer_browser.png"
RUN_ALL_TIMEOUT_S = 600
CHANGE_TIMEOUT_S = 180
# nbgrader's server extensions (installed for grading) are not needed to run a notebook.
NBGRADER_SERVER = [f"nbgrader.server_extensions.{name}" for name in
                   ("assignment_list", "course_list", "formgrader", "validate_assignment")]

pytestmark = [pytest.mark.browser, pytest.mark.notebook]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a copy of notebook 07 (so the run's outputs
    never touch the committed notebook); its kernels run at smoke scale. Yields (url, token)."""
    tmp = tmp_path_factory.mktemp("lab")
    work = tmp / "notebooks"
    work.mkdir()
    book = nbformat.read(NOTEBOOK, as_version=4)
    for cell in book.cells:  # a cell counts as run once it has an execution count
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(book, work / NOTEBOOK.name)
    settings = tmp / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (no windowing), so the whole notebook is in the page.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    (tmp / "config").mkdir()
    (tmp / "config" / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {name: False for name in NBGRADER_SERVER}}}))
    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "TVMLIB_SCALE": "smoke", "TVMLIB_QUIET": "1",
           "TVMLIB_FIGURES": str(tmp / "figures"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    log = tmp / "lab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={work}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.expose_app_in_browser=True", "--allow-root"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{url}/api/status?token={token}", proc, log)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# The open notebook's code cells from JupyterLab's model: the errors in their outputs, how many
# have not run yet, and the kernel's status.
RUN_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.model.cells;
  const state = {errors: [], pending: 0, kernel: panel.sessionContext.session.kernel.status};
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== "code") continue;
    if (cell.executionCount === null) state.pending += 1;
    for (const out of cell.outputs.toJSON())
      if (out.output_type === "error") state.errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
  }
  return state;
}"""


def _image_explorer(page):
    """The image explorer: the widget box that holds the "model" selector."""
    model = page.locator(".widget-dropdown").filter(has=page.get_by_text("model", exact=True))
    return page.locator(".widget-vbox").filter(has=model).last


def _view(box) -> tuple[str, str]:
    """(image data URL, FD label text) the explorer shows now."""
    src = box.locator(".jp-OutputArea-output img").first.get_attribute("src")
    return src, box.locator(".tvmlib-explorer-status").inner_text()


def _wait_change(box, before: tuple[str, str]) -> tuple[str, str]:
    end = time.monotonic() + CHANGE_TIMEOUT_S
    while time.monotonic() < end:
        now = _view(box)
        if now[0] != before[0] and now[1] != before[1]:
            return now
        time.sleep(0.5)
    raise AssertionError(f"the explorer did not update within {CHANGE_TIMEOUT_S} s: label still "
                         f"{_view(box)[1]!r} (before: {before[1]!r})")


def test_explorer_in_chromium(browser, lab, tmp_path):
    from playwright.sync_api import expect

    url, token = lab
    shots = Path(os.environ.get("TVMLIB_SCREENSHOTS") or tmp_path)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}")
    page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext"
                           ".session?.kernel", timeout=120_000)
    # Run > Run All Cells, through the menus as a person would.
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    end = time.monotonic() + RUN_ALL_TIMEOUT_S
    while (state := page.evaluate(RUN_STATE))["pending"] or state["kernel"] != "idle":
        assert not state["errors"], "cells failed:\n" + "\n".join(state["errors"])
        assert time.monotonic() < end, f"notebook not done in {RUN_ALL_TIMEOUT_S} s: {state}"
        time.sleep(1)
    assert not state["errors"], "cells failed:\n" + "\n".join(state["errors"])

    box = _image_explorer(page)
    box.scroll_into_view_if_needed()
    expect(box.locator(".jp-OutputArea-output img")).to_have_count(1, timeout=60_000)
    start = _view(box)
    assert "CMT -> TVM, 1 jump: NFE 1, FD " in start[1], start[1]

    # Drag the steps slider's handle to the right (it updates on release).
    handle = box.locator(".widget-slider .noUi-handle").first
    track = box.locator(".widget-slider .noUi-target").first
    hb, tb = handle.bounding_box(), track.bounding_box()
    page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
    page.mouse.down()
    page.mouse.move(tb["x"] + tb["width"] * 0.1, hb["y"] + hb["height"] / 2, steps=8)
    page.mouse.up()
    stepped = _wait_change(box, start)
    readout = box.locator(".widget-slider .widget-readout").first.inner_text()
    assert int(readout) > 1 and f"NFE {int(readout)}, FD " in stepped[1], (readout, stepped)

    # Pick another model in the selector.
    box.locator(".widget-dropdown select").first.select_option(label="TVM from scratch")
    switched = _wait_change(box, stepped)
    assert switched[1].startswith("TVM from scratch, "), switched[1]

    shots.mkdir(parents=True, exist_ok=True)
    box.screenshot(path=str(shots / SCREENSHOT))
    assert (shots / SCREENSHOT).stat().st_size > 10_000
