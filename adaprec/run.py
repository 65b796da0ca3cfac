"""CLI: ``python -m adaprec.run controller=bandit model=resnet18`` (Hydra; multirun with -m).

Thin on purpose: resolve the output dir, record the group choices, call ``train``. In a
multirun sweep a failing job is recorded (status ``failed`` in its metrics.json) and the sweep
goes on; a single run exits non-zero with a one-line error.
"""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .objective import objective_value
from .schema import register_schemas
from .train import train

log = logging.getLogger("adaprec")
register_schemas()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the objective (``cfg.objective``, for sweepers such as Optuna), else None."""
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    try:
        metrics = train(cfg, hc.runtime.output_dir, choices=choices)
    except Exception as exc:
        log.error("run failed: %s: %s", type(exc).__name__, exc)
        if hc.mode == RunMode.MULTIRUN:
            return _objective(cfg, {"status": "failed"})  # recorded; the other jobs go on
        print(f"adaprec: error: {exc}", file=sys.stderr)
        sys.exit(1)
    quality = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val_")}
    log.info("done in %.1fs: %s, shares %s -> %s", metrics["wall_s"], quality,
             metrics["format_shares"], hc.runtime.output_dir)
    return _objective(cfg, metrics)


def _objective(cfg: DictConfig, metrics: dict) -> float | None:
    obj = cfg.get("objective")
    if obj is None:
        return None
    return objective_value(metrics, obj.metric, obj.cost, float(obj.budget), float(obj.penalty))


if __name__ == "__main__":
    main()
