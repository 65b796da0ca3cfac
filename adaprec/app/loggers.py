"""The ``logger`` config group: which experiment tracker, if any, gets the run's rows besides
the run directory's CSV files (``logger=csv``, the default, adds none)::

    python -m adaprec.run logger=tensorboard     # <run dir>/tensorboard
    python -m adaprec.run logger=mlflow          # <run dir>/mlflow.db, or logger.tracking_uri=...
    python -m adaprec.run logger=wandb           # offline into <run dir>/wandb; wandb sync later
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adaprec.app.instantiate import instantiate

__all__ = ["make_trackers"]


def make_trackers(cfg: DictConfig, run_dir: Path) -> Any:
    """``Trackers`` for ``cfg.logger`` with the resolved config logged, or None for ``csv``."""
    node = cfg.get("logger")
    if node is None or node.get("_target_") is None:
        return None
    from adaprec.integrations.trackers import Trackers  # each tracker imports its library lazily

    trackers = Trackers([instantiate(node, run_dir=str(run_dir))])
    trackers.log_config(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return trackers
