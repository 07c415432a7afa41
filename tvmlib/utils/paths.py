"""Where the project keeps things: repository root, figures/, data folders."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tvmlib.utils.checks import plain_name


def repo_root() -> Path:
    """The repository holding this package (the folder with ``pyproject.toml``), else the cwd."""
    root = Path(__file__).resolve().parents[2]  # tvmlib/utils/paths.py -> the repository
    return root if (root / "pyproject.toml").exists() else Path.cwd()


def figures_dir() -> Path:
    """``$TVMLIB_FIGURES`` if set (tests point it at a temporary folder), else ``figures/``."""
    path = Path(os.environ.get("TVMLIB_FIGURES", repo_root() / "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def figure_path(name: str) -> Path:
    """``figures_dir() / name`` for a plain file name: a name with a path in it (``../x``)
    would write outside the figures folder, so it is refused (ConfigError)."""
    return figures_dir() / plain_name("figure name", name)


def scratch_dir() -> Path:
    """``runs/smoke``: where smoke-scale runs and figures go (``runs/`` is git-ignored)."""
    return repo_root() / "runs" / "smoke"


def use_scratch_figures(scale: str) -> Path:
    """The figures folder of a notebook run at ``scale``: at "smoke" scale
    ``runs/smoke/figures`` (set as ``$TVMLIB_FIGURES`` for the process), unless
    ``$TVMLIB_FIGURES`` already names one, so that a smoke run never overwrites the committed
    default-scale ``figures/``; otherwise :func:`figures_dir`."""
    if scale == "smoke" and not os.environ.get("TVMLIB_FIGURES"):
        os.environ["TVMLIB_FIGURES"] = str(scratch_dir() / "figures")
    return figures_dir()


def data_dirs() -> list[Path]:
    """Folders searched for data sets, in order: ``$TVMLIB_DATA``, then ``data/``."""
    env = os.environ.get("TVMLIB_DATA")
    return ([Path(env).expanduser()] if env else []) + [repo_root() / "data"]


# The folders of an absolute path (not of a URL, a relative path or a home-relative one).
_ABSOLUTE_FOLDERS = re.compile(r"(?<![\w.~/:])/(?:[^\s/'\"]+/)+")


def shown(path: str | Path) -> str:
    """``path`` as a notebook prints it: relative to the repository when inside it, else
    ``.../<name>``, so stored outputs never hold a machine's absolute paths."""
    p, root = Path(path).resolve(), repo_root().resolve()
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else f".../{p.name}"


def strip_absolute(text: str) -> str:
    """``text`` with the folders of every absolute path replaced by ``.../`` (names kept), e.g.
    a command recorded on another machine."""
    return _ABSOLUTE_FOLDERS.sub(".../", text)
