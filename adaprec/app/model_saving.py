"""``trainer.save_model``: which weights ``model.pt`` holds -- ``final`` (after the last step,
the default), ``best`` (at the best evaluation so far by the task's quality metric, rewritten
each time it improves) or ``none`` (sweeps that only need the tables: a ResNet-18 is 45 MB)."""
from __future__ import annotations

import logging
import math
from typing import Any

import torch

from adaprec.app.rundir import RunDir

__all__ = ["ModelSaver"]

log = logging.getLogger("adaprec")


class ModelSaver:
    """Writes ``model.pt`` per ``mode``; its ``best`` so far travels in the checkpoint."""

    def __init__(self, mode: str, run: RunDir, metric: str, higher_is_better: bool):
        if mode not in ("final", "best", "none"):
            raise ValueError(f"trainer.save_model={mode!r}; allowed: final, best, none")
        self.mode, self.run, self.metric, self.higher = mode, run, metric, higher_is_better
        self.best: float | None = None
        self.best_step: int | None = None

    def evaluated(self, model: torch.nn.Module, step: int, evals: dict[str, float]) -> None:
        """After an evaluation at ``step`` (steps done): save if it is the best so far."""
        value = evals.get(self.metric)
        if self.mode != "best" or value is None or math.isnan(value):
            return
        if self.best is None or (value > self.best if self.higher else value < self.best):
            self.best, self.best_step = float(value), int(step)
            self.run.save_model(model)
            log.info("model.pt: best %s %.4g at step %d", self.metric, value, step)

    def finished(self, model: torch.nn.Module) -> dict[str, Any]:
        """At the end of a run; returns what ``metrics.json`` says about ``model.pt``."""
        if self.mode == "final":
            self.run.save_model(model)
        out: dict[str, Any] = {"save_model": self.mode}
        if self.mode == "best":
            out.update(best_step=self.best_step, **{f"best_{self.metric}": self.best})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.best, self.best_step = state.get("best"), state.get("best_step")
