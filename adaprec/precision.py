"""AdaptivePrecision: the library entry point, shaped like torch.amp.

    ap = AdaptivePrecision(model, controller=Static("bf16"), device_type="cpu")
    with ap.autocast():
        loss = loss_fn(model(x), y)
    ap.backward(loss)      # scaled backward + sampled statistics
    ap.step(optimizer)     # unscale, skip on inf/NaN, update scale, controller decides next plan
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from torch import nn

from .controllers.base import Controller, ControllerContext, StepRecord
from .controllers.static import Static
from .executor import NativeExecutor
from .executor_emulated import AutoExecutor, EmulatedExecutor
from .formats import BF16, get_format
from .layers import discover_layers
from .monitor import Monitor
from .plan import Plan
from .scaler import LossScaler

__all__ = ["AdaptivePrecision", "EXECUTORS", "needs_loss_scaling"]

EXECUTORS = {"native": NativeExecutor, "emulated": EmulatedExecutor, "auto": AutoExecutor}


def needs_loss_scaling(plan: Plan) -> bool:
    """Dynamic loss scaling is on whenever some layer runs in a format with fp16's (or
    narrower) range; bf16 shares fp32's exponent range and needs none."""
    fmts = {plan.default, *plan.values()}
    return any(get_format(f).max < BF16.max / 2 for f in fmts)


class AdaptivePrecision:
    """Per-layer adaptive mixed precision around an unmodified model and optimizer.

    Args:
        model: any ``nn.Module``; parameters stay fp32 (master weights).
        controller: decides the plan each step (default ``Static("fp32")``).
        device_type: ``"cpu"`` or ``"cuda"``, as for ``torch.autocast``.
        executor: ``"native"`` (per-layer autocast regions), ``"emulated"`` (fp32 kernels on
            values rounded to each layer's format; fp8 too) or ``"auto"`` (native where the
            device runs the format fast, emulated elsewhere).
        executor_options: keyword arguments for the executor (emulated/auto: ``fp8``).
        monitor_every: sample statistics every N optimizer steps (0 = off).
        layers: extra glob patterns of module names to treat as layers.
        scaler: keyword arguments for :class:`~adaprec.scaler.LossScaler`.
        layer_costs / cheapness: cost information handed to the controller's ``setup``.
    """

    def __init__(self, model: nn.Module, controller: Controller | None = None,
                 device_type: str = "cpu", executor: str = "native", monitor_every: int = 10,
                 layers: Sequence[str] = (), scaler: dict | None = None,
                 layer_costs: dict | None = None, cheapness: Sequence[str] | None = None,
                 executor_options: dict | None = None):
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
        self.model = model
        self.device_type = device_type
        self.layers = discover_layers(model, layers)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no layers (no module owns parameters)")
        self.controller: Controller = controller if controller is not None else Static("fp32")
        self.executor = EXECUTORS[executor](model, self.layers, device_type, **(executor_options or {}))
        self.monitor = Monitor(model, self.layers, monitor_every)
        # a model may own no parameters (only parameterless adaprec_layer blocks)
        device = next(model.parameters(), torch.empty(0)).device
        self.scaler = LossScaler(device=device, **(scaler or {}))
        self.step_count = 0
        self.decisions: list[dict[str, Any]] = []
        self.last_record: StepRecord | None = None
        self._loss_sum: torch.Tensor | None = None
        self._micro_batches = 0
        self._in_step = False
        context = ControllerContext(layers=self.layers, device_type=device_type,
                                    layer_costs=layer_costs,
                                    cheapness=tuple(cheapness or ControllerContext.cheapness))
        if hasattr(self.controller, "setup"):
            self.controller.setup(context)
        self._plan = Plan.uniform("fp32", self.layers)
        self._apply(self.controller.decide(0), step=0)

    # -- the torch.amp-shaped surface -----------------------------------------------------------
    @property
    def plan(self) -> Plan:
        """The plan in force (``Mapping[str, str]``: layer name -> format)."""
        return self._plan

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """Run forward (and loss) under the current plan. In training mode the first call of a
        step arms the monitor if the step is sampled; in eval mode nothing is measured."""
        if not self._in_step and self.model.training:
            self._in_step = True
            self.monitor.begin_step(self.step_count, self.scaler.scale, self.scaler.applied_scale)
        with self.executor.region():
            yield

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """Scaled backward; call once per micro-batch when accumulating gradients (divide
        each micro-batch loss by the number of micro-batches, as with torch.amp: the step's
        recorded loss is the sum of what is passed here)."""
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._micro_batches += 1
        self.scaler.scale_loss(loss).backward(**kwargs)
        self.monitor.end_backward()

    def step(self, optimizer: torch.optim.Optimizer) -> StepRecord:
        """Unscale, skip the update on inf/NaN, update the scale, let the controller decide."""
        if self._loss_sum is None:
            raise RuntimeError("ap.step() called before ap.backward(loss)")
        self.monitor.measure_parameters()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        found_inf = self.scaler.unscale_(p.grad for p in params)
        loss_value, inf_value = torch.stack([self._loss_sum, found_inf]).tolist()  # one host sync
        skipped = inf_value > 0 or not torch.isfinite(torch.tensor(loss_value)).item()
        if not skipped:
            optimizer.step()
        scale_used = self.scaler.applied_scale
        self.scaler.update(found_inf)
        stats = self.monitor.collect(self.step_count, self._plan.format_of)
        record = StepRecord(step=self.step_count, loss=loss_value, skipped=skipped,
                            loss_scale=scale_used, plan=self._plan, stats=stats)
        self.last_record = record
        self.controller.observe(record)
        self.step_count += 1
        self._loss_sum, self._micro_batches, self._in_step = None, 0, False
        self._apply(self.controller.decide(self.step_count), step=self.step_count)
        return record

    def latest_stats(self) -> pd.DataFrame:
        """Latest sampled LayerStats, one row per layer (empty before the first sample)."""
        return self.monitor.latest_frame()

    # -- plan switching -------------------------------------------------------------------------
    def _apply(self, plan: Plan, step: int) -> None:
        if not isinstance(plan, Plan):
            raise TypeError(f"{type(self.controller).__name__}.decide() must return a Plan, "
                            f"got {type(plan).__name__}")
        reasons = getattr(self.controller, "reasons", {}) or {}
        for layer, (old, new) in self._plan.diff(plan).items():
            if layer in self.executor.layers or step == 0:
                self.decisions.append({"step": step, "layer": layer, "old": old, "new": new,
                                       "reason": reasons.get(layer, type(self.controller).__name__)})
        self._install(plan)

    def _install(self, plan: Plan) -> None:
        self._plan = plan
        self.executor.set_plan(plan, global_region=getattr(self.controller, "global_autocast", False))
        self.scaler.active = needs_loss_scaling(plan)

    def set_plan(self, plan: Plan | dict, reason: str = "set by user") -> None:
        """Apply ``plan`` now (inference, or a manual override until the controller's next
        decision); the change is logged with ``reason``."""
        plan = plan if isinstance(plan, Plan) else Plan(plan)
        for layer, (old, new) in self._plan.diff(plan).items():
            self.decisions.append({"step": self.step_count, "layer": layer, "old": old,
                                   "new": new, "reason": reason})
        self._install(plan)

    @classmethod
    def from_plan(cls, model: nn.Module, path: str | Path, device_type: str = "cpu",
                  executor: str = "native") -> "AdaptivePrecision":
        """Apply a saved plan (``inference_plan.json`` from ``adaprec.deploy``, or a plan JSON)
        for inference: ``with ap.autocast(): model(x)``."""
        data = json.loads(Path(path).read_text())
        plan = Plan.from_dict(data["plan"] if "plan" in data else data)
        ap = cls(model, controller=Static("fp32"), device_type=device_type, executor=executor,
                 monitor_every=0)
        unknown = set(plan) - set(ap.layers)
        if unknown:
            ap.remove()
            raise ValueError(f"plan {path} names layers this model lacks: {sorted(unknown)[:5]}")
        ap.set_plan(plan, reason=f"from {path}")
        return ap

    def pop_decisions(self) -> list[dict[str, Any]]:
        """Plan changes since the last call (for loggers)."""
        out, self.decisions = self.decisions, []
        return out

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step_count, "plan": self._plan.to_dict(),
                "scaler": self.scaler.state_dict(), "controller": self.controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        self.scaler.load_state_dict(state["scaler"])
        self.controller.load_state_dict(state["controller"])
        plan = Plan.from_dict(state["plan"])
        self._install(plan)

    def remove(self) -> None:
        """Detach every hook from the model."""
        self.executor.remove()
        self.monitor.remove()
