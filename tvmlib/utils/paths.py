"""Where the project keeps things: repository root, figures/, data folders."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # tvmlib/


def repo_root() -> Path:
    """The repository holding this package (the folder with ``pyproject.toml``), else the cwd."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").exists() else Path.cwd()


def figures_dir() -> Path:
    """``$TVMLIB_FIGURES`` if set (tests point it at a temporary folder), else ``figures/``."""
    path = Path(os.environ.get("TVMLIB_FIGURES", repo_root() / "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dirs() -> list[Path]:
    """Folders searched for data sets, in order: ``$TVMLIB_DATA``, then ``data/``."""
    dirs = []
    if os.environ.get("TVMLIB_DATA"):
        dirs.append(Path(os.environ["TVMLIB_DATA"]).expanduser())
    dirs.append(repo_root() / "data")
    return dirs
