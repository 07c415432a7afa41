"""Shared test setup: real data from ../shared/data, figures into a temporary folder, quiet bars."""

import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

if "TVMLIB_DATA" not in os.environ and SHARED_DATA.exists():
    os.environ["TVMLIB_DATA"] = str(SHARED_DATA)
os.environ.setdefault("TVMLIB_QUIET", "1")
# Without a GPU the Triton kernels run in the CPU interpreter; the variable must be set before
# any test module imports triton (fp32/fp64/fp16 only: bf16 is wrong in the interpreter).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# One torch thread per pytest-xdist worker (make test runs two on two cores), else at most two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else
                      min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _figures_to_tmp(tmp_path, monkeypatch):
    """Never let a test overwrite the committed figures/."""
    monkeypatch.setenv("TVMLIB_FIGURES", str(tmp_path / "figures"))


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: tiny models gain nothing from more on a shared CPU,
    and a child process started with one thread then runs the same kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Headless Debian Chromium (tests/test_browser.py, tests/test_book.py), with flags that work on a
# closed network: no sandbox (CI runs as root), no GPU, no background fetches or updates.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium executable (``$TVMLIB_CHROMIUM``, else ``chromium`` on the PATH). Without
    one the test is skipped, except under CI (``CI`` set), where it fails."""
    exe = os.environ.get("TVMLIB_CHROMIUM") or shutil.which("chromium")
    if exe is None:
        msg = ("no chromium executable: install Debian's package (make browser, i.e. apt-get "
               "install chromium) or set TVMLIB_CHROMIUM")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    pytest.importorskip("playwright", reason="pip install playwright (requirements.txt)")
    return exe


@pytest.fixture
def browser(chromium):
    """A Playwright Chromium browser on the chromium executable (a fresh profile each time)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


# Notebooks that tests/test_browser.py runs top to bottom at smoke scale in JupyterLab, failing on
# any cell's error (what the nbval run checks): when that test runs in the same session, the
# nbval run of the notebook is skipped rather than paid for twice.
BROWSER_RUNS = {"07_sampling_explorer"}


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: only tests that will run count
def pytest_collection_modifyitems(config, items):
    in_browser = any(item.nodeid.endswith("test_browser.py::test_explorer_in_chromium")
                     for item in items)
    if not in_browser or not (os.environ.get("TVMLIB_CHROMIUM") or shutil.which("chromium")):
        return
    for item in items:
        if any(item.nodeid.endswith(f"test_notebook_runs_at_smoke_scale[{name}]")
               for name in BROWSER_RUNS):
            item.add_marker(pytest.mark.skip(
                reason="run at smoke scale in JupyterLab by tests/test_browser.py"))
