"""Checkpoints that survive a kill at any moment and load with ``weights_only=True``.

A checkpoint is one ``torch.save``'d dict of tensors and plain Python values (no pickled
objects), written to a temp file, fsync'ed and renamed over ``<run_dir>/checkpoint.pt``: a
SIGKILL during the write leaves the previous checkpoint intact. RNG states (torch CPU and
CUDA, Python ``random``, NumPy) are stored as tensors and lists so a resumed run draws exactly
the numbers the uninterrupted one would have drawn.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaprec.app.runlog import atomic_write

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "rng_state", "set_rng_state"]

CHECKPOINT_NAME = "checkpoint.pt"
_MAGIC = "adaprec-checkpoint"
_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (truncated, foreign, or from another version)."""


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors / plain lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temp file + fsync + rename + directory fsync). A failed
    write (disk full) keeps the previous checkpoint and raises a one-line
    :class:`~adaprec.app.runlog.RunDirWriteError`."""
    path = Path(path)
    atomic_write(path, lambda f: torch.save({"format": _MAGIC, "version": _VERSION, **state}, f),
                 "the previous checkpoint is kept")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; one-line :class:`CheckpointError`
    if the file is missing, truncated, or not an adaprec checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for torn/foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a loadable checkpoint (truncated or foreign file: "
                              f"{reason[:160]}); delete it or resume from another one") from None
    if not isinstance(state, dict) or state.get("format") != _MAGIC:
        raise CheckpointError(f"{path} is a torch file but not an adaprec checkpoint; "
                              "resume only from a run dir's checkpoint.pt")
    if state.get("version") != _VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, "
                              f"this adaprec reads version {_VERSION}")
    return state
