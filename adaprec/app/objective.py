"""One number per run for hyperparameter search: quality at a cost budget (lower is better).

    objective = error + penalty * max(0, cost - budget) / budget

``error`` is the run's quality metric turned into lower-is-better (``1 - metric`` for a task
quality where higher is better, such as ``val_accuracy``; ``val_rmse``, ``val_perplexity`` and
``val_loss`` as they are; see :mod:`adaprec.tasks`), ``cost`` a metrics.json field
such as ``rel_cost_h100`` (modeled cost relative to all-fp32) or ``format_shares.fp32``. Runs
within the budget compete on quality alone; over it, the penalty dominates.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from adaprec.tasks import higher_is_better

__all__ = ["objective_value", "metric_value"]


def metric_value(metrics: Mapping[str, Any], key: str) -> float:
    """``metrics[key]``, where a dotted key reaches into a nested dict (``format_shares.fp32``;
    a format absent from the shares counts 0)."""
    head, _, rest = key.partition(".")
    if head not in metrics:
        raise KeyError(f"metrics.json has no {head!r} (has: {', '.join(sorted(metrics))}); "
                       f"set objective.metric / objective.cost to one of those")
    value = metrics[head]
    if rest:
        value = value.get(rest, 0.0)
    return float(value)


def objective_value(metrics: Mapping[str, Any], metric: str, cost: str, budget: float,
                    penalty: float = 10.0) -> float:
    """The objective above; NaN for a run that did not finish (Optuna records it as failed)."""
    if metrics.get("status") != "ok":
        return math.nan
    if budget <= 0:
        raise ValueError(f"objective.budget must be > 0, got {budget}")
    quality = metric_value(metrics, metric)
    error = 1.0 - quality if higher_is_better(metric) else quality
    over = max(0.0, metric_value(metrics, cost) - budget) / budget
    return error + penalty * over
