"""Formatting shared by the README's results tables (``tvmlib.apps.readme``): loading a
results file, numbers, markdown tables, the source line naming file, device and commits."""

from __future__ import annotations

import json

from tvmlib.training.config import load_experiment
from tvmlib.utils.paths import repo_root
from tvmlib.utils.provenance import commits


class Missing(Exception):
    """A results file a table needs is not there; the message says how to make it."""


def load(name: str) -> dict | None:
    path = repo_root() / "figures" / name
    return json.loads(path.read_text()) if path.exists() else None


def need(name: str, how: str) -> dict:
    d = load(name)
    if d is None:
        raise Missing(f"*`figures/{name}` is missing: {how}.*")
    return d


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def source(name: str, prov: dict) -> str:
    shas = ", ".join(f"`{c}`" for c in commits(prov))
    return (f"*From `figures/{name}` ({prov.get('device', '?')}, torch {prov.get('torch', '?')}, "
            f"commit{'s' if ',' in shas else ''} {shas}).*")


def pm(mean: float | None, sd: float, n: int) -> str:
    """"m +- sd" over n seeds, the value alone for one."""
    return fmt(mean) if n < 2 or mean is None else f"{fmt(mean)} ± {fmt(sd, 2)}"


def optional(name: str, render) -> str:
    """``render(runs, source line, document)`` of ``figures/<name>``; "" without the file."""
    d = load(name)
    return "" if d is None else render(d["results"]["runs"], source(name, d["provenance"]), d)


def targets(targets: list[dict]) -> list[list]:
    """[target, value, bound, runs, hit or miss] rows of targets (mean +- sd over seeds)."""
    return [[t["target"], "never" if t["value"] is None else
             pm(t["value"], t["value_sd"], t["seeds"][0]),
             pm(t["bound"], t["bound_sd"], t["seeds"][1]), " vs ".join(t["runs"]),
             "hit" if t["hit"] else "miss"] for t in targets]


def sampler(row: dict) -> str:
    """A sweep row: "euler, 8 steps, guidance 1.0: FD 12.3 at 8 NFE"."""
    return (f"{row['solver']}, {row['steps']} step{'s' * (row['steps'] > 1)}, guidance "
            f"{row['cfg_scale']}: FD {fmt(row['fd'])} at {row['nfe']} NFE")


def not_made(config: str, runs: dict) -> str:
    """A clause naming the runs of ``configs/experiments/<config>.yaml`` that ``runs`` has no
    record of."""
    path = repo_root() / "configs" / "experiments" / f"{config}.yaml"
    missing = [r.name for r in load_experiment(path)[1] if r.name not in runs]
    return ("not made yet: " + ", ".join(missing)) if missing else "every run of the config made"
