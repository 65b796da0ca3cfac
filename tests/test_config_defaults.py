"""One source of truth for defaults: every composed default is the Python default.

- every option of every config group whose options are Python callables (controller, model,
  dataset, optimizer; conf/cost holds device profiles read by name, not ``_target_`` nodes):
  a key the option's YAML does not write composes to the signature default of its ``_target_``;
  a key it writes is an argument of the target; where the schema is generated from the
  signature (controllers), the YAML writes only what the preset changes;
- every top-level key composes to the default of the typed schema (``AdaprecConfig``), and
  ``conf/config.yaml`` writes none of them;
- Hydra lists only selectable options (no schema) in every group.
"""
import enum
import inspect
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object
from omegaconf import OmegaConf

from adaprec.app.controller_schemas import CONTROLLER_SCHEMAS
from adaprec.app.schema import AdaprecConfig, register_schemas

from tests.conftest import CONF, compose_config

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("controller", "model", "dataset", "optimizer")
# presets named after the value they set: they say it even where it equals the default
NAMING_PRESETS = {("controller", "fp32"): {"format"}, ("controller", "bandit_ucb"): {"algorithm"}}
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


_compose = compose_config


def _written(group: str, option: str) -> dict:
    """The keys the option's YAML writes, with those of the same-group presets it extends."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))
    out: dict = {}
    for entry in raw.pop("defaults", []):
        if isinstance(entry, str) and entry != "_self_" and not entry.startswith("/"):
            out.update(_written(group, entry))
    out.update(raw)
    return out


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_to_the_python_defaults(group, option):
    written = _written(group, option)
    if written.get("_target_") == "???":
        pytest.skip("controller=plugin: the user names the class")
    node = OmegaConf.to_container(_compose(f"{group}={option}")[group], resolve=False)
    target = get_object(node["_target_"])
    params = inspect.signature(target).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())  # loaders: **_ for dataset facts
    for name, p in params.items():
        if p.default is not p.empty and name in node and name not in written:
            assert _plain(node[name]) == _plain(p.default), f"{group}.{name}"
    for name in written:
        assert name.startswith("_") or name in params or takes_any, f"{group}/{option}.yaml: {name} is no argument"
    if f"controller_schema_{target.__name__.lower()}" in CONTROLLER_SCHEMAS:  # generated from the signature
        assert set(node) == {"_target_", *params}
        restated = {k for k, v in written.items() if k in params and _plain(v) == _plain(params[k].default)}
        assert restated <= NAMING_PRESETS.get((group, option), set()), \
            f"{group}/{option}.yaml restates defaults {sorted(restated)}"


def test_every_controller_class_has_a_generated_schema():
    from adaprec import controllers
    from adaprec.runtime.ranges import ranges_of
    built = [n for n in controllers.__all__ if isinstance(getattr(controllers, n), type)
             and n not in ("Controller", "ControllerContext", "StepRecord")]
    assert built and all(ranges_of(getattr(controllers, n)) for n in built)
    assert len(CONTROLLER_SCHEMAS) == len(built)


def test_every_top_level_default_is_the_schema_default():
    cfg = _compose()
    schema = OmegaConf.structured(AdaprecConfig)
    raw = OmegaConf.load(CONF / "config.yaml")
    selected = {next(iter(d)) for d in raw.defaults if isinstance(d, dict) or OmegaConf.is_dict(d)}
    top = [k for k in schema if k not in GROUPS and k not in selected]  # group choices: own test
    assert top and {"trainer", "executor", "seed"} <= set(top)
    for key in top:
        assert _plain(OmegaConf.to_container(cfg, resolve=True).get(key)) == \
            _plain(OmegaConf.to_container(schema, resolve=True).get(key)), key
    assert cfg.executor.value == "auto" and cfg.trainer.max_steps == 60 and cfg.trainer.eval_every == 30
    assert set(raw) == {"defaults", "hydra"}, "conf/config.yaml writes a default the schema holds"


def test_hydra_lists_only_selectable_options():
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for group in GROUPS:
            assert loader.get_group_options(group) == sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        groups = [g for g in loader.list_groups("") if g != "hydra"]
        assert not [g for g in groups if "schema" in g]
        assert not [(g, o) for g in groups for o in loader.get_group_options(g) if "schema" in o]


@pytest.mark.slow
def test_cli_help_lists_no_schema():
    proc = subprocess.run([sys.executable, "-m", "adaprec.run", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    groups = proc.stdout.split("== Config ==")[0]
    line = next(ln for ln in groups.splitlines() if ln.startswith("controller: "))
    assert line.removeprefix("controller: ").split(", ") == sorted(p.stem for p in (CONF / "controller").glob("*.yaml"))
    assert "schema" not in groups.replace("adaprec_schema", "")
