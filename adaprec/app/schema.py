"""Typed config schemas, stored in Hydra's ConfigStore, and their range checks.

Two layers of checking, both before anything runs or is written:

- **Types and keys** — composition merges every YAML and override onto the dataclasses below,
  so an unknown key or a value of the wrong type fails inside Hydra's ``compose``.
- **Ranges** — OmegaConf checks no ranges, so fields carry a :func:`rule` in their metadata
  and :func:`validate` (called first thing by ``train``) walks the schema generically and
  raises a one-line :class:`ConfigError` naming the key, the value and what is allowed.

A config group option gets its schema by listing it first in its defaults (Hydra's
"schema for a config group" pattern)::

    # conf/controller/threshold.yaml
    defaults:
      - schema_threshold      # stored by register_group_schema("controller", "schema_threshold", ...)
      - _self_

and :func:`validate` finds the range rules of a group node by its ``_target_``. Plugging in a
new controller therefore takes one dataclass with ``_target_`` and ruled fields plus one
``register_group_schema`` call at import of ``adaprec.app.schema`` consumers (see
``CONTROLLER_SCHEMAS``).
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from adaprec.numerics.formats import FORMATS, get_format

__all__ = ["AdaprecConfig", "TrainerConfig", "MonitorConfig", "ScalerConfig", "ObjectiveConfig",
           "CostConfig", "EmulationConfig", "StaticSchema", "FixedPlanSchema", "AutocastSchema",
           "Rule", "rule", "register_schemas", "register_group_schema", "validate",
           "describe_key", "ConfigError", "CONTROLLER_SCHEMAS"]


class ConfigError(ValueError):
    """A config value out of its allowed range (the message names the key and the range)."""


@dataclass(frozen=True)
class Rule:
    """An allowed range: ``ok(value)`` decides, ``allowed`` says it in words."""

    ok: Callable[[Any], bool]
    allowed: str


def rule(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, choices: Any = None, each: bool = False,
         ok: Callable[[Any], bool] | None = None, allowed: str | None = None) -> dict:
    """Field metadata for a range check: ``field(default=0.1, metadata=rule(ge=0, le=1))``.

    Bounds combine; ``choices`` is a collection of allowed values; ``ok``/``allowed`` give a
    custom predicate and its description. ``each=True`` applies the rule to every value of a
    list or dict field. ``None`` values (optional fields) always pass."""
    checks: list[tuple[Callable[[Any], bool], str]] = []
    for bound, op, fn in ((ge, ">=", lambda v, b: v >= b), (gt, ">", lambda v, b: v > b),
                          (le, "<=", lambda v, b: v <= b), (lt, "<", lambda v, b: v < b)):
        if bound is not None:
            checks.append((lambda v, b=bound, fn=fn: fn(v, b), f"{op} {bound:g}"))
    if choices is not None:
        allowed_set = tuple(choices)
        checks.append((lambda v: v in allowed_set, "one of " + ", ".join(map(str, allowed_set))))
    if ok is not None:
        checks.append((ok, allowed or ok.__name__))
    text = allowed if allowed and ok is None else " and ".join(t for _, t in checks)
    single = lambda v: all(_safe(c, v) for c, _ in checks)  # noqa: E731
    if each:
        return {"rule": Rule(lambda v: all(single(x) for x in _values(v)), f"each value {text}")}
    return {"rule": Rule(single, text)}


def _safe(check: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(check(value))
    except (TypeError, ValueError, KeyError):
        return False


def _values(v: Any) -> list:
    if isinstance(v, (Mapping, DictConfig)):
        return list(v.values())
    return list(v) if isinstance(v, (list, tuple, ListConfig)) else [v]


def _is_format(name: Any) -> bool:
    get_format(str(name))  # raises ValueError for unknown names
    return True


FORMAT_RULE = dict(ok=_is_format, allowed="a format name: " + ", ".join(FORMATS))


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Executor(str, Enum):
    native = "native"      # per-layer torch.autocast regions
    emulated = "emulated"  # fp32 kernels on values rounded to each layer's format (fp8 too)
    auto = "auto"          # per layer: native where the device runs the format fast, else emulated


class SaveModel(str, Enum):
    final = "final"        # model.pt = the weights after the last step
    best = "best"          # model.pt = the weights at the best evaluation so far
    none = "none"          # no model.pt (sweeps that only need the tables)


class FP8Scaling(str, Enum):
    current = "current"    # scale from this tensor's amax
    delayed = "delayed"    # scale from the max of an amax history (Transformer Engine's recipe)


@dataclass
class TrainerConfig:
    max_steps: int = field(default=100, metadata=rule(ge=1))          # optimizer steps
    batch_size: int = field(default=64, metadata=rule(ge=1))          # examples per optimizer step (split over grad_accum)
    grad_accum: int = field(default=1, metadata=rule(ge=1))           # micro-batches per optimizer step
    grad_clip: float = field(default=0.0, metadata=rule(ge=0))        # max global norm of the unscaled gradients; 0 = no clipping
    warmup_steps: int = field(default=10, metadata=rule(ge=0))        # linear warm-up, then cosine decay
    min_lr_ratio: float = field(default=0.0, metadata=rule(ge=0, le=1))  # final lr as a fraction of the peak
    eval_every: int = field(default=50, metadata=rule(ge=0))          # 0 = only at the end
    eval_batch_size: int = field(default=256, metadata=rule(ge=1))
    eval_batches: int = field(default=0, metadata=rule(ge=0))         # 0 = the whole validation split
    progress: bool = True           # tqdm bar
    overwrite: bool = False         # start over in a dir that holds a run (its files are removed)
    checkpoint_every: int = field(default=0, metadata=rule(ge=0))     # checkpoint.pt every N steps; 0 = never
    resume: Optional[str] = None    # checkpoint file or run dir to resume from (default: the
                                    # run dir's own checkpoint, if the run there is unfinished)
    max_consecutive_skips: int = field(default=25, metadata=rule(ge=0))  # non-finite steps in a row -> diverged; 0 = never
    num_threads: int = field(default=0, metadata=rule(ge=0))  # torch intra-op threads; 0 = torch's default (1 per parallel sweep job)
    save_model: SaveModel = SaveModel.final  # model.pt: final | best (by the task's quality metric) | none


@dataclass
class MonitorConfig:
    every: int = field(default=10, metadata=rule(ge=0))  # sample statistics every N steps; 0 = off
    layers: list[str] = field(default_factory=list)      # extra module-name globs treated as layers
    exact: bool = True              # absmax over every element (never misses an inf); false: from the sample


@dataclass
class ScalerConfig:
    enabled: bool = True            # false: never scale the loss, even with fp16 layers
    init_scale: float = field(default=65536.0, metadata=rule(gt=0))  # 2^16, as torch.amp.GradScaler
    growth_interval: int = field(default=2000, metadata=rule(ge=1))  # clean steps before the scale doubles


@dataclass
class ObjectiveConfig:
    """What a hyperparameter sweeper minimizes (adaprec/app/objective.py)."""
    metric: str = "val_rmse"        # quality: val_accuracy (as 1 - acc), val_rmse, val_perplexity, val_loss
    cost: str = "rel_cost_h100"     # a metrics.json field, dotted for nested: format_shares.fp32
    budget: float = field(default=0.6, metadata=rule(gt=0))    # cost allowed before the penalty starts
    penalty: float = field(default=10.0, metadata=rule(ge=0))  # objective added per unit of relative overspend


@dataclass
class EmulationConfig:
    fp8_scaling: FP8Scaling = FP8Scaling.delayed  # per-tensor scaling of fp8 layers
    amax_history_len: int = field(default=16, metadata=rule(ge=1))  # delayed scaling: amaxes remembered per layer and tensor role
    fp8_margin: int = field(default=0, metadata=rule(ge=0))  # scale = fp8_max / amax / 2^margin (headroom against growth)


@dataclass
class CostConfig:
    enabled: bool = True            # count FLOPs/bytes once: one extra fp32 fwd+bwd on batch 0
    # profile names in conf/cost/ or paths to YAMLs from `python -m adaprec.tools.calibrate`; each adds
    # a cost_<name>_s column to steps.csv; the first also prices layers for the controller
    profiles: list[str] = field(default_factory=lambda: ["h100", "a100", "v100", "bitops"])


@dataclass
class AdaprecConfig:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    scaler: ScalerConfig = field(default_factory=ScalerConfig)
    objective: Optional[ObjectiveConfig] = None  # set by the tuning sweeps; main then returns it
    cost: CostConfig = field(default_factory=CostConfig)
    seed: int = field(default=0, metadata=rule(ge=0))
    device: Device = Device.cpu
    executor: Executor = Executor.native
    emulation: EmulationConfig = field(default_factory=EmulationConfig)
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    controller: Any = MISSING


# -- controller schemas (static controllers; adaptive ones register theirs the same way) -------
@dataclass
class StaticSchema:
    _target_: str = "adaprec.controllers.Static"
    format: str = field(default="fp32", metadata=rule(**FORMAT_RULE))  # every layer's format


@dataclass
class FixedPlanSchema:
    _target_: str = "adaprec.controllers.FixedPlan"
    default: str = field(default="fp32", metadata=rule(**FORMAT_RULE))  # layers no pattern names
    patterns: dict[str, str] = field(default_factory=dict,
                                     metadata=rule(each=True, **FORMAT_RULE))  # glob -> format


@dataclass
class AutocastSchema:
    _target_: str = "adaprec.controllers.Autocast"
    dtype: str = field(default="bf16", metadata=rule(choices=("bf16", "fp16")))  # autocast dtype


# group -> {ConfigStore name: schema}; stored in ConfigStore by register_schemas()
CONTROLLER_SCHEMAS: dict[str, type] = {
    "schema_static": StaticSchema, "schema_plan": FixedPlanSchema,
    "schema_autocast": AutocastSchema,
}
_GROUP_SCHEMAS: dict[str, dict[str, type]] = {"controller": CONTROLLER_SCHEMAS}


def register_group_schema(group: str, name: str, node: type) -> None:
    """Make ``node`` (a dataclass with a ``_target_`` default) the schema of a group option:
    stored in ConfigStore as ``<group>/<name>`` and range-checked by :func:`validate` for
    every node of ``group`` with that ``_target_``."""
    if not dataclasses.is_dataclass(node) or not any(f.name == "_target_" for f in dataclasses.fields(node)):
        raise TypeError(f"{node!r} must be a dataclass with a _target_ field")
    _GROUP_SCHEMAS.setdefault(group, {})[name] = node
    ConfigStore.instance().store(group=group, name=name, node=node)


def register_schemas() -> None:
    """Store the top-level schema and every group schema in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="adaprec_schema", node=AdaprecConfig)
    for group, schemas in _GROUP_SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=group, name=name, node=node)
    from adaprec.app.controller_schemas import register_controller_schemas
    register_controller_schemas()


def _check_node(node: Any, schema: type, prefix: str) -> None:
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if node is None or f.name not in node:
            continue
        value = node[f.name] if isinstance(node, DictConfig) else getattr(node, f.name)
        r: Rule | None = f.metadata.get("rule")
        if r is not None and value is not None and not _safe(r.ok, value):
            shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
            raise ConfigError(f"{prefix}{f.name}={shown!r} is out of range; allowed: {r.allowed}")
        if dataclasses.is_dataclass(hints.get(f.name)) and isinstance(value, DictConfig):
            _check_node(value, hints[f.name], f"{prefix}{f.name}.")


def schema_of(group: str, node: Any) -> type | None:
    """The registered schema of a group node: same ``_target_`` and every key of the node a
    field of the schema (two schemas may share a target)."""
    if not isinstance(node, (DictConfig, Mapping)):
        return None
    keys = set(node.keys())
    for schema in _GROUP_SCHEMAS.get(group, {}).values():
        names = {f.name for f in dataclasses.fields(schema)}
        if _default(schema, "_target_") == node.get("_target_") and keys <= names:
            return schema
    return None


def _default(schema: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(schema) if f.name == name)


def validate(cfg: DictConfig) -> None:
    """Check every ruled field of the top-level schema and of each group node with a
    registered schema; raise a one-line :class:`ConfigError` naming key, value and range."""
    _check_node(cfg, AdaprecConfig, "")
    for group in _GROUP_SCHEMAS:
        node = cfg.get(group)
        schema = schema_of(group, node)
        if schema is not None:
            _check_node(node, schema, f"{group}.")
    tc = cfg.trainer
    if tc.batch_size % tc.grad_accum:
        raise ConfigError(f"trainer.batch_size={tc.batch_size} must be divisible by "
                          f"trainer.grad_accum={tc.grad_accum}")


def describe_key(full_key: str) -> str | None:
    """What a key of the top-level schema accepts (its type, and its range if ruled), or the
    keys a node accepts when ``full_key`` is unknown; None when the schema does not say."""
    schema: Any = AdaprecConfig
    parts = full_key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(schema)
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if part not in fields:
            return "known keys: " + ", ".join(k for k in fields if not k.startswith("_"))
        kind = hints[part]
        if i == len(parts) - 1:
            r = fields[part].metadata.get("rule")
            text = _type_text(kind)
            return f"expected {text}" + (f" {r.allowed}" if r else "")
        if not dataclasses.is_dataclass(kind):
            return None
        schema = kind
    return None


def _type_text(kind: Any) -> str:
    if isinstance(kind, type) and issubclass(kind, Enum):
        return "one of " + ", ".join(m.value for m in kind)
    return getattr(kind, "__name__", str(kind).replace("typing.", ""))
