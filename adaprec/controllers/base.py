"""The Controller protocol and the record it observes each step."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import torch

from adaprec.runtime.plan import Plan
from adaprec.numerics.stats import LayerStats

__all__ = ["Controller", "StepRecord", "ControllerContext", "with_defaults"]


@dataclass(frozen=True)
class StepRecord:
    """What happened in one optimizer step, as a controller sees it.

    ``stats`` is None on unsampled steps. ``nonfinite_layer`` names the first layer whose
    outputs (forward order) or output gradients (backward order) went non-finite, if known.
    ``gradients`` (only on steps the controller asked for, see
    :meth:`Controller.wants_gradients`, and None on skipped steps): per layer, its own
    parameters' unscaled gradients flattened and concatenated in fp32 (a copy), as measured by
    the runtime after the optimizer step.
    """

    step: int
    loss: float
    skipped: bool
    loss_scale: float
    plan: Plan
    stats: Mapping[str, LayerStats] | None = None
    nonfinite_layer: str | None = None
    gradients: Mapping[str, torch.Tensor] | None = None


@dataclass
class ControllerContext:
    """What a controller is told once before training: the layers and, if known, their costs.

    ``layer_costs[layer][fmt]`` is a modeled cost (seconds per step on the configured device
    profile: the layer's cost in the all-fp32 plan plus the marginal cost of switching it to
    ``fmt``); ``plan_cost(plan)`` is the cost model's one pricing function (seconds of a whole
    plan, casts included), which budgets use; ``cheapness`` lists formats cheapest first. Both come from the cost model when
    one is configured, else from a documented default order. ``layer_types`` maps each layer
    to its module's class name (e.g. ``"Conv2d"``), ``executor`` names the executor, so a
    controller can leave out formats the device cannot run fast. ``runs(layer, fmt)`` says
    whether the executor can run ``layer`` in ``fmt`` at all (the native executor probes each
    layer type: ``nn.LSTM`` fails in bf16 on some CPUs; None: every format runs); controllers
    never choose a format it refuses (:func:`~adaprec.controllers._common.allowed_formats`).
    Controllers never see the modules: what they measure comes through :class:`StepRecord`.
    """

    layers: Sequence[str]
    device_type: str = "cpu"
    layer_costs: Mapping[str, Mapping[str, float]] | None = None
    plan_cost: Callable[[Plan], float] | None = None
    cheapness: Sequence[str] = ("bf16", "fp16", "fp32")
    layer_types: Mapping[str, str] | None = None
    executor: str = "native"
    extra: dict[str, Any] = field(default_factory=dict)
    runs: Callable[[str, str], bool] | None = None


@runtime_checkable
class Controller(Protocol):
    """Decides each layer's format. ``decide(step)`` returns the plan for step ``step``.

    Required: ``observe``, ``decide``, ``state_dict``, ``load_state_dict``. Optional, with the
    defaults below (subclass ``Controller`` to inherit them; a controller that only has the
    required members gets them from :func:`with_defaults`): ``setup(context)``, called once
    before the first ``decide``; ``reasons`` (layer -> text) explaining the last decision;
    ``wants_gradients(step)``, whether step ``step``'s record should carry per-layer gradients.

    How the executor runs a plan (a region per layer, or one global autocast region) is the
    plan's own ``region``, so a controller asks for it by the plans it returns.
    """

    reasons: Mapping[str, str] = MappingProxyType({})

    def setup(self, context: ControllerContext) -> None:
        """Called once with the layers (and costs, if known) before the first ``decide``."""

    def wants_gradients(self, step: int) -> bool:
        """Whether the record of step ``step`` should carry ``gradients`` (default: never)."""
        return False

    def observe(self, record: StepRecord) -> None: ...

    def decide(self, step: int) -> Plan: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


_REQUIRED = ("observe", "decide", "state_dict", "load_state_dict")
_OPTIONAL = ("setup", "reasons", "wants_gradients")


class _WithDefaults:
    """``controller`` with the Protocol's defaults for the optional members it lacks."""

    def __init__(self, controller: Any):
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        if name == "_controller":  # not set yet (copy/pickle protocols probe the bare object)
            raise AttributeError(name)
        try:
            return getattr(self._controller, name)
        except AttributeError:
            if name not in _OPTIONAL:
                raise
            default = getattr(Controller, name)
            return default.__get__(self._controller) if callable(default) else default


def with_defaults(controller: Any) -> Controller:
    """``controller`` itself when it has every member of :class:`Controller`, else a view of it
    that adds the defaults of the optional ones. A missing required member is a clear error."""
    missing = [m for m in _REQUIRED if not callable(getattr(controller, m, None))]
    if missing:
        raise TypeError(f"{type(controller).__name__} is not a controller: it lacks "
                        f"{', '.join(missing)} (see adaprec.controllers.Controller)")
    return controller if isinstance(controller, Controller) else _WithDefaults(controller)
