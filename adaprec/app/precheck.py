"""Everything about a run that can be checked before one file is written.

:func:`check_before_write` runs twice on the CLI path: from :class:`CheckBeforeWrite`, a Hydra
callback that fires before Hydra creates the run directory or writes ``.hydra/`` (so a bad
value or a refused rerun leaves the file system as it was), and again in the job itself
(multirun jobs, whose configs only exist there). Each failure is one line naming the key and
the fix.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from adaprec.app.checkpoint import CHECKPOINT_NAME
from adaprec.app.controller_schemas import CONTROLLER_SCHEMAS
from adaprec.app.schema import AdaprecConfig, ConfigError, validate

__all__ = ["RunDirRefused", "check_before_write", "refuse_finished", "read_status",
           "CheckBeforeWrite"]

FINISHED = ("ok", "diverged")
log = logging.getLogger("adaprec")


class RunDirRefused(FileExistsError):
    """The run directory holds a finished run (and ``trainer.overwrite`` is false)."""


def check_before_write(cfg: DictConfig, run_dir: str | Path) -> None:
    """Raise a one-line error for a config that cannot run into ``run_dir``: a mandatory value
    left unset (``???``), a value out of range, a path that does not exist, a run dir that
    cannot be created or that holds a finished run. Reads only."""
    _check_missing(cfg)
    _check_unknown_keys(cfg)
    validate(cfg)
    _check_paths(cfg)
    _check_run_dir(Path(run_dir))
    refuse_finished(cfg, Path(run_dir))


def read_status(run_dir: Path) -> str | None:
    """``metrics.json``'s status in ``run_dir`` (None without one, ``unreadable`` if torn)."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text()).get("status"))
    except (ValueError, AttributeError, OSError):
        return "unreadable"


def refuse_finished(cfg: DictConfig, run_dir: Path) -> None:
    status = read_status(run_dir)
    if status in FINISHED and not cfg.trainer.get("overwrite", False):
        raise RunDirRefused(f"{run_dir} already holds a finished run (status {status}); choose "
                            "another output dir or pass trainer.overwrite=true")


def _check_missing(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return
    key = missing[0]
    example = "mypkg.MyController" if key.endswith("._target_") else "<value>"
    raise ConfigError(f"{key} is required but not set (???); set it on the command line: "
                      f"{key}={example}")


def _check_unknown_keys(cfg: DictConfig) -> None:
    """Keys a schema does not know. Composition refuses them, but ``+trainer.key=1`` adds one
    anyway (Hydra lifts the struct flag for ``+``), and it would be silently ignored."""
    nodes: list[tuple[Any, type, str]] = [(cfg, AdaprecConfig, "")]
    node = cfg.get("controller")
    if isinstance(node, DictConfig):
        typed = [sc for sc in CONTROLLER_SCHEMAS.values()
                 if _target_default(sc) == node.get("_target_")]
        if typed and not any(set(node.keys()) <= {f.name for f in dataclasses.fields(sc)} for sc in typed):
            nodes.append((node, typed[0], "controller."))  # untyped (a plugin): not checked
    while nodes:
        node, schema, prefix = nodes.pop()
        hints = typing.get_type_hints(schema)
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in fields:
                known = ", ".join(f for f in fields if not f.startswith("_"))
                raise ConfigError(f"{prefix}{key}: not a key of {schema.__name__} (known keys: "
                                  f"{known}); remove it or fix its spelling")
            child = node.get(key)
            if dataclasses.is_dataclass(hints.get(key)) and isinstance(child, DictConfig):
                nodes.append((child, hints[key], f"{prefix}{key}."))


def _target_default(schema: type) -> Any:
    return next((f.default for f in dataclasses.fields(schema) if f.name == "_target_"), None)


def _check_paths(cfg: DictConfig) -> None:
    resume = cfg.trainer.get("resume")
    if resume:
        p = Path(str(resume)).expanduser()
        if not (p.is_file() or (p / CHECKPOINT_NAME).is_file()):
            raise ConfigError(f"trainer.resume={resume}: no such checkpoint; give a checkpoint "
                              f"file or a run dir holding {CHECKPOINT_NAME}")
    from adaprec.cost.profiles import profile_names

    names = set(profile_names())
    for spec in (cfg.cost.get("profiles") or []) if cfg.cost.get("enabled", True) else []:
        spec = str(spec)
        if spec in names or (Path(spec).suffix and Path(spec).expanduser().is_file()):
            continue
        raise ConfigError(f"cost.profiles: no cost profile {spec!r}; allowed: "
                          f"{', '.join(sorted(names))}, or the path of a YAML written by "
                          "`python -m adaprec.tools.calibrate`")
    data = cfg.get("dataset") if isinstance(cfg.get("dataset"), DictConfig) else {}
    path = data.get("path")
    if path is not None and not Path(str(path)).expanduser().exists():
        raise ConfigError(f"dataset.path={path}: no such file or directory; point it at the "
                          "folder that holds the data set")
    if path is None and data.get("corpus") is not None:
        _check_corpus(str(data.corpus), data.get("stdlib_dir"))


def _check_corpus(corpus: str, stdlib_dir: Any) -> None:
    from adaprec.data.text import CORPORA

    if corpus not in CORPORA:
        raise ConfigError(f"dataset.corpus={corpus}: no such corpus; allowed: {', '.join(CORPORA)} "
                          "(or dataset.path=<file>)")
    if corpus == "stdlib" and stdlib_dir is not None and not Path(str(stdlib_dir)).expanduser().is_dir():
        raise ConfigError(f"dataset.stdlib_dir={stdlib_dir}: not a directory; point it at a Python "
                          "library folder, or null for this interpreter's")


def _check_run_dir(run_dir: Path) -> None:
    """The run dir exists as a directory, or its first existing ancestor is a writable one."""
    p = run_dir.absolute()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"hydra.run.dir={run_dir}: exists and is not a directory; "
                              "choose another run dir")
        return
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"hydra.run.dir={run_dir}: {parent} is a file, not a directory; "
                          "choose another run dir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"hydra.run.dir={run_dir}: {parent} is not writable; choose another "
                          "run dir")


class CheckBeforeWrite(Callback):
    """Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``): runs
    :func:`check_before_write` before Hydra creates the run dir of a single run, and states
    what a sweep will write before it starts. Hydra turns a callback's exceptions into
    warnings, so a failure prints its line and exits here."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # for ${hydra:...} in the task config
        run_dir = Path(str(config.hydra.run.dir))  # resolves (and caches) ${now:...}
        task = _task_config(config)
        try:
            check_before_write(task, run_dir)
        except (ConfigError, RunDirRefused) as exc:
            print(f"adaprec: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from adaprec.app.footprint import log_sweep_footprint

        try:  # an estimate: a job whose config cannot be built says so itself later
            log_sweep_footprint(config, _task_config(config))
        except Exception as exc:  # noqa: BLE001
            log.warning("could not estimate what the sweep writes: %s", exc)


def _task_config(config: DictConfig) -> DictConfig:
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task
