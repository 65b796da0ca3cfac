"""What a run (and a sweep) will write to disk, estimated before it starts.

``model.pt`` is exact up to pickle overhead (the state dict's bytes); ``checkpoint.pt`` adds the
optimizer's state (SGD momentum: one copy of the weights, Adam: two); the tables are estimated
from their row counts. A 2-step smoke sweep of ResNet-18 jobs writes ~45 MB of weights per job:
``trainer.save_model=none`` is the switch.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
from omegaconf import DictConfig

__all__ = ["run_footprint", "describe", "sweep_jobs", "log_sweep_footprint"]

log = logging.getLogger("adaprec")
STEP_ROW_BYTES = 250     # one steps.csv row (a dozen numbers)
LAYER_ROW_BYTES = 120    # one layers.csv.gz row, compressed (~60 statistics)


def _optimizer_copies(cfg: DictConfig) -> int:
    target = str(cfg.optimizer.get("_target_", "")).lower()
    if "adam" in target:
        return 2  # exp_avg and exp_avg_sq
    return 1 if float(cfg.optimizer.get("momentum", 0) or 0) > 0 else 0


def run_footprint(cfg: DictConfig, model: torch.nn.Module, n_layers: int) -> dict[str, int]:
    """Estimated bytes per file of one run of ``cfg`` with ``model``."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    tc = cfg.trainer
    steps, every = int(tc.max_steps), int(cfg.monitor.every)
    out = {"model.pt": weights if str(getattr(tc.get("save_model", "final"), "value",
                                              tc.get("save_model", "final"))) != "none" else 0,
           "checkpoint.pt": weights * (1 + _optimizer_copies(cfg)) if int(tc.checkpoint_every) > 0 else 0,
           "tables": steps * STEP_ROW_BYTES + (math.ceil(steps / every) * n_layers * LAYER_ROW_BYTES
                                               if every > 0 else 0)}
    return out


def describe(sizes: dict[str, int]) -> str:
    total = sum(sizes.values())
    parts = ", ".join(f"{k} {_mb(v)}" for k, v in sizes.items() if v)
    return f"about {_mb(total)}" + (f" ({parts})" if parts else "")


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def sweep_jobs(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper will launch for ``config`` (None: another sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if not target.endswith("BasicSweeper"):
        trials = sweeper.get("n_trials")
        return int(trials) if trials is not None else None
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    latest: dict[str, int] = {}  # the command line replaces a sweep config's axis
    for o in overrides:
        latest[o.key_or_group] = len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
    return math.prod(latest.values())


def log_sweep_footprint(config: DictConfig, task: DictConfig) -> None:
    """Log what the sweep will write: jobs x one job of the base config."""
    from adaprec.app.instantiate import instantiate
    from adaprec.runtime.layers import discover_layers

    jobs = sweep_jobs(config)
    model = instantiate(task.model)
    one = run_footprint(task, model, len(discover_layers(model, list(task.monitor.get("layers") or []))))
    total = sum(one.values()) * (jobs or 1)
    log.info("sweep into %s: %s jobs, each writes %s; %s in all (trainer.save_model=none drops "
             "model.pt)", config.hydra.sweep.dir, jobs if jobs is not None else "?", describe(one),
             _mb(total) if jobs else "?")
