"""The typed top-level config schema (the one place its defaults are written), stored in
Hydra's ConfigStore, and :func:`validate`, which runs every range rule before anything is written.

Two layers of checking, both before anything runs or is written:

- **Types and keys** — composition merges every YAML and override onto the dataclasses below and
  onto the schemas generated from each controller's signature (``controller_schemas``), so an
  unknown key or a value of the wrong type fails inside Hydra's ``compose``.
- **Ranges** — OmegaConf checks no ranges. Fields here carry a rule in their metadata; a group
  node (``controller``, ``model``, ...) is checked by the rules its ``_target_`` class declares
  with ``adaprec.runtime.ranges.ranges``, the same rules that check a Python user's call.
  :func:`validate` (called first thing by ``train``) raises a one-line :class:`ConfigError`
  naming the key, the value and what is allowed.

``conf/config.yaml`` holds the defaults list and Hydra's settings; every other top-level default
is the dataclass default below.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from adaprec.runtime.ranges import ConfigError, Rule, check_args, ranges_of, rule
from adaprec.numerics.stats import DEFAULT_SAMPLE

__all__ = ["AdaprecConfig", "TrainerConfig", "MonitorConfig", "ScalerConfig", "ObjectiveConfig",
           "CostConfig", "EmulationConfig", "GradScheduleConfig", "FSDPConfig", "Rule", "rule", "register_schemas", "validate",
           "describe_key", "ConfigError"]


def _ruled(default: Any, **kw: Any) -> Any:
    """A field with a range rule (``rule(**kw)``), checked by :func:`validate`."""
    return field(default=default, metadata={"rule": rule(**kw)})


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


class Parallel(str, Enum):
    ddp = "ddp"            # several ranks (torchrun): DistributedDataParallel; one process: none
    fsdp = "fsdp"          # FSDP2 fully_shard: sharded fp32 master weights (fsdp.* sets the units)


class FSDPParamDtype(str, Enum):
    fp32 = "fp32"          # every unit all-gathers fp32 (plans still run their formats)
    plan = "plan"          # a unit all-gathers in its layers' 16-bit plan format (bf16/fp16), following switches


class FP8Scaling(str, Enum):
    current = "current"    # scale from this tensor's amax
    delayed = "delayed"    # scale from the max of an amax history (Transformer Engine's recipe)


class GemmRounding(str, Enum):
    boundary = "boundary"  # a layer's inputs, parameters, outputs and their gradients rounded at its boundary
    operands = "operands"  # a linear layer's three GEMMs round their operands, each over its reduction dim (TE, torchao)


@dataclass
class GradScheduleConfig:
    """Gradients that shrink late in training (``adaprec.app.gradient_schedule``); off by default."""
    start: int = _ruled(0, ge=0)        # first step whose gradients are scaled
    steps: int = _ruled(0, ge=0)        # geometric ramp from 1 to `final` over this many steps (0: at once)
    final: float = _ruled(1.0, gt=0)    # the gradient multiplier from start + steps on; 1.0 = off


@dataclass
class TrainerConfig:
    max_steps: int = _ruled(60, ge=1)         # optimizer steps
    batch_size: int = _ruled(64, ge=1)        # examples per optimizer step (split over grad_accum)
    grad_accum: int = _ruled(1, ge=1)         # micro-batches per optimizer step
    grad_clip: float = _ruled(0.0, ge=0)      # > 0: clip the global norm of the unscaled gradients (as GradScaler's unscale_ + clip); 0 = no clipping
    warmup_steps: int = _ruled(5, ge=0)       # linear warm-up, then cosine decay
    min_lr_ratio: float = _ruled(0.0, ge=0, le=1)  # final lr as a fraction of the peak
    eval_every: int = _ruled(30, ge=0)        # 0 = only at the end
    eval_batch_size: int = _ruled(256, ge=1)
    eval_batches: int = _ruled(0, ge=0)       # 0 = the whole validation split
    progress: bool = True           # tqdm bar
    overwrite: bool = False         # true: remove an earlier run's files from the run dir first
    checkpoint_every: int = _ruled(0, ge=0)   # N > 0: atomic <run_dir>/checkpoint.pt every N steps (resume after a kill)
    resume: Optional[str] = None    # checkpoint file or run dir to resume from (default: the
                                    # run dir's own checkpoint, if the run there is unfinished)
    max_consecutive_skips: int = _ruled(25, ge=0)  # non-finite steps in a row before the run stops as `diverged`; 0 = never
    num_threads: int = _ruled(0, ge=0)        # torch intra-op threads; 0 = torch's default (parallel sweep jobs: 1 each)
    save_model: SaveModel = SaveModel.final  # model.pt: final | best (by the task's quality metric) | none
    grad_schedule: GradScheduleConfig = field(default_factory=GradScheduleConfig)  # shrinking gradients by step
    parallel: Parallel = Parallel.ddp  # under torchrun: ddp (replicas) | fsdp (FSDP2 shards, see fsdp.*)


@dataclass
class MonitorConfig:
    every: int = _ruled(10, ge=0)   # sample statistics every N steps (a few elementwise passes per layer); 0 = off
    layers: list[str] = field(default_factory=list)  # extra module-name globs treated as layers
    exact: bool = True              # absmax over every element (never misses an inf); false: from the sample (for every=1)
    shadow: bool = True             # recompute single-op layers in fp32 on a slice of each sampled step: output error
    sample: int = _ruled(DEFAULT_SAMPLE, ge=64)  # elements per tensor behind rates and errors (smaller: cheaper, noisier; 2048 for every=1)


@dataclass
class ScalerConfig:
    """Dynamic loss scaling, on whenever the plan has an fp16 layer."""
    enabled: bool = True            # false: fp16 without loss scaling (small gradients flush to zero)
    init_scale: float = _ruled(65536.0, gt=0)  # 2^16, as torch.amp.GradScaler
    growth_interval: int = _ruled(2000, ge=1)  # clean steps before the scale doubles


@dataclass
class ObjectiveConfig:
    """What a hyperparameter sweeper minimizes (adaprec/app/objective.py)."""
    metric: str = "val_rmse"        # quality: val_accuracy (as 1 - acc), val_rmse, val_perplexity, val_loss
    cost: str = "rel_cost_h100"     # a metrics.json field, dotted for nested: format_shares.fp32
    budget: float = _ruled(0.6, gt=0)    # cost allowed before the penalty starts
    penalty: float = _ruled(10.0, ge=0)  # objective added per unit of relative overspend


@dataclass
class EmulationConfig:
    """Emulated formats (emulated/auto executors): fp8 per-tensor scaling (Transformer Engine
    style), stochastic gradient rounding, fused rounding kernels for block formats and where a
    linear layer rounds (its boundary, or its GEMMs' operands)."""
    fp8_scaling: FP8Scaling = FP8Scaling.delayed  # current: this tensor's amax | delayed: max of an amax history
    amax_history_len: int = _ruled(16, ge=1)  # delayed scaling: amaxes remembered per layer and tensor role
    fp8_margin: int = _ruled(0, ge=0)         # scale = fp8_max / amax / 2^margin (headroom against growth)
    stochastic_grads: bool = False            # block/tile formats: gradients rounded stochastically (unbiased), not RNE
    compiled_rounding: bool = False           # MX/NVFP4 blocks and per-tensor fp8 round in one torch.compile kernel: same values, faster (needs a C++ compiler; compiles on first use)
    gemm_rounding: GemmRounding = GemmRounding.boundary  # where a linear layer's fp8/MX/NVFP4/per-role formats round (adaprec/runtime/gemm_operands.py)


def _units_ok(v: Any) -> bool:
    return v in ("layers", "root") or (isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v))


@dataclass
class FSDPConfig:
    """trainer.parallel=fsdp: how the model is sharded (adaprec/runtime/fsdp.py)."""
    # layers: every layer its own fully_shard unit | root: one unit | [globs]: e.g. ["blocks.*"] per block
    units: Any = field(default="layers", metadata={"rule": rule(
        ok=_units_ok, allowed="'layers', 'root' or a list of module-name globs such as ['blocks.*']")})
    param_dtype: FSDPParamDtype = FSDPParamDtype.fp32  # plan: all-gather a 16-bit layer's weights in its format (half the bytes)
    reshard_after_forward: bool = True  # false: keep unsharded weights from forward to backward (fewer all-gathers, more memory)


@dataclass
class CostConfig:
    """Modeled step cost (adaprec/cost): counted once, priced per plan."""
    enabled: bool = True            # count FLOPs/bytes once: one extra fp32 fwd+bwd on batch 0
    # profile names in conf/cost/ or paths to YAMLs from `python -m adaprec.tools.calibrate`; each adds
    # a cost_<name>_s column to steps.csv; the first also prices layers for the controller
    profiles: list[str] = field(default_factory=lambda: ["h100", "a100", "v100", "bitops"])


@dataclass
class AdaprecConfig:
    """The top-level config: ``python -m adaprec.run --cfg job`` prints it composed."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    scaler: ScalerConfig = field(default_factory=ScalerConfig)
    objective: Optional[ObjectiveConfig] = None  # set by the tuning sweeps; main then returns it
    cost: CostConfig = field(default_factory=CostConfig)
    seed: int = _ruled(0, ge=0)
    device: Device = Device.cpu     # the same code runs on both
    # auto: native where the device runs the format fast, else emulated (fp32 is always native);
    # native: per-layer torch.autocast regions everywhere; emulated: fp32 kernels on rounded values
    executor: Executor = Executor.auto
    emulation: EmulationConfig = field(default_factory=EmulationConfig)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    controller: Any = MISSING
    logger: Any = None  # conf/logger/: csv (none besides the run dir's tables), tensorboard, mlflow, wandb


def register_schemas() -> None:
    """Store the top-level schema and every controller schema in Hydra's ConfigStore."""
    ConfigStore.instance().store(name="adaprec_schema", node=AdaprecConfig)
    from adaprec.app.controller_schemas import register_controller_schemas
    register_controller_schemas()


def _check_node(node: Any, schema: type, prefix: str) -> None:
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if node is None or f.name not in node:
            continue
        value = node[f.name]
        r: Rule | None = f.metadata.get("rule")
        if r is not None:
            r.check(prefix + f.name, _plain(value))
        if dataclasses.is_dataclass(hints.get(f.name)) and isinstance(value, DictConfig):
            _check_node(value, hints[f.name], f"{prefix}{f.name}.")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _check_target(node: Any, prefix: str) -> None:
    """Run the range rules of the class a group node instantiates (none for an unknown class:
    instantiating it then says what is wrong)."""
    if not isinstance(node, DictConfig) or "_target_" not in node or OmegaConf.is_missing(node, "_target_") \
            or node._target_ is None:  # logger=csv: no class (get_object would log an error)
        return
    try:
        cls = get_object(str(node._target_))
    except Exception:  # noqa: BLE001 - a plugin that does not import yet: instantiate reports it
        return
    check_args(cls, {k: _plain(node[k]) for k in ranges_of(cls) if k in node}, prefix)


def validate(cfg: DictConfig) -> None:
    """Check every ruled field of the top-level schema, and each group node against the range
    rules of its ``_target_`` class; raise a one-line :class:`ConfigError` naming key, value
    and range."""
    _check_node(cfg, AdaprecConfig, "")
    for key in cfg:
        _check_target(cfg[key], f"{key}.")
    tc = cfg.trainer
    if str(getattr(tc.get("parallel"), "value", tc.get("parallel"))) == "fsdp" and not _launched():
        raise ConfigError("trainer.parallel=fsdp shards over the processes of a launcher: run "
                          "torchrun --nproc_per_node=N -m adaprec.run trainer.parallel=fsdp ... "
                          "(or SLURM tasks via hydra/launcher=submitit_slurm)")
    if tc.batch_size % tc.grad_accum:
        raise ConfigError(f"trainer.batch_size={tc.batch_size} must be divisible by "
                          f"trainer.grad_accum={tc.grad_accum}")


def _launched() -> bool:
    """Whether torchrun (any number of processes) or a multi-task SLURM job started us."""
    return "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


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
