"""Notebook tests: conventions of every numbered notebook, every numbered notebook executed at
smoke scale under nbval, and a papermill run of notebook 01 whose injected parameters must take
effect.

The notebooks are found by globbing ``notebooks/[0-9]*.ipynb`` at collection time, so a new
notebook is tested without touching this file; ``notebooks/exercises/`` is not matched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9]*.ipynb"))
MAX_NOTEBOOK_BYTES = 2_000_000  # notebooks are committed with outputs: keep figures few and small

pytestmark = pytest.mark.notebook


def _ids(path: Path) -> str:
    return path.stem


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _parameters_index(book) -> int:
    tagged = [i for i, cell in enumerate(book.cells) if "parameters" in _tags(cell)]
    assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def _stream_text(book) -> str:
    return "".join(out.get("text", "") for cell in book.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def _printed_config(book) -> dict:
    """The dict a notebook prints as ``config: {json}`` in the cell after ``parameters``."""
    lines = [ln for ln in _stream_text(book).splitlines() if ln.startswith("config: ")]
    assert len(lines) == 1, f"expected one 'config: {{...}}' line, found {lines}"
    return json.loads(lines[0].removeprefix("config: "))


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks/[0-9]*.ipynb found under {NB_DIR}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=_ids)
def test_notebook_conventions(nb: Path):
    """One ``parameters`` cell; the next cell honours $TVMLIB_SCALE (so nbval runs the smoke
    scale); kernel ``python3``; stored outputs free of errors and of injected parameters."""
    book = nbformat.read(nb, as_version=4)
    i = _parameters_index(book)
    assert book.cells[i].cell_type == "code"
    assert i + 1 < len(book.cells) and "TVMLIB_SCALE" in book.cells[i + 1].source, (
        "the cell after 'parameters' must read os.environ['TVMLIB_SCALE'] (smoke runs in CI)")
    assert book.metadata.get("kernelspec", {}).get("name") == "python3"
    injected = [j for j, cell in enumerate(book.cells) if "injected-parameters" in _tags(cell)]
    assert not injected, f"a papermill 'injected-parameters' cell was committed (cell {injected})"
    errors = [j for j, cell in enumerate(book.cells) if cell.cell_type == "code"
              and any(o.get("output_type") == "error" for o in cell.get("outputs", []))]
    assert not errors, f"stored outputs contain errors in cells {errors}"
    size = nb.stat().st_size
    assert size < MAX_NOTEBOOK_BYTES, f"{nb.name} is {size / 1e6:.2f} MB with outputs"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=_ids)
def test_notebook_runs_at_smoke_scale(nb: Path, tmp_path: Path):
    """Execute the notebook under nbval (errors fail; outputs are not compared) at smoke scale."""
    env = {**os.environ, "TVMLIB_SCALE": "smoke", "TVMLIB_QUIET": "1",
           "TVMLIB_FIGURES": str(tmp_path / "figures")}
    cmd = [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
           "-p", "no:cacheprovider", nb.name]
    proc = subprocess.run(cmd, cwd=NB_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"nbval run of {nb.name} failed (exit {proc.returncode}):\n"
        + _tail(proc.stdout + proc.stderr))


def test_papermill_parameters_take_effect(tmp_path: Path, monkeypatch):
    """Injected parameters reach the config cell, the printed config and the results file."""
    papermill = pytest.importorskip("papermill")
    monkeypatch.delenv("TVMLIB_SCALE", raising=False)  # the injected scale must decide
    monkeypatch.setenv("TVMLIB_QUIET", "1")
    src = NB_DIR / "01_flow_matching_2d.ipynb"
    out = tmp_path / "01_out.ipynb"
    params = {"scale": "smoke", "seed": 123, "n_eval": 150, "datasets": ["moons"]}
    papermill.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3",
                               cwd=str(NB_DIR), progress_bar=False)

    book = nbformat.read(out, as_version=4)
    i = _parameters_index(book)
    assert "injected-parameters" in _tags(book.cells[i + 1])
    config = _printed_config(book)
    assert config["scale"] == "smoke" and config["seed"] == 123
    assert config["n_eval"] == 150 and config["datasets"] == ["moons"]
    assert config["train_steps"] == 30  # not overridden: still the smoke scale's value

    # TVMLIB_FIGURES points at tmp_path/figures (tests/conftest.py); the kernel inherits it.
    saved = json.loads((tmp_path / "figures" / "01_w2_vs_nfe.json").read_text())
    assert list(saved["results"]) == ["moons"]
    assert saved["provenance"]["seed"] == 123
    assert saved["provenance"]["config"] == config
    euler = saved["results"]["moons"]["fm_euler"]
    assert sorted(euler, key=int) == ["1", "2", "4", "8", "16", "32", "64"]


def test_papermill_run_reads_replies_in_slices():
    """The workaround of `make notebooks` (tvmlib.apps.papermill_run): a message that arrives
    after several empty slices is returned, a bounded wait still raises Empty, on real zmq
    sockets and a jupyter_client channel."""
    import asyncio
    from queue import Empty

    import zmq
    import zmq.asyncio
    from jupyter_client.channels import AsyncZMQSocketChannel
    from jupyter_client.session import Session

    from tvmlib.apps import papermill_run as pr

    async def scenario():
        ctx = zmq.asyncio.Context()
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        session = Session()
        channel = AsyncZMQSocketChannel(a, session)
        try:
            with pytest.raises(Empty):  # nothing sent: a bounded wait ends
                await pr.get_msg_in_slices(channel, timeout=0.3)

            async def send_later():
                await asyncio.sleep(3 * pr.SLICE_S)
                session.send(b, "execute_reply", {"status": "ok"})

            sender = asyncio.ensure_future(send_later())
            msg = await pr.get_msg_in_slices(channel)  # no timeout: waits over several slices
            await sender
            assert msg["msg_type"] == "execute_reply" and msg["content"] == {"status": "ok"}
        finally:
            a.close(0)
            b.close(0)
            ctx.term()

    asyncio.run(scenario())
