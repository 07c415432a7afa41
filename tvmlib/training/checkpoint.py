"""A training run's state on disk: everything needed to continue bit for bit (weights, EMAs,
optimizer, the loss's state such as TVM's target, the data cursor, RNG states, the log and the
log window in progress).

* Written atomically (a temporary file renamed over the old one): a run killed mid-write leaves
  the previous checkpoint.
* Read with ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers, strings,
  lists and dicts only (no project classes, so nothing needs allow-listing), and a file holding
  any other Python object is refused, so loading one cannot run code.
* Checksummed: ``sha256`` is the digest of everything else (``tvmlib.utils.digest``), and a
  reader recomputes it, so a changed byte in any tensor is refused.
* Self-describing: ``meta`` records the classes of network, loss and batch source and the
  optimisation settings; resuming with others is refused (:func:`check_resumable`).
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from tvmlib.utils.atomic import atomic_save
from tvmlib.utils.digest import state_digest
from tvmlib.utils.lock import exclusive

FORMAT = 2  # 1: no meta, no checksum, no log window


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


def run_meta(net, loss_fn, source, settings: dict | None = None) -> dict:
    """What a checkpoint must match to be resumed: the classes of network, loss and batch
    source and the optimisation ``settings`` (lists for tuples, as a checkpoint holds them)."""
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in (settings or {}).items()}
    return {"format": FORMAT, "kinds": {"net": type(net).__name__, "loss": type(loss_fn).__name__,
                                        "source": type(source).__name__}, "settings": settings}


def save_checkpoint(path, state, loss_fn, source, settings: dict | None = None) -> None:
    """Write ``state`` (a ``tvmlib.training.loop.TrainState``) with the loss's and the source's
    states, the run's ``settings`` (see :func:`run_meta`) and a checksum to ``path``."""
    body = {"step": state.step, "net": state.net.state_dict(), "ema": state.ema.state_dict(),
            "opt": state.opt.state_dict(), "loss": _state(loss_fn), "source": _state(source),
            "rng": _rng_state(), "history": state.history, "train_seconds": state.train_seconds,
            "log_window": state.log_window, "timings": state.timings,
            "meta": run_meta(state.net, loss_fn, source, settings)}
    atomic_save({**body, "sha256": state_digest(body)}, path)


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise RuntimeError(f"could not read the checkpoint {path}: {err}") from None
        what = re.search(r"GLOBAL (\S+)", str(err))
        raise RuntimeError(
            f"refused to load {path}: it holds a Python object "
            f"({what.group(1) if what else 'not a tensor or plain data'}) whose loading could "
            "run code; tvmlib checkpoints hold tensors and plain data only") from None
    except Exception as err:  # truncated or corrupt
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RuntimeError(f"could not read the checkpoint {path} (truncated or corrupt?): "
                           f"{first}") from None


def read_checkpoint(path: str | Path) -> dict:
    """The dict a checkpoint holds, its checksum verified when it has one (training
    checkpoints since format 2); FileNotFoundError or RuntimeError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = _load(path)
    if isinstance(ckpt, dict) and "sha256" in ckpt:
        recorded = ckpt.pop("sha256")
        if state_digest(ckpt) != recorded:
            raise RuntimeError(f"the checkpoint {path} is corrupt: its contents do not match the "
                               "sha256 recorded when it was written. Use an earlier copy or "
                               "train afresh (--fresh)")
    return ckpt


def check_resumable(ckpt: dict, path, meta: dict) -> None:
    """Refuse (ValueError naming each difference) to continue the run of ``ckpt`` with another
    network, loss or batch source class, or other optimisation settings: the optimizer would
    keep its old learning rate and the run would mix two runs. Checkpoints of format 1 (no
    ``meta``) are not checked."""
    old = ckpt.get("meta")
    if old is None:
        return
    diffs = [f"{k} {old['kinds'].get(k)} -> {v}" for k, v in meta["kinds"].items()
             if old["kinds"].get(k) != v]
    diffs += [f"{k} {old['settings'].get(k)!r} -> {v!r}" for k, v in meta["settings"].items()
              if k in old["settings"] and old["settings"][k] != v]
    if diffs:
        raise ValueError(f"refusing to resume {path} with other settings ({'; '.join(diffs)}): "
                         "a resumed run keeps the checkpoint's optimizer state and learning rate "
                         "and would mix two runs. Train afresh (--fresh / resume=False) or into "
                         "another folder")


def load_checkpoint(path, state, loss_fn, source, settings: dict | None = None) -> None:
    """Restore ``state``, the loss and the source from ``path`` (see :func:`save_checkpoint`)
    after checking that the run is the same (:func:`check_resumable`)."""
    ckpt = read_checkpoint(path)
    check_resumable(ckpt, path, run_meta(state.net, loss_fn, source, settings))
    if ckpt["loss"] is not None and not hasattr(loss_fn, "load_state_dict"):
        raise ValueError(f"{path} holds a loss state ({', '.join(ckpt['loss'])}) that "
                         f"{type(loss_fn).__name__} has no place for: it is another loss's run")
    state.net.load_state_dict(ckpt["net"])
    state.ema.load_state_dict(ckpt["ema"])
    state.opt.load_state_dict(ckpt["opt"])
    if ckpt["loss"] is not None:
        loss_fn.load_state_dict(ckpt["loss"])
    if ckpt["source"] is not None and hasattr(source, "load_state_dict"):
        source.load_state_dict(ckpt["source"])
    _set_rng_state(ckpt["rng"])
    state.step, state.history = ckpt["step"], ckpt["history"]
    state.train_seconds = float(ckpt.get("train_seconds", 0.0))
    state.log_window = ckpt.get("log_window", {"sums": {}, "n": 0})
    state.timings = ckpt.get("timings", {"ckpt_s": 0.0, "first_step_s": []})


@contextlib.contextmanager
def run_lock(ckpt_path: str | Path) -> Iterator[None]:
    """Hold the lock of a run training into ``ckpt_path`` (``<ckpt_path>.lock``; see
    ``tvmlib.utils.lock.exclusive``): a second process training there fails at once. Once it
    is held, temporary files of writes cut short (a run killed mid-write) are removed."""
    ckpt_path = Path(ckpt_path)
    with exclusive(f"{ckpt_path}.lock", what=f"the run folder of {ckpt_path}"):
        for stale in ckpt_path.parent.glob(f"{ckpt_path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # no other writer holds the lock
        yield
