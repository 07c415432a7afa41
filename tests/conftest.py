"""Shared test setup: real data from ../shared/data, figures into a temporary folder, quiet bars."""

import os
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
torch.set_num_threads(min(2, torch.get_num_threads()))


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
