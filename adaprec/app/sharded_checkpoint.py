"""Checkpoints of an FSDP2 run: ``torch.distributed.checkpoint`` (DCP) directories.

Each rank writes its shards of the model and optimizer to ``checkpoint_dcp/step_<N>/`` (DCP's
format: reshardable, readable with ``dcp.load`` onto another number of ranks); beside them, in
the same DCP checkpoint, is adaprec's and the loop's state (plan, loss scaler, controller,
monitor, executor, scheduler, RNG, counters) as one ``uint8`` tensor holding a ``torch.save``
payload, so that it loads with ``weights_only=True`` (DCP itself unpickles non-tensor values
with ``weights_only=False``).

Kill-safety: a step's directory is complete before rank 0 atomically rewrites
``checkpoint.pt``, a small index (step, config, wall time, ``sharded``: the directory), and
only then are older step directories removed; a kill at any moment leaves an index that names
a complete checkpoint.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from adaprec.app.checkpoint import CHECKPOINT_NAME, save_checkpoint
from adaprec.runtime.distributed import broadcast_object, is_distributed, is_main_process

__all__ = ["SHARDED_DIR", "INDEX_KEYS", "save_sharded", "load_sharded", "is_sharded_checkpoint"]

SHARDED_DIR = "checkpoint_dcp"
INDEX_KEYS = ("step", "config", "wall_s")  # what checkpoint.pt keeps; the rest is in the DCP


def is_sharded_checkpoint(state: dict[str, Any] | None) -> bool:
    return state is not None and "sharded" in state


def save_sharded(run_dir: Path, state: dict[str, Any], model: nn.Module,
                 optimizer: torch.optim.Optimizer) -> Path:
    """Write ``state`` (``training_state.checkpoint_state``; its ``model``/``optimizer`` entries
    are replaced by the shards) as a DCP checkpoint; every rank calls it. Returns its directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    step = int(state["step"])
    target = Path(run_dir) / SHARDED_DIR / f"step_{step:08d}"
    rest = {k: v for k, v in state.items() if k not in ("model", "optimizer", *INDEX_KEYS)}
    payload = broadcast_object(_to_bytes(rest))  # rank 0's: every rank writes the same bytes
    if is_main_process():
        shutil.rmtree(target, ignore_errors=True)  # a half-written try from before a kill
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd,
              "adaprec": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, checkpoint_id=target)
    _barrier()
    if is_main_process():
        index = {k: state[k] for k in INDEX_KEYS}
        save_checkpoint(Path(run_dir) / CHECKPOINT_NAME,
                        {**index, "sharded": str(target.relative_to(run_dir))})
        for old in (Path(run_dir) / SHARDED_DIR).iterdir():
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return target


def load_sharded(index: dict[str, Any], checkpoint_dir: Path, model: nn.Module,
                 optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load the DCP checkpoint ``index`` names (relative to ``checkpoint_dir``) into ``model``
    and ``optimizer`` (every rank calls it); returns the full checkpoint state, as
    ``training_state.restore`` reads it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    source = Path(checkpoint_dir) / index["sharded"]
    meta = dcp.FileSystemReader(str(source)).read_metadata().state_dict_metadata
    model_sd, optim_sd = get_state_dict(model, optimizer)
    box = {"model": model_sd, "optimizer": optim_sd,
           "adaprec": torch.empty(meta["adaprec"].size, dtype=torch.uint8)}
    dcp.load(box, checkpoint_id=source)
    set_state_dict(model, optimizer, model_state_dict=box["model"], optim_state_dict=box["optimizer"])
    rest = torch.load(io.BytesIO(box["adaprec"].numpy().tobytes()), weights_only=True)
    return {**rest, **index}


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _barrier() -> None:
    if is_distributed():
        dist.barrier()
