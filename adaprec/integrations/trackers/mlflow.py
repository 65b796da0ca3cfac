"""MLflow: metrics per step, the config as params, decisions and events as text artifacts
(``adaprec[mlflow]``). MLflow has no histograms: the per-layer scalars carry the statistics."""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adaprec.integrations.trackers.base import Tracker

__all__ = ["MLflowTracker"]

_BATCH = 1000        # MLflow's limit of metrics per log_batch call
_PARAM_BATCH = 100   # ... and of params
_PARAM_LEN = 6000    # longest param value MLflow stores


class MLflowTracker(Tracker):
    """Log into a new MLflow run of ``experiment`` at ``tracking_uri`` (None: MLflow's default,
    e.g. ``MLFLOW_TRACKING_URI``; ``run_dir`` without a URI: a local SQLite store
    ``<run dir>/mlflow.db``, since MLflow 3 keeps its ``./mlruns`` file store in maintenance
    mode), or into an existing run (``client`` + ``run_id``, e.g. Lightning's ``MLFlowLogger``)."""

    histograms = False

    def __init__(self, tracking_uri: str | None = None, experiment: str = "adaprec",
                 run_name: str | None = None, client: Any = None, run_id: str | None = None,
                 run_dir: str | Path | None = None):
        from mlflow.tracking import MlflowClient

        if tracking_uri is None and run_dir is not None and client is None:
            tracking_uri = f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"
        self.client = client if client is not None else MlflowClient(tracking_uri)
        self._owns = run_id is None
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            # artifacts (decision texts) beside the store, not in the working directory
            where = (Path(run_dir).resolve() / "mlartifacts").as_uri() if run_dir is not None else None
            exp_id = (found.experiment_id if found
                      else self.client.create_experiment(experiment, artifact_location=where))
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.run_id = run_id

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow stores NaN but not +-inf (an overflowing statistic): those go in as NaN
        metrics = [Metric(k, v if math.isfinite(v) or math.isnan(v) else float("nan"), now, step)
                   for k, v in values.items()]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + _BATCH])

    def text(self, step: int, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{name}/step_{step:06d}.txt")

    def params(self, flat: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:_PARAM_LEN]) for k, v in flat.items()]
        for i in range(0, len(params), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + _PARAM_BATCH])

    def close(self) -> None:
        if self._owns:
            self.client.set_terminated(self.run_id)
