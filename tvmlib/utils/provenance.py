"""Provenance for every measured number: command, commit, device, versions, seed, date."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

import torch

from tvmlib.utils.atomic import atomic_write_json
from tvmlib.utils.paths import figure_path, repo_root


def git_commit() -> str:
    """The current commit (``-dirty`` if tracked files changed), ``$TVMLIB_COMMIT`` when set
    (copies of the tree without .git, e.g. a GPU machine), or "unknown"."""
    if os.environ.get("TVMLIB_COMMIT"):
        return os.environ["TVMLIB_COMMIT"]
    try:
        def run(*args: str) -> str:
            out = subprocess.run(["git", *args], cwd=repo_root(), capture_output=True,
                                 text=True, timeout=10)
            if out.returncode:
                raise OSError(out.stderr.strip())
            return out.stdout.strip()

        commit = run("rev-parse", "HEAD")
        return commit + ("-dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(command: str | None = None, seed: int | None = None, **extra) -> dict:
    """A dict to store next to results (see design.md, "Results and provenance")."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "command": command or " ".join(sys.argv),
        "commit": git_commit(),
        "device": device_name(),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "seed": seed,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def commits(prov: dict) -> list[str]:
    """The short commits of a results file's provenance, those of its merged ``parts`` too (in
    order, once each)."""
    parts = prov.get("parts") or []
    found = [str(prov.get("commit", "?"))[:10]] + [c for p in parts for c in commits(p)]
    return list(dict.fromkeys(found))


def write_results(name: str, results: dict, prov: dict) -> str:
    """Write ``figures/<name>`` as {"provenance": ..., "results": ...}; returns the path."""
    path = figure_path(name)
    atomic_write_json({"provenance": prov, "results": results}, path)
    return str(path)
