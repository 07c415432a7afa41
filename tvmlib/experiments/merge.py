"""Joining the results files of one experiment made in separate calls (``python -m
tvmlib.apps.experiment --merge``): runs added or replaced, every call's provenance kept."""

from __future__ import annotations

import json


def _parts(prov: dict) -> list[dict]:
    """The provenance of each call behind a results document: its parts if it was merged."""
    return [p for part in prov["parts"] for p in _parts(part)] if "parts" in prov else [prov]


def merge_results(docs: list[dict], note: str | None = None) -> dict:
    """One results document from several parts of one experiment (e.g. runs made in parallel
    with ``--only``): later parts add or replace runs, and the experiment's config is the last
    part's (the newest, listing every run). The provenance keeps every call once, in order, with
    the parts of an already merged document flattened; its ``note`` is ``note`` (a merged
    input's note is kept in its own parts, not carried to the top)."""
    if not docs:
        raise ValueError("merge_results needs at least one document")
    out = json.loads(json.dumps(docs[0]))
    names = {d["results"]["experiment"] for d in docs}
    if len(names) > 1:
        raise ValueError(f"cannot merge results of different experiments: {sorted(names)}")
    for d in docs[1:]:
        out["results"]["runs"].update(json.loads(json.dumps(d["results"]["runs"])))
        out["results"]["wall_s"] += d["results"].get("wall_s", 0.0)
    out["results"]["config"] = json.loads(json.dumps(docs[-1]["results"]["config"]))
    parts = [p for d in docs for p in _parts(d["provenance"])]
    top = {k: v for k, v in parts[0].items() if k not in ("parts", "note")}
    out["provenance"] = {**top, "parts": parts, **({"note": note} if note else {})}
    return out
