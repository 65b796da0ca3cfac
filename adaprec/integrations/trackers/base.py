"""What every tracker shares: turning the run's table rows into scalars, histograms and text.

Rows are the run directory's (``adaprec.app.runlog``): ``steps`` (loss, loss scale, format
shares, ...), ``evals``, ``layers`` (a layer's format and statistics at a sampled step),
``decisions`` (plan changes with their reason) and ``events``. A tracker implements four
primitives — :meth:`Tracker.scalars`, :meth:`~Tracker.histogram`, :meth:`~Tracker.text`,
:meth:`~Tracker.params` — plus :meth:`~Tracker.summary` and :meth:`~Tracker.close`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from adaprec.controllers.base import StepRecord
from adaprec.numerics.formats import FORMATS

__all__ = ["Tracker", "Trackers", "step_row", "layer_rows", "flatten", "FORMAT_CODES"]

# a layer's format as a number a scalar plot can show (the legend is logged with the config)
FORMAT_CODES = {name: i for i, name in enumerate(FORMATS)}


def step_row(record: StepRecord) -> dict[str, Any]:
    """The part of a ``steps.csv`` row a :class:`StepRecord` holds."""
    shares = record.plan.shares()
    return {"step": record.step, "loss": record.loss, "loss_scale": record.loss_scale,
            "skipped": int(record.skipped), "plan_hash": record.plan.hash,
            **{f"share_{f}": shares.get(f, 0.0) for f in FORMATS},
            "culprit": record.nonfinite_layer or ""}


def layer_rows(record: StepRecord) -> list[dict[str, Any]]:
    """``layers.csv`` rows of a sampled step (empty on unsampled steps)."""
    return [s.as_row() for s in record.stats.values()] if record.stats is not None else []


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"max_steps": 3}}`` -> ``{"trainer.max_steps": 3}``."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _numbers(row: Mapping[str, Any], skip: Iterable[str] = ("step",)) -> dict[str, float]:
    skip = set(skip)
    return {k: float(v) for k, v in row.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, str)}


def decision_text(row: Mapping[str, Any]) -> str:
    return f"{row['layer']}: {row['old']} -> {row['new']} ({row['reason']})"


class Tracker:
    """Base of the trackers: ``log_rows(table, rows)`` maps rows onto the primitives.

    Names: ``train/<column>`` for steps, ``eval/<column>`` for evaluations,
    ``layers/<layer>/<stat>`` (and ``layers/<layer>/format`` as a :data:`FORMAT_CODES` code)
    for sampled statistics, a histogram ``layer_stats/<stat>`` over the layers where the
    tracker has histograms, text ``decisions`` (one line per plan change with its reason) and
    ``events``, ``final/<metric>`` for the run's final metrics.
    """

    histograms = True
    prefix = ""  # put before every name (the Lightning plugin logs under "adaprec/")

    # -- what the run sends --------------------------------------------------------------------
    def log_config(self, config: Mapping[str, Any]) -> None:
        """The resolved config (nested mappings), plus the format-code legend."""
        flat = flatten(config)
        flat["adaprec.format_codes"] = json.dumps(FORMAT_CODES)
        self.params(flat)

    def log_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if table in ("steps", "evals"):
            group = "train" if table == "steps" else "eval"
            for row in rows:
                self.scalars(int(row["step"]),
                             {f"{self.prefix}{group}/{k}": v for k, v in _numbers(row).items()})
        elif table == "layers":
            self._log_layers(rows)
        elif table in ("decisions", "events"):
            by_step: dict[int, list[str]] = {}
            for row in rows:
                line = decision_text(row) if table == "decisions" else json.dumps(dict(row), default=str)
                by_step.setdefault(int(row["step"]), []).append(line)
            for step, lines in by_step.items():
                self.text(step, self.prefix + table, "\n".join(lines))

    def log_record(self, record: StepRecord, decisions: Sequence[Mapping[str, Any]] = ()) -> None:
        """One step from your own loop: ``tracker.log_record(ap.step(opt), ap.pop_decisions())``."""
        self.log_rows("steps", [step_row(record)])
        self.log_rows("layers", layer_rows(record))
        self.log_rows("decisions", list(decisions))

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        """The run's final metrics (``metrics.json``): numbers as ``final/<key>``, all as a summary."""
        self.summary({k: v for k, v in metrics.items() if v is not None})

    def _log_layers(self, rows: Sequence[Mapping[str, Any]]) -> None:
        by_step: dict[int, list[Mapping[str, Any]]] = {}
        for row in rows:
            by_step.setdefault(int(row["step"]), []).append(row)
        for step, group in by_step.items():
            values: dict[str, float] = {}
            columns: dict[str, list[float]] = {}
            for row in group:
                layer = row["layer"]
                values[f"{self.prefix}layers/{layer}/format"] = float(FORMAT_CODES.get(row["format"], -1))
                for stat, v in _numbers(row).items():
                    values[f"{self.prefix}layers/{layer}/{stat}"] = v
                    if math.isfinite(v):
                        columns.setdefault(stat, []).append(v)
            self.scalars(step, values)
            if self.histograms:
                for stat, vs in columns.items():
                    self.histogram(step, f"{self.prefix}layer_stats/{stat}", vs)

    # -- primitives a tracker implements -------------------------------------------------------
    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        raise NotImplementedError

    def histogram(self, step: int, name: str, values: Sequence[float]) -> None:
        """A distribution (over layers); trackers without histograms keep the scalars only."""

    def text(self, step: int, name: str, text: str) -> None:
        raise NotImplementedError

    def params(self, flat: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def summary(self, metrics: Mapping[str, Any]) -> None:
        numbers = {f"{self.prefix}final/{k}": v for k, v in _numbers(metrics, skip=()).items()}
        if numbers:
            self.scalars(int(metrics.get("steps", 0) or 0), numbers)
        self.text(int(metrics.get("steps", 0) or 0), self.prefix + "metrics",
                  json.dumps(dict(metrics), sort_keys=True, default=str))

    def close(self) -> None:
        """Flush and release the tracker's files or run."""


class Trackers:
    """Several trackers fed the same rows (the CLI's ``logger`` list; empty = CSV files only)."""

    def __init__(self, trackers: Sequence[Tracker] = ()):
        self.trackers = list(trackers)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_config(config)

    def log_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        for t in self.trackers:
            t.log_rows(table, rows)

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_metrics(metrics)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
