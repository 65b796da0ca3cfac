"""``metrics.json``, the run's summary: written with status ``running`` when the run starts and
rewritten once with its outcome — ``ok`` or ``diverged`` with the final metrics, or ``failed``
with the error — and the wall time (an interrupted run's time included after a resume), the
process CPU time (``cpu_s``: this process's) and where it ran (``environment``)."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from adaprec.app.rundir import RunDir
from adaprec.app.training_state import Progress
from adaprec.runtime.plan import Plan

__all__ = ["Summary", "result", "diverged"]


class Summary:
    """The content of ``metrics.json`` and the run's wall clock."""

    def __init__(self, run: RunDir, seed: int, choices: dict[str, str] | None,
                 state: dict[str, Any] | None, environment: dict[str, Any] | None = None):
        """``environment``: where the run runs (:func:`adaprec.app.environment.run_environment`)."""
        self._run = run
        self.metrics: dict[str, Any] = {"status": "running", "error": None,
                                        "choices": dict(choices or {}), "seed": seed}
        if environment is not None:
            self.metrics["environment"] = environment
        if state is not None:
            self.metrics["resumed_from"] = int(state["step"])
        self._wall_before = float(state["wall_s"]) if state is not None else 0.0
        run.write_metrics(self.metrics)
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def wall_s(self) -> float:
        """Seconds this run has trained so far, across resumptions."""
        return self._wall_before + time.perf_counter() - self._t0

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record an exception as ``status: failed`` (and re-raise it); always write the file."""
        try:
            yield
        except BaseException as exc:
            self.metrics.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.metrics["wall_s"] = self.wall_s()
            self.metrics["cpu_s"] = time.process_time() - self._c0  # this process's (since a resume)
            self._run.write_metrics(self.metrics)

    def finish(self, outcome: dict[str, Any]) -> None:
        """The loop's outcome (status ``ok`` unless it says otherwise)."""
        self.metrics.update({"status": "ok", **outcome})


def result(steps: int, progress: Progress, plan: Plan, train_loss: float) -> dict[str, Any]:
    """The final metrics every finished run reports; ``plan`` is the one the last executed step
    ran (``final_plan``, ``format_shares``), not one decided after it. ``final_plan`` lists the
    layers; its default (the model's root and unlisted code) and region complete the plan that
    ``final_plan_hash`` (``steps.csv``'s ``plan_hash``) names."""
    return {"steps": steps, "skipped_steps": progress.skipped, "plan_changes": progress.plan_changes,
            "final_plan": dict(plan), "final_plan_default": plan.default,
            "final_plan_region": plan.region, "final_plan_hash": plan.hash,
            "format_shares": plan.shares(), "train_loss_last": train_loss,
            **progress.last_eval}


def diverged(step: int, progress: Progress, plan: Plan, train_loss: float,
             layer: str | None) -> dict[str, Any]:
    """The outcome of a run stopped at ``step`` after ``max_consecutive_skips`` non-finite steps."""
    layer = layer or "unknown"
    msg = (f"diverged: {progress.consecutive_skips} consecutive non-finite steps ending at "
           f"step {step}; culprit layer: {layer}")
    return {**result(step + 1, progress, plan, train_loss), "status": "diverged", "error": msg,
            "culprit": layer}
