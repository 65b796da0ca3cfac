"""CLI: ``python -m adaprec.run controller=bandit model=resnet18`` (Hydra; multirun with -m).

Thin on purpose: resolve the output dir, record the group choices, call ``train``. In a
multirun sweep a failing job is recorded (status ``failed`` in its metrics.json) and the sweep
goes on; a single run exits non-zero with a one-line error: a bad config (unknown key, wrong
type, value out of range, unknown group option), a failure, or a diverged run. A preempted
run (SIGTERM or SIGUSR1) checkpoints at the next step boundary and exits for requeue
(``adaprec.app.preemption``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import typing
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from adaprec.runtime.distributed import is_main_process, maybe_init_from_env
from adaprec.runtime.ranges import ranges_of
from adaprec.app import preemption
from adaprec.app.closing import closing_summary
from adaprec.app.objective import objective_value
from adaprec.app.precheck import RunDirRefused, check_before_write
from adaprec.app.rundir_lock import RunDirBusy, RunDirLock
from adaprec.app.runlog import atomic_write, write_json_atomic
from adaprec.app.schema import _type_text as type_text, describe_key, register_schemas
from adaprec.app.train import train
from adaprec.cost import conf_dir

log = logging.getLogger("adaprec")
register_schemas()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the objective (``cfg.objective``, for sweepers such as Optuna), else None."""
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    out = Path(hc.runtime.output_dir)
    try:
        maybe_init_from_env(str(getattr(cfg.device, "value", cfg.device)))  # under torchrun
        check_before_write(cfg, out)  # again: a multirun job's config exists only here
        with RunDirLock(out) if is_main_process() else nullcontext(), preemption.watch():
            if is_main_process():
                _save_hydra_files(out, cfg)
            metrics = train(cfg, out, choices=choices)
    except (RunDirRefused, RunDirBusy) as exc:  # not ours to touch: no file in it changes
        print(f"adaprec: error: {exc}", file=sys.stderr)
        if hc.mode == RunMode.MULTIRUN:
            return _objective(cfg, {"status": "failed"})
        sys.exit(1)
    except Exception as exc:
        if hc.mode == RunMode.MULTIRUN:
            log.error("run failed: %s: %s", type(exc).__name__, exc)
            _record_failure(out, exc, choices, cfg)
            return _objective(cfg, {"status": "failed"})  # recorded; the other jobs go on
        print(f"adaprec: error: {exc}", file=sys.stderr)  # once: metrics.json has it too
        sys.exit(1)
    if metrics["status"] == "preempted":  # checkpointed: hand over to the launcher to requeue
        print(f"adaprec: {metrics['error']}", file=sys.stderr)
        preemption.requeue()
    if metrics["status"] != "ok":  # diverged: recorded, and a single run says so and fails
        if hc.mode != RunMode.MULTIRUN:
            print(f"adaprec: error: {metrics['error']}", file=sys.stderr)
            sys.exit(1)
        return _objective(cfg, metrics)  # NaN: a sweeper records the trial as failed
    quality = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val_")}
    log.info("done in %.1fs: %s, shares %s -> %s", metrics["wall_s"], quality,
             metrics["format_shares"], hc.runtime.output_dir)
    if hc.mode != RunMode.MULTIRUN and is_main_process():  # a newcomer's first run ends here
        print(closing_summary(metrics, out, cfg.dataset.get("task"), list(hc.overrides.task)), flush=True)
    return _objective(cfg, metrics)


def _save_hydra_files(out: Path, cfg: DictConfig) -> None:
    """What Hydra writes to ``.hydra/`` (``hydra.output_subdir`` is null so that Hydra writes
    nothing before the checks): the task config, Hydra's config, the overrides."""
    hydra_cfg = HydraConfig.instance().cfg  # the hydra node alone
    folder = out / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", hydra_cfg),
                       ("overrides.yaml", hydra_cfg.hydra.overrides.task)):
        text = OmegaConf.to_yaml(node)
        atomic_write(folder / name, lambda f, t=text: f.write(t.encode()))


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
    if isinstance(exc, MissingConfigException) and exc.options and exc.missing_cfg_file:
        first = str(exc).splitlines()[0]  # In 'config': Could not find 'controller/nope'
        group = exc.missing_cfg_file.rpartition("/")[0]
        options = [o for o in exc.options if "schema" not in o]  # typed schemas, not choices
        return f"{first}; available options in '{group}': {', '.join(options)}"
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    key = getattr(cause, "full_key", None) if isinstance(cause, OmegaConfBaseException) else None
    if key:
        msg = str(getattr(cause, "msg", cause)).splitlines()[0]
        node = getattr(cause, "object_type", None)
        hint = describe_key(key)
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):  # unknown key: list the keys the node knows
            hint = ("known keys: " + ", ".join(f.name for f in dataclasses.fields(node)
                                               if not f.name.startswith("_"))
                    if dataclasses.is_dataclass(node) else None)
        elif "expected one of" in msg:  # OmegaConf already listed an Enum's members
            hint = None
        elif hint is None or hint.startswith("known keys"):  # a group option's own schema
            hint = _field_hint(node, key.rpartition(".")[2])
        return f"{key}: {msg}" + (f" ({hint})" if hint else "")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Config search path", "provider="))]
    return "; ".join(lines)


def _field_hint(schema: Any, name: str) -> str | None:
    """What field ``name`` of a group schema accepts: its type and its range rule."""
    if not dataclasses.is_dataclass(schema):
        return None
    field = next((f for f in dataclasses.fields(schema) if f.name == name), None)
    if field is None:
        return None
    rule = field.metadata.get("rule") or _class_rule(schema, name)
    kind = typing.get_type_hints(schema)[name]
    return f"expected {type_text(kind)}" + (f" {rule.allowed}" if rule else "")


def _class_rule(schema: Any, name: str) -> Any:
    """The range rule the schema's ``_target_`` class declares for ``name`` (or None)."""
    target = next((f.default for f in dataclasses.fields(schema) if f.name == "_target_"), None)
    try:
        return ranges_of(get_object(str(target))).get(name) if target else None
    except Exception:  # noqa: BLE001 - no class to ask
        return None


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
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)  # called again in-process: fold again


if __name__ == "__main__":
    cli()
