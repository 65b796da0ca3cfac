"""Typed schema of the top-level config, stored in Hydra's ConfigStore.

Composition checks every override against it: an unknown key or a value of the wrong type
fails before anything runs. Ranges are checked by :func:`validate` right after composition.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

__all__ = ["AdaprecConfig", "TrainerConfig", "MonitorConfig", "ScalerConfig",
           "ObjectiveConfig", "CostConfig", "EmulationConfig", "register_schemas",
           "validate", "ConfigError"]


class ConfigError(ValueError):
    """A config value out of its allowed range (the message names the key and the range)."""


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Executor(str, Enum):
    native = "native"      # per-layer torch.autocast regions
    emulated = "emulated"  # fp32 kernels on values rounded to each layer's format (fp8 too)
    auto = "auto"          # per layer: native where the device runs the format fast, else emulated


class FP8Scaling(str, Enum):
    current = "current"    # scale from this tensor's amax
    delayed = "delayed"    # scale from the max of an amax history (Transformer Engine's recipe)


@dataclass
class TrainerConfig:
    max_steps: int = 100            # optimizer steps
    batch_size: int = 64            # examples per optimizer step (split over grad_accum)
    grad_accum: int = 1             # micro-batches per optimizer step
    warmup_steps: int = 10          # linear warm-up, then cosine decay
    min_lr_ratio: float = 0.0       # final lr as a fraction of the peak
    eval_every: int = 50            # 0 = only at the end
    eval_batch_size: int = 256
    eval_batches: int = 0           # 0 = the whole validation split
    progress: bool = True           # tqdm bar
    overwrite: bool = False         # allow writing into a dir that holds a finished run
    num_threads: int = 0            # torch intra-op threads; 0 = torch's default (1 per parallel sweep job)


@dataclass
class MonitorConfig:
    every: int = 10                 # sample statistics every N steps; 0 = off
    layers: list[str] = field(default_factory=list)  # extra module-name globs treated as layers


@dataclass
class ScalerConfig:
    enabled: bool = True            # false: never scale the loss, even with fp16 layers
    init_scale: float = 65536.0     # 2^16, as torch.amp.GradScaler
    growth_interval: int = 2000     # clean steps before the scale doubles


@dataclass
class ObjectiveConfig:
    """What a hyperparameter sweeper minimizes (adaprec/objective.py)."""
    metric: str = "val_rmse"        # quality: val_accuracy (as 1 - acc), val_rmse, val_perplexity, val_loss
    cost: str = "rel_cost_h100"     # a metrics.json field, dotted for nested: format_shares.fp32
    budget: float = 0.6             # cost allowed before the penalty starts
    penalty: float = 10.0           # objective added per unit of relative overspend


@dataclass
class EmulationConfig:
    fp8_scaling: FP8Scaling = FP8Scaling.delayed  # per-tensor scaling of fp8 layers
    amax_history_len: int = 16      # delayed scaling: amaxes remembered per layer and tensor role
    fp8_margin: int = 0             # scale = fp8_max / amax / 2^margin (headroom against growth)


@dataclass
class CostConfig:
    enabled: bool = True            # count FLOPs/bytes once: one extra fp32 fwd+bwd on batch 0
    # profile names in conf/cost/ or paths to YAMLs from `python -m adaprec.calibrate`; each adds
    # a cost_<name>_s column to steps.csv; the first also prices layers for the controller
    profiles: list[str] = field(default_factory=lambda: ["h100", "a100", "v100", "bitops"])


@dataclass
class AdaprecConfig:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    scaler: ScalerConfig = field(default_factory=ScalerConfig)
    objective: Optional[ObjectiveConfig] = None  # set by the tuning sweeps; main then returns it
    cost: CostConfig = field(default_factory=CostConfig)
    seed: int = 0
    device: Device = Device.cpu
    executor: Executor = Executor.native
    emulation: EmulationConfig = field(default_factory=EmulationConfig)
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    controller: Any = MISSING


_RANGES = {  # key: (predicate, allowed range as text)
    "trainer.max_steps": (lambda v: v >= 1, ">= 1"),
    "trainer.batch_size": (lambda v: v >= 1, ">= 1"),
    "trainer.grad_accum": (lambda v: v >= 1, ">= 1"),
    "trainer.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "trainer.min_lr_ratio": (lambda v: 0 <= v <= 1, "[0, 1]"),
    "trainer.eval_every": (lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    "trainer.eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "trainer.eval_batches": (lambda v: v >= 0, ">= 0 (0 = all)"),
    "trainer.num_threads": (lambda v: v >= 0, ">= 0 (0 = torch's default)"),
    "monitor.every": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "scaler.init_scale": (lambda v: v > 0, "> 0"),
    "scaler.growth_interval": (lambda v: v >= 1, ">= 1"),
    "emulation.amax_history_len": (lambda v: v >= 1, ">= 1"),
    "emulation.fp8_margin": (lambda v: v >= 0, ">= 0"),
}


def validate(cfg: DictConfig) -> None:
    """Check value ranges; raise :class:`ConfigError` naming the key and its allowed range."""
    from omegaconf import OmegaConf
    for key, (ok, allowed) in _RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not ok(value):
            raise ConfigError(f"{key}={value} is out of range; allowed: {allowed}")
    tc = cfg.trainer
    if tc.batch_size % tc.grad_accum:
        raise ConfigError(f"trainer.batch_size={tc.batch_size} must be divisible by "
                          f"trainer.grad_accum={tc.grad_accum}")


def register_schemas() -> None:
    ConfigStore.instance().store(name="adaprec_schema", node=AdaprecConfig)
