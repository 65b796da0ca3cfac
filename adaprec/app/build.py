"""The training run's objects, built from the config: data and its task, model, optimizer and
learning-rate schedule, cost meter, and the :class:`~adaprec.AdaptivePrecision` that ties them."""
from __future__ import annotations

import logging

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from adaprec.app.batching import train_batch_indices
from adaprec.app.instantiate import instantiate
from adaprec.cost import CostMeter, CostModel
from adaprec.cost.optimizer import optimizer_spec
from adaprec.precision import AdaptivePrecision
from adaprec.runtime.distributed import init_process_group
from adaprec.runtime.fsdp import Sharding, shard_model
from adaprec.runtime.layers import discover_layers
from adaprec.tasks import Task, get_task
from adaprec.numerics.stats import DEFAULT_SAMPLE

__all__ = ["Training", "build", "lr_lambda", "seed_everything", "config_value"]


@dataclass
class Training:
    """What one training run trains with (everything a checkpoint restores, and the data)."""
    micro_batch: int  # examples per forward/backward: trainer.batch_size / trainer.grad_accum
    grad_accum: int   # micro-batches per optimizer step
    data: Any
    task: Task
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ap: AdaptivePrecision
    meter: CostMeter | None
    sharding: Sharding | None = None  # trainer.parallel=fsdp: the model's FSDP2 units


def lr_lambda(warmup: int, total: int, min_ratio: float = 0.0):
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def config_value(v: Any) -> str:
    """Enum-typed config fields arrive as Enum members; everything downstream wants strings."""
    return str(getattr(v, "value", v))


def build(cfg: DictConfig, device: torch.device) -> Training:
    """Instantiate every object of the run from ``cfg`` (in a fixed order: it draws from the
    seeded RNGs, so a resumed run must build exactly as the original did)."""
    tc = cfg.trainer
    accum = int(tc.grad_accum)
    micro = int(tc.batch_size) // accum  # schema.validate checked that it divides
    if tc.get("num_threads", 0) > 0:  # parallel sweep jobs on a few cores: one thread each
        torch.set_num_threads(int(tc.num_threads))
    data = instantiate(cfg.dataset)
    task = get_task(data.task)
    model = instantiate(cfg.model).to(device)
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    controller = instantiate(cfg.controller)
    extra_layers = list(cfg.monitor.get("layers") or [])
    meter = _cost_meter(cfg, task, model, data, discover_layers(model, extra_layers), device,
                        micro, accum, optimizer)  # counted on the whole (unsharded) model
    sharding = None
    if config_value(tc.get("parallel", "ddp")) == "fsdp":
        init_process_group(device.type)  # torchrun --nproc_per_node=1 too: FSDP2 needs a group
        fc = cfg.fsdp
        units = fc.units if isinstance(fc.units, str) else list(fc.units)
        sharding = shard_model(model, units, param_dtype=config_value(fc.param_dtype), layers=extra_layers,
                               reshard_after_forward=bool(fc.reshard_after_forward))
        optimizer = instantiate(cfg.optimizer)(params=model.parameters())  # over the shards
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(int(tc.warmup_steps), int(tc.max_steps), float(tc.min_lr_ratio)))
    ap = AdaptivePrecision(model, controller=controller, device_type=device.type,
                           executor=config_value(cfg.executor), monitor_every=int(cfg.monitor.every),
                           layers=extra_layers,
                           layer_costs=meter.layer_format_costs() if meter else None,
                           plan_cost=meter.plan_cost if meter else None,
                           cheapness=meter.cheapness() if meter else None,
                           scaler=dict(cfg.get("scaler") or {}),
                           executor_options=_executor_options(cfg),
                           monitor_exact=bool(cfg.monitor.get("exact", True)),
                           monitor_shadow=bool(cfg.monitor.get("shadow", True)),
                           monitor_sample=int(cfg.monitor.get("sample", DEFAULT_SAMPLE)))
    if sharding is not None:
        sharding.follow(ap.plan)  # the initial plan's all-gather dtypes, before the first forward
    return Training(micro, accum, data, task, model, optimizer, scheduler, ap, meter, sharding)


def _cost_meter(cfg: DictConfig, task: Task, model, data, layers: list[str], device: torch.device,
                micro: int, accum: int, optimizer=None) -> CostMeter | None:
    """Count the model once on the first training micro-batch (plain fp32, model state and RNG
    untouched) and price plans on ``cfg.cost.profiles``; None when the cost model is off."""
    if not cfg.cost.enabled:
        return None
    idx = train_batch_indices(data.num_train_examples, micro, int(cfg.seed), 0)
    x, y = task.batch(data, "train", idx, device)
    cm = CostModel.count(model, (x,), loss_fn=lambda out: task.loss(out, y), layers=layers,
                         optimizer=_cost_optimizer(optimizer))
    return CostMeter(cm, list(cfg.cost.profiles), passes_per_step=accum)


def _cost_optimizer(optimizer):
    """The optimizer as the cost model prices it; one it does not know is priced as plain SGD."""
    try:
        return optimizer_spec(optimizer)
    except ValueError:
        logging.getLogger("adaprec").warning("cost model: %s priced as plain SGD", type(optimizer).__name__)
        return "sgd"


def _executor_options(cfg: DictConfig) -> dict[str, Any]:
    """Emulation options of the emulated and auto executors (the native one takes none)."""
    em = cfg.get("emulation")
    if config_value(cfg.executor) == "native" or em is None:
        return {}
    return {"fp8": {"scaling": config_value(em.fp8_scaling), "amax_history_len": int(em.amax_history_len),
                    "margin": int(em.fp8_margin)},
            "stochastic_grads": bool(em.get("stochastic_grads", False)),
            "compiled_rounding": bool(em.get("compiled_rounding", False)),
            "gemm_rounding": config_value(em.get("gemm_rounding", "boundary"))}
