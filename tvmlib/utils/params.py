"""A notebook's parameters, checked in the cell after the one tagged ``parameters``: papermill
(``-p seed abc``, ``-p train_steps 0``) and the environment reach the notebook as plain Python
values, so they get the command line's checks and messages (``tvmlib.utils.checks``) before any
work starts. At smoke scale the notebook's figures go to a scratch folder.
"""

from __future__ import annotations

from tvmlib.utils import checks
from tvmlib.utils.paths import use_scratch_figures

KINDS = {  # what a parameter may hold
    "count": lambda k, v: checks.integer(k, v, low=1),  # steps, sizes, sample counts
    "seed": lambda k, v: checks.integer(k, v, low=0),
    "positive": lambda k, v: checks.number(k, v, positive=True),  # learning rates, scales
    "flag": checks.flag,
    "name": checks.plain_name,  # a file name under figures/, a toy data set
    "text": lambda k, v: v if isinstance(v, str) else checks.fail(k, "must be a string", v),
    "path": lambda k, v: v if v is None or isinstance(v, str) else checks.fail(
        k, "must be a path (a string) or None", v),
    "mapping": lambda k, v: v if isinstance(v, dict) else checks.fail(k, "must be a dict", v),
}


def kind_of(default) -> str:
    """The kind a scale's default value implies: int -> count, float -> positive, ..."""
    if isinstance(default, bool):
        return "flag"
    if isinstance(default, int):
        return "count"
    if isinstance(default, float):
        return "positive"
    return "text"


def check_value(key: str, value, kind: str | list[str] | tuple):
    """``value`` checked as ``kind`` (a key of :data:`KINDS`); ``[kind]`` is a non-empty list
    of them (one value becomes a one-item list: ``-p datasets moons`` arrives as a string); a
    tuple lists the allowed values."""
    if isinstance(kind, tuple):
        return checks.choice(key, value, kind)
    if isinstance(kind, list):
        items = [value] if not isinstance(value, (list, tuple)) else list(value)
        if not items:
            checks.fail(key, "must be a non-empty list", value)
        return [check_value(f"{key}[{i}]", v, kind[0]) for i, v in enumerate(items)]
    return KINDS[kind](key, value)


def check_params(cfg: dict, defaults: dict, **kinds: str | list[str] | tuple) -> dict:
    """``cfg`` with every checked key validated: the keys of ``defaults`` (the scale's values)
    must hold what their default holds (an int >= 1, a number > 0, true/false, a string, or a
    list of those), ``seed`` an integer >= 0, and each of ``kinds`` its kind (a key of
    :data:`KINDS`, a one-item list for a list of them, or a tuple of allowed values). Other
    keys are the notebook's constants and pass unchecked."""
    wanted = {"seed": "seed", **{k: ([kind_of(v[0])] if isinstance(v, list) and v else
                                     kind_of(v)) for k, v in defaults.items()}, **kinds}
    return {k: check_value(k, v, wanted[k]) if k in wanted else v for k, v in cfg.items()}


def notebook_config(cfg: dict, defaults: dict, **kinds: str | list[str] | tuple) -> dict:
    """:func:`check_params`, then at ``cfg["scale"] == "smoke"`` figures go to a scratch folder
    unless ``$TVMLIB_FIGURES`` says where (``tvmlib.utils.paths.use_scratch_figures``)."""
    cfg = check_params(cfg, defaults, **kinds)
    use_scratch_figures(cfg.get("scale", "default"))
    return cfg
