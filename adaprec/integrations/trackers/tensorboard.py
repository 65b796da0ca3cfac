"""TensorBoard: scalars, histograms over layers, decisions and events as text (``adaprec[tensorboard]``)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from adaprec.integrations.trackers.base import Tracker

__all__ = ["TensorBoardTracker"]


class TensorBoardTracker(Tracker):
    """Write TensorBoard event files to ``log_dir`` (the CLI: ``<run dir>/tensorboard``), or
    into an open ``writer`` (a ``SummaryWriter``, e.g. Lightning's ``TensorBoardLogger.experiment``)."""

    def __init__(self, log_dir: str | Path | None = None, writer: Any = None,
                 run_dir: str | Path | None = None):
        self._owns = writer is None
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            if log_dir is None and run_dir is None:
                raise ValueError("TensorBoardTracker needs log_dir= (or writer=)")
            writer = SummaryWriter(log_dir=str(log_dir or Path(run_dir) / "tensorboard"))
        self.writer = writer

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def histogram(self, step: int, name: str, values: Sequence[float]) -> None:
        self.writer.add_histogram(name, torch.tensor(list(values), dtype=torch.float64), step)

    def text(self, step: int, name: str, text: str) -> None:
        self.writer.add_text(name, text, step)

    def params(self, flat: Mapping[str, Any]) -> None:
        self.writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in sorted(flat.items())), 0)

    def close(self) -> None:
        self.writer.flush()
        if self._owns:
            self.writer.close()
