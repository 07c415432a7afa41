"""A training run's state on disk: everything needed to continue bit for bit (weights, EMAs,
optimizer, the loss's state such as TVM's target, the data cursor, RNG states, the log).

Files are written atomically and read with ``torch.load(weights_only=True)``: a checkpoint holds
tensors, numbers, strings, lists and dicts only, so loading one cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tvmlib.utils.atomic import atomic_save


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state(obj):
    return obj.state_dict() if hasattr(obj, "state_dict") else None


def save_checkpoint(path, state, loss_fn, source) -> None:
    """Write ``state`` (a ``tvmlib.training.loop.TrainState``) with the loss's and the source's
    states to ``path``."""
    atomic_save({"step": state.step, "net": state.net.state_dict(), "ema": state.ema.state_dict(),
                 "opt": state.opt.state_dict(), "loss": _state(loss_fn),
                 "source": _state(source), "rng": _rng_state(), "history": state.history,
                 "train_seconds": state.train_seconds}, path)


def read_checkpoint(path: str | Path) -> dict:
    """The dict a checkpoint holds; FileNotFoundError or RuntimeError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or holding objects other than plain data
        raise RuntimeError(f"could not read the checkpoint {path}: {err}") from err


def load_checkpoint(path, state, loss_fn, source) -> None:
    """Restore ``state``, the loss and the source from ``path`` (see :func:`save_checkpoint`)."""
    ckpt = read_checkpoint(path)
    state.net.load_state_dict(ckpt["net"])
    state.ema.load_state_dict(ckpt["ema"])
    state.opt.load_state_dict(ckpt["opt"])
    if ckpt["loss"] is not None and hasattr(loss_fn, "load_state_dict"):
        loss_fn.load_state_dict(ckpt["loss"])
    if ckpt["source"] is not None and hasattr(source, "load_state_dict"):
        source.load_state_dict(ckpt["source"])
    _set_rng_state(ckpt["rng"])
    state.step, state.history = ckpt["step"], ckpt["history"]
    state.train_seconds = float(ckpt.get("train_seconds", 0.0))
