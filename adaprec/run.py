"""CLI: ``python -m adaprec.run controller=bandit model=resnet18`` (Hydra; multirun with -m).

Thin on purpose: resolve the output dir, record the group choices, call ``train``. In a
multirun sweep a failing job is recorded (status ``failed`` in its metrics.json) and the sweep
goes on; a single run exits non-zero with a one-line error: a bad config (unknown key, wrong
type, value out of range, unknown group option), a failure, or a diverged run.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from adaprec.runtime.distributed import maybe_init_from_env
from adaprec.app.objective import objective_value
from adaprec.app.runlog import write_json_atomic
from adaprec.app.schema import describe_key, register_schemas
from adaprec.app.train import train
from adaprec.cost import conf_dir

log = logging.getLogger("adaprec")
register_schemas()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the objective (``cfg.objective``, for sweepers such as Optuna), else None."""
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    try:
        maybe_init_from_env(str(getattr(cfg.device, "value", cfg.device)))  # under torchrun
        metrics = train(cfg, hc.runtime.output_dir, choices=choices)
    except Exception as exc:
        log.error("run failed: %s: %s", type(exc).__name__, exc)
        if hc.mode == RunMode.MULTIRUN:
            _record_failure(Path(hc.runtime.output_dir), exc, choices, cfg)
            return _objective(cfg, {"status": "failed"})  # recorded; the other jobs go on
        print(f"adaprec: error: {exc}", file=sys.stderr)
        sys.exit(1)
    if metrics["status"] != "ok":  # diverged: recorded, and a single run says so and fails
        if hc.mode != RunMode.MULTIRUN:
            print(f"adaprec: error: {metrics['error']}", file=sys.stderr)
            sys.exit(1)
        return _objective(cfg, metrics)  # NaN: a sweeper records the trial as failed
    quality = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val_")}
    log.info("done in %.1fs: %s, shares %s -> %s", metrics["wall_s"], quality,
             metrics["format_shares"], hc.runtime.output_dir)
    return _objective(cfg, metrics)


def _record_failure(out: Path, exc: Exception, choices: dict, cfg: DictConfig) -> None:
    """A sweep job that failed before ``train`` wrote anything (a config value out of range)
    still leaves a metrics.json with status ``failed``, so the failure is visible."""
    path = out / "metrics.json"
    if path.exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                             "choices": choices, "seed": cfg.get("seed")})


def _objective(cfg: DictConfig, metrics: dict) -> float | None:
    obj = cfg.get("objective")
    if obj is None:
        return None
    return objective_value(metrics, obj.metric, obj.cost, float(obj.budget), float(obj.penalty))


def one_line(exc: BaseException) -> str:
    """A composition error as one line: the key, what went wrong, and what is allowed."""
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    key = getattr(cause, "full_key", None) if isinstance(cause, OmegaConfBaseException) else None
    if key:
        msg = str(getattr(cause, "msg", cause)).splitlines()[0]
        hint = describe_key(key)
        node = getattr(cause, "object_type", None)
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):  # unknown key: list the keys the node knows
            hint = ("known keys: " + ", ".join(f.name for f in dataclasses.fields(node)
                                               if not f.name.startswith("_"))
                    if dataclasses.is_dataclass(node) else None)
        elif "expected one of" in msg:  # OmegaConf already listed an Enum's members
            hint = None
        return f"{key}: {msg}" + (f" ({hint})" if hint else "")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Config search path", "provider="))]
    return "; ".join(lines)


def cli() -> None:
    """``main`` with Hydra's multi-line composition errors folded into one line (exit 1).
    ``HYDRA_FULL_ERROR=1`` keeps Hydra's own full report."""
    if os.environ.get("HYDRA_FULL_ERROR"):
        return main()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us instead of printing
    try:
        main()
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"adaprec: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
