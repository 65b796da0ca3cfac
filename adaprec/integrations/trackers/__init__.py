"""Experiment trackers: a run's rows (the run directory's tables) sent to TensorBoard, MLflow
or Weights & Biases, from the CLI (``logger=tensorboard``) or from Python::

    from adaprec.integrations.trackers import TensorBoardTracker
    tracker = TensorBoardTracker("runs/tb")
    ...
    record = ap.step(optimizer)
    tracker.log_record(record, ap.pop_decisions())
    tracker.close()

Each tracker imports its library when it is made, so this package imports none of them.
"""
from adaprec.integrations.trackers.base import Tracker, Trackers, layer_rows, step_row
from adaprec.integrations.trackers.mlflow import MLflowTracker
from adaprec.integrations.trackers.tensorboard import TensorBoardTracker
from adaprec.integrations.trackers.wandb import WandbTracker

__all__ = ["Tracker", "Trackers", "TensorBoardTracker", "MLflowTracker", "WandbTracker",
           "step_row", "layer_rows"]
