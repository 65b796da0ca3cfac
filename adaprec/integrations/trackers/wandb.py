"""Weights & Biases: history per step, histograms over layers, decisions and events as tables,
the config and final metrics in the run's config and summary (``adaprec[wandb]``)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adaprec.integrations.trackers.base import Tracker

__all__ = ["WandbTracker"]


class WandbTracker(Tracker):
    """Log into a new W&B run (``mode="offline"`` by default: nothing leaves the machine until
    ``wandb sync``), or into an open ``run`` (e.g. Lightning's ``WandbLogger.experiment``)."""

    def __init__(self, project: str = "adaprec", name: str | None = None, mode: str = "offline",
                 dir: str | Path | None = None, run: Any = None, run_dir: str | Path | None = None,
                 **init_kwargs: Any):
        import wandb

        self._wandb = wandb
        self._owns = run is None
        if run is None:
            dir = dir or run_dir
            init_kwargs.setdefault("settings", wandb.Settings(silent=True))  # no console banner per run
            run = wandb.init(project=project, name=name, mode=mode,
                             dir=str(dir) if dir is not None else None, **init_kwargs)
        self.run = run

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def histogram(self, step: int, name: str, values: Sequence[float]) -> None:
        self.run.log({name: self._wandb.Histogram(list(values))}, step=step)

    def text(self, step: int, name: str, text: str) -> None:
        table = self._wandb.Table(columns=["step", "text"], data=[[step, line] for line in text.split("\n")])
        self.run.log({name: table}, step=step)

    def params(self, flat: Mapping[str, Any]) -> None:
        self.run.config.update(dict(flat), allow_val_change=True)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        super().summary(metrics)
        self.run.summary.update({f"final/{k}": v for k, v in metrics.items()
                                 if isinstance(v, (int, float, str))})

    def close(self) -> None:
        if self._owns:
            self.run.finish()
