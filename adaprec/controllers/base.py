"""The Controller protocol and the record it observes each step."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from adaprec.runtime.plan import Plan
from adaprec.numerics.stats import LayerStats

__all__ = ["Controller", "StepRecord", "ControllerContext"]


@dataclass(frozen=True)
class StepRecord:
    """What happened in one optimizer step, as a controller sees it.

    ``stats`` is None on unsampled steps. ``nonfinite_layer`` names the first layer whose
    outputs (forward order) or output gradients (backward order) went non-finite, if known.
    """

    step: int
    loss: float
    skipped: bool
    loss_scale: float
    plan: Plan
    stats: Mapping[str, LayerStats] | None = None
    nonfinite_layer: str | None = None


@dataclass
class ControllerContext:
    """What a controller is told once before training: the layers and, if known, their costs.

    ``layer_costs[layer][fmt]`` is a modeled cost (seconds per step on the configured device
    profile: the layer's cost in the all-fp32 plan plus the marginal cost of switching it to
    ``fmt``); ``plan_cost(plan)`` is the cost model's one pricing function (seconds of a whole
    plan, casts included), which budgets use; ``cheapness`` lists formats cheapest first. Both come from the cost model when
    one is configured, else from a documented default order. ``layer_types`` maps each layer
    to its module's class name (e.g. ``"Conv2d"``), ``executor`` names the executor, so a
    controller can leave out formats the device cannot run fast; ``modules`` maps each layer
    to its ``nn.Module`` for controllers that read parameters or gradients (MuPPET).
    """

    layers: Sequence[str]
    device_type: str = "cpu"
    layer_costs: Mapping[str, Mapping[str, float]] | None = None
    plan_cost: Callable[[Plan], float] | None = None
    cheapness: Sequence[str] = ("bf16", "fp16", "fp32")
    layer_types: Mapping[str, str] | None = None
    executor: str = "native"
    modules: Mapping[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Controller(Protocol):
    """Decides each layer's format. ``decide(step)`` returns the plan for step ``step``.

    Optional: ``setup(context)`` is called once before the first ``decide``; ``reasons``
    (layer -> text) explains the last decision; ``global_autocast`` (bool) asks for one global
    autocast region instead of per-layer ones.
    """

    def observe(self, record: StepRecord) -> None: ...

    def decide(self, step: int) -> Plan: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
