"""The run directory's lifecycle: prepare it (refuse a finished run, resume an unfinished one
from its checkpoint, start over when there is none), then write to it — on rank 0 only.

What each file holds is ``runlog``'s docstring; the checkpoint's content is ``training_state``'s.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from adaprec.app.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from adaprec.app.loggers import make_trackers
from adaprec.app.precheck import read_status, refuse_finished
from adaprec.app.runlog import RUN_FILES, RunLog, save_atomic, truncate_tables
from adaprec.app.sharded_checkpoint import SHARDED_DIR, is_sharded_checkpoint
from adaprec.app.training_state import check_resumable
from adaprec.runtime.distributed import broadcast_object, is_main_process
from adaprec.runtime.fsdp import full_state_dict

__all__ = ["RunDir"]

log_ = logging.getLogger("adaprec")


class RunDir:
    """One run's directory as this rank sees it: rank 0 writes, the other ranks write nothing."""

    def __init__(self, path: Path, writes: bool, trackers: Any = None):
        self.path = path
        self.writes = writes
        self._log = RunLog(path, trackers=trackers) if writes else None

    @classmethod
    def open(cls, cfg: DictConfig, path: str | Path) -> tuple[RunDir, dict[str, Any] | None]:
        """Prepare ``path`` for ``cfg`` (see :func:`prepare`) and return it with the checkpoint
        to resume from (loaded and checked against ``cfg``), or None for a fresh start. Nothing
        is written before the checkpoint has been found usable."""
        path = Path(path)
        main = is_main_process()
        source = _agree_on_source(cfg, path, main)
        state = load_checkpoint(source) if source is not None else None
        if state is not None:
            check_resumable(cfg, state)
            if is_sharded_checkpoint(state):  # an FSDP run's index: its DCP directory is beside it
                state["checkpoint_dir"] = str(source if Path(source).is_dir() else Path(source).parent)
            log_.info("resuming from %s at step %d (%s)", source, state["step"],
                      "trainer.resume" if cfg.trainer.get("resume") else "run dir holds a checkpoint")
        run = cls(path, writes=main, trackers=make_trackers(cfg, path) if main else None)
        if main:
            OmegaConf.save(cfg, path / "config_resolved.yaml", resolve=True)
        return run, state

    def append(self, table: str, rows: list[dict]) -> None:
        """Append rows to ``steps``, ``evals``, ``layers``, ``decisions`` or ``events``."""
        if self._log is not None:
            getattr(self._log, table).append(rows)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write_metrics(metrics)

    def rewind(self, step: int) -> None:
        """Cut the tables back to what the checkpoint of ``step`` covers (before resuming)."""
        if self.writes:
            truncate_tables(self.path, step)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.writes:
            save_checkpoint(self.path / CHECKPOINT_NAME, state)

    def save_model(self, model: torch.nn.Module) -> None:
        """The final weights, for ``adaprec.tools.deploy``; every rank calls it (an FSDP2
        model's whole tensors are gathered from the shards, a collective)."""
        state = full_state_dict(model)
        if self.writes:
            save_atomic(state, self.path / "model.pt")


def _agree_on_source(cfg: DictConfig, out: Path, main: bool) -> Path | None:
    """Rank 0 prepares the run dir and tells every rank what to resume from (or its error)."""
    verdict: tuple[str, Any] = ("ok", None)
    if main:
        try:
            verdict = ("ok", prepare(cfg, out))
        except FileExistsError as exc:
            verdict = ("error", str(exc))
    kind, value = broadcast_object(verdict)
    if kind == "error":
        raise FileExistsError(value)
    return value


def prepare(cfg: DictConfig, out: Path) -> Path | None:
    """Decide what happens to ``out`` and return the checkpoint to resume from (or None).

    - ``trainer.overwrite=true``: every file of an earlier run is removed first.
    - a finished run (status ok or diverged): refused.
    - an unfinished run (running/failed) with a checkpoint: resumed.
    - an unfinished run without a checkpoint (killed before its first one): started over, and
      the log says so; it holds no result to lose, and a requeued job must not get stuck.
    """
    out.mkdir(parents=True, exist_ok=True)
    status = read_status(out)
    if cfg.trainer.get("overwrite", False):
        _remove_run_files(out)
        return _resume_path(cfg, out)
    refuse_finished(cfg, out)
    source = _resume_path(cfg, out)
    if source is None and (status is not None or (out / "steps.csv").exists()):
        log_.warning("%s holds an unfinished run (status %s) without a checkpoint: starting over",
                     out, status)
        _remove_run_files(out)
    return source


def _resume_path(cfg: DictConfig, out: Path) -> Path | None:
    """The checkpoint to resume from: ``trainer.resume``, else the run dir's own, else None."""
    explicit = cfg.trainer.get("resume")
    if explicit:
        return Path(explicit)
    own = out / CHECKPOINT_NAME
    return own if own.exists() and not cfg.trainer.get("overwrite", False) else None


def _remove_run_files(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / SHARDED_DIR, ignore_errors=True)
