"""Network weights between runs: from a checkpoint into a new network (a CMT student from its
teacher, a TVM student from mid-training), and committed weight files checked by sha256."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from tvmlib.core.ema import EMA
from tvmlib.training.checkpoint import read_checkpoint
from tvmlib.utils.paths import repo_root


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the network it is loaded into."""


def extract_state_dict(source: str | Path | Mapping, which: str = "ema") -> dict[str, Tensor]:
    """The network weights held by ``source``: a path or a loaded training checkpoint (``which``
    "ema" takes the evaluation EMA, as CMT does, "net" the raw weights), an ``EMA.state_dict()``
    ({"decay", "module"}) or a bare state_dict."""
    if which not in ("ema", "net"):
        raise ValueError(f"which must be 'ema' or 'net', got {which!r}")
    obj = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a checkpoint dict or a state_dict, got {type(obj).__name__}")
    if {"step", "net", "ema"} <= set(obj):  # a training checkpoint
        obj = obj["ema"]["module"] if which == "ema" else obj["net"]
    elif {"decay", "module"} <= set(obj):  # EMA.state_dict()
        obj = obj["module"]
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointMismatchError(
            f"not a state_dict: entries {bad[:5]} are not tensors. Expected a training "
            "checkpoint (keys step/net/ema/opt/loss/source/rng/history), an EMA state "
            "({decay, module}) or a bare state_dict")
    return dict(obj)


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "") or "-"


def check_keys(state: Mapping, net: nn.Module, allow_missing: Sequence[str] = ()) -> list[str]:
    """Raise :class:`CheckpointMismatchError` listing missing, unexpected and mis-shaped keys of
    ``state`` for ``net``; returns the absent keys that ``allow_missing`` prefixes permit."""
    expected, prefixes = net.state_dict(), tuple(allow_missing)
    absent = [k for k in expected if k not in state]
    kept = [k for k in absent if prefixes and k.startswith(prefixes)]
    missing = [k for k in absent if k not in kept]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(expected[k].shape)}"
              for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"checkpoint does not fit {type(net).__name__}:\n"
            f"  missing keys ({len(missing)}): {_show(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_show(unexpected)}\n"
            f"  shape mismatches ({len(shapes)}): {_show(shapes)}\n"
            "Build the network with the checkpoint's architecture (same preset, num_classes, "
            "guidance), or name intentionally new parameters in allow_missing.")
    return kept


def load_weights(source: str | Path | Mapping, net: nn.Module, ema: EMA | nn.Module | None = None,
                 loss=None, which: str = "ema", allow_missing: Sequence[str] = ()) -> dict:
    """Load weights (see :func:`extract_state_dict`) into ``net`` strictly, then into its
    evaluation ``ema`` and into ``loss``'s stop-gradient target (``loss.reset_target(net)``, e.g.
    TVM's), so all three start equal. ``allow_missing`` names key prefixes that may be absent
    and keep their initial values (``("beta_embedder.",)`` for a guidance-conditioned student
    of an unguided teacher). Returns {"loaded": n, "kept_init": [...]}."""
    state = extract_state_dict(source, which)
    kept = check_keys(state, net, allow_missing)
    net.load_state_dict(state, strict=not kept)
    if ema is not None:
        (ema.module if isinstance(ema, EMA) else ema).load_state_dict(net.state_dict())
    if loss is not None:
        if not hasattr(loss, "reset_target"):
            raise TypeError(f"{type(loss).__name__} has no reset_target(net); pass loss=None")
        loss.reset_target(net)
    return {"loaded": len(state), "kept_init": kept}


# ---- committed weight files ----------------------------------------------------------------

def checkpoints_dir() -> Path:
    """``data/checkpoints``: the committed weights (classifiers, 2D and Fashion-MNIST models)."""
    return repo_root() / "data" / "checkpoints"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: Path, fix: str) -> dict:
    """The sha256 manifest at ``path`` ({} when there is none); RuntimeError naming the file
    and ending with ``fix`` when it is not a JSON mapping (truncated or corrupt)."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RuntimeError(f"{path} is truncated or corrupt (not valid JSON: {err}). {fix}"
                           ) from None
    if not isinstance(manifest, dict):
        raise RuntimeError(f"{path} is not a mapping of file names to sha256 entries. {fix}")
    return manifest


def load_verified(path: Path, manifest: dict, manifest_name: str, what: str, fix: str,
                  build: Callable[[dict], nn.Module]) -> nn.Module:
    """Check ``path`` against the sha256 that ``manifest`` records for it, then load it with
    ``build(ckpt) -> nn.Module``. Missing file or entry: FileNotFoundError; wrong hash or an
    unreadable file: RuntimeError; every message ends with ``fix`` (how to regenerate it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is missing. {fix}")
    expected = manifest.get(path.name, {}).get("sha256")
    if expected is None:
        raise FileNotFoundError(f"{path.parent / manifest_name} has no sha256 for {path.name}. "
                                f"{fix}")
    actual = sha256_file(path)
    if actual != expected:
        raise RuntimeError(f"{what} {path} is corrupt or stale: sha256 {actual} != {expected} "
                           f"recorded in {manifest_name}. {fix}")
    try:
        return build(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # any unreadable or mismatched file gets the same advice
        raise RuntimeError(f"could not load {what} {path}: {err}. {fix}") from err
