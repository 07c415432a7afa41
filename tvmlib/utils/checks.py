"""Value checks shared by the run configs, the command lines and the notebooks' parameters, so
that each bad value gets the same one-line message wherever it comes from:
``train.steps must be >= 1, got -3``, ``seed must be an integer, got 'abc'``.

Each check returns the value (a number converted where YAML left a string such as ``1e-4``)
or raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a file or folder name, no path


class ConfigError(ValueError):
    """A config key or parameter is unknown or has a bad value; the message names the key."""


def fail(key: str, why: str, value) -> None:
    raise ConfigError(f"{key} {why}, got {value!r}")


def integer(key: str, value, low: int | None = None) -> int:
    """An int (not a bool), at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        fail(key, "must be an integer", value)
    if low is not None and value < low:
        fail(key, f"must be >= {low}", value)
    return value


def number(key: str, value, low: float | None = None, high: float | None = None,
           positive: bool = False, below_high: bool = False) -> float:
    """A finite int or float (or a string YAML 1.1 did not read as one, such as ``1e-4``),
    ``> 0`` with ``positive``, within [low, high] (``high`` excluded with ``below_high``)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            fail(key, "must be a number", value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(key, "must be a finite number", value)
    if positive and not value > 0:
        fail(key, "must be > 0", value)
    if low is not None and value < low:
        fail(key, f"must be >= {low}", value)
    if high is not None and (value >= high if below_high else value > high):
        fail(key, f"must be {'<' if below_high else '<='} {high}", value)
    return value


def flag(key: str, value) -> bool:
    """True or false, nothing that merely looks like one ("maybe", 1, "yes")."""
    if not isinstance(value, bool):
        fail(key, "must be true or false", value)
    return value


def choice(key: str, value, allowed: Collection) -> object:
    if value not in allowed:
        fail(key, f"must be one of {', '.join(map(str, allowed))}", value)
    return value


def plain_name(key: str, value) -> str:
    """A file or folder name without a path (no ``/``, no ``..``): names that become paths
    (``runs/<name>``, ``figures/<prefix>_*``) must stay inside their folder."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value):
        fail(key, "must be a plain name (letters, digits, _ . + -; no / or ..)", value)
    return value
