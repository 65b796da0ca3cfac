"""Threshold: a per-layer rule controller with hysteresis.

Every ``interval`` steps each layer's window of sampled statistics (see ``_common`` for what
"overflow", "flush" and "rounding error" mean) is checked against the rules:

- **leave fp16** when non-finite values are traced to the layer, or its fp16 overflow rate
  exceeds ``overflow_max``, or its fp16 flush-to-zero rate exceeds ``underflow_max`` at the
  current loss scale: to bf16 when bf16's rounding error is within ``rounding_err_max``, else fp32.
- **leave bf16** when its rounding error exceeds ``rounding_err_max`` (or non-finite values are
  traced to it): to fp16 when fp16 is safe for the layer (overflow, flush and rounding error
  within their limits), else fp32.
- **move back** to the cheapest safe format cheaper than the current one only after
  ``patience`` consecutive clean windows, and no switch within ``cooldown`` steps of the last
  one -- except leaving a format that produced non-finite values, which is never delayed.

"Cheapest" orders formats by the context's costs (cost model) or ``DEFAULT_REL_COST``, ties
broken by ``context.cheapness``. Every switch carries its reason (``decisions.csv``).
"""
from __future__ import annotations

from collections.abc import Sequence

from adaprec.runtime.plan import Plan
from adaprec.controllers._common import (COST_BUDGET_RULE, FORMATS_RULE, UNIT_RULE, allowed_formats,
                                        canonical_formats, cheapest_first, relative_costs,
                                        emitted_plan)
from adaprec.controllers._window import Window, summarize_step
from adaprec.controllers.budget import Budget
from adaprec.controllers.base import Controller, ControllerContext, StepRecord
from adaprec.runtime.ranges import is_format, ranges, rule

__all__ = ["Threshold"]


@ranges("controller", overflow_max=UNIT_RULE, underflow_max=UNIT_RULE, rounding_err_max=UNIT_RULE,
        patience=rule(ge=0), cooldown=rule(ge=0), interval=rule(ge=1), formats=FORMATS_RULE,
        start=rule(ok=lambda v: v == "cheapest" or is_format(v), allowed="'cheapest' or a format name"),
        cost_budget=COST_BUDGET_RULE)
class Threshold(Controller):
    """Rule-based per-layer switching between fp32, bf16 and fp16 (see module docstring).

    Args:
        overflow_max: largest tolerated fp16 overflow rate (fraction of values -> inf).
        underflow_max: largest tolerated fp16 flush-to-zero rate of nonzero values.
        rounding_err_max: largest tolerated relative rounding error (L2) of a 16-bit format.
        patience: clean windows before moving to a cheaper format.
        cooldown: steps after a switch during which the layer does not switch again.
        interval: decide every this many steps.
        formats: the formats a layer may use.
        start: the initial format of every layer, or ``"cheapest"`` (cheapest allowed).
        cpu_fp16: keep fp16 on CPU with the native executor for non-convolution layers (slow
            kernels; off by default, see ``_common.allowed_formats``).
        cost_budget: if set, the plan's modeled cost relative to all-fp32 never exceeds it;
            layers pushed up by numerics are paid for by moving others down (``budget``).
    """

    def __init__(self, overflow_max: float = 1e-4, underflow_max: float = 0.01,
                 rounding_err_max: float = 0.005, patience: int = 3, cooldown: int = 20,
                 interval: int = 10, formats: Sequence[str] = ("bf16", "fp16", "fp32"),
                 start: str = "cheapest", cpu_fp16: bool = False, cost_budget: float | None = None):
        self.overflow_max, self.underflow_max = float(overflow_max), float(underflow_max)
        self.rounding_err_max = float(rounding_err_max)
        self.patience, self.cooldown, self.interval = int(patience), int(cooldown), int(interval)
        self.formats = canonical_formats(formats)
        if "fp32" not in self.formats:
            self.formats.append("fp32")  # the escalation target must always be reachable
        self.start = start if start == "cheapest" else canonical_formats([start])[0]
        self.cpu_fp16 = bool(cpu_fp16)
        self.cost_budget = cost_budget
        self._budget: Budget | None = None
        self.reasons: dict[str, str] = {}
        self._layers: list[str] = []
        self._order: dict[str, list[str]] = {}   # allowed formats per layer, cheapest first
        self._fmt: dict[str, str] = {}
        self._last_switch: dict[str, int] = {}
        self._clean: dict[str, int] = {}
        self._window: dict[str, Window] = {}
        self._scale = 0.0

    # -- protocol -------------------------------------------------------------------------------
    def setup(self, context: ControllerContext) -> None:
        self._layers = list(context.layers)
        costs = relative_costs(context, self.formats)
        for layer in self._layers:
            allowed = allowed_formats(self.formats, layer, context, self.cpu_fp16)
            self._order[layer] = cheapest_first(allowed, costs[layer], context.cheapness)
            first = self._order[layer][0] if self.start == "cheapest" else self.start
            self._fmt[layer] = first if first in allowed else self._order[layer][0]
            self._last_switch[layer] = -(10**9)
            self._clean[layer] = 0
        self.reasons = {layer: self._start_reason(layer) for layer in self._layers}
        if self.cost_budget is not None:
            self._budget = Budget(self.cost_budget, self._order, context)
            self._fit_budget(pinned=set(), windows={})

    def _start_reason(self, layer: str) -> str:
        """The start format as it really is (a start format the layer cannot use is replaced)."""
        fmt = self._fmt[layer]
        if self.start in ("cheapest", fmt):
            return f"threshold start ({fmt})"
        return f"threshold start ({fmt}; {self.start} is not available to this layer here)"

    def observe(self, record: StepRecord) -> None:
        self._scale = record.loss_scale
        for layer, w in summarize_step(record.stats, self._layers, record.plan,
                                       record.nonfinite_layer).items():
            self._window.setdefault(layer, Window()).add(w)

    def decide(self, step: int) -> Plan:
        if not self._layers:
            raise RuntimeError("Threshold.setup() must run before decide()")
        if step > 0 and step % self.interval == 0:
            self.reasons = {}
            before = dict(self._fmt)
            windows = dict(self._window)
            for layer in self._layers:
                self._decide_layer(layer, self._window.pop(layer, None), step)
            self._window.clear()
            if self._budget is not None:
                up = {n for n in self._layers
                      if self._order[n].index(self._fmt[n]) > self._order[n].index(before[n])}
                self._fit_budget(up, windows, step)
        return emitted_plan(self._fmt)

    def _fit_budget(self, pinned: set[str], windows: dict, step: int = 0) -> None:
        """Pay for layers pushed up by numerics with the safest other layers (logged)."""
        def safe(layer: str, fmt: str) -> bool:
            w = windows.get(layer)
            return w is not None and self._safe(fmt, w)
        trades = self._budget.fit(self._fmt, pinned, safe)
        paid_for = ", ".join(sorted(pinned)) or "the start plan"
        for layer, old, new in trades:
            self._last_switch[layer] = step
            self._clean[layer] = 0
            self.reasons[layer] = (f"cost budget {self._budget.budget:g}: {old} -> {new} to pay for "
                                   f"{paid_for} (plan cost {self._budget.relative(self._fmt):.3f})")

    # -- the rules ----------------------------------------------------------------------------
    def _fp16_problem(self, w: Window) -> str | None:
        if w.nonfinite == "fp16":
            return "non-finite values traced to the layer in fp16"
        if w.overflow > self.overflow_max:
            return f"fp16 overflow rate {w.overflow:.3g} > overflow_max {self.overflow_max:g}"
        if w.flush > self.underflow_max:
            return (f"fp16 flush-to-zero rate {w.flush:.3g} > underflow_max {self.underflow_max:g}"
                    f" at loss scale {self._scale:g}")
        return None

    def _problem(self, fmt: str, w: Window) -> str | None:
        if fmt == "fp16":
            return self._fp16_problem(w)
        if fmt == "bf16":
            if w.nonfinite == "bf16":
                return "non-finite values traced to the layer in bf16"
            if w.bf16_err > self.rounding_err_max:
                return f"bf16 rounding error {w.bf16_err:.3g} > rounding_err_max {self.rounding_err_max:g}"
        return None

    def _safe(self, fmt: str, w: Window) -> bool:
        if fmt == "fp16":
            return self._fp16_problem(w) is None and w.fp16_err <= self.rounding_err_max
        if fmt == "bf16":
            return w.nonfinite != "bf16" and w.bf16_err <= self.rounding_err_max
        return True

    def _escalate(self, layer: str, fmt: str, w: Window) -> str:
        allowed = self._order[layer]
        if fmt == "fp16" and "bf16" in allowed and self._safe("bf16", w):
            return "bf16"
        if fmt == "bf16" and "fp16" in allowed and self._safe("fp16", w):
            return "fp16"
        return "fp32"

    def _decide_layer(self, layer: str, w: Window | None, step: int) -> None:
        if w is None:  # nothing measured this window: no evidence either way
            return
        fmt = self._fmt[layer]
        cooling = step - self._last_switch[layer] < self.cooldown
        problem = self._problem(fmt, w)
        if problem is not None:
            self._clean[layer] = 0
            if cooling and w.nonfinite != fmt:
                return
            target = self._escalate(layer, fmt, w)
            self._switch(layer, target, step, f"{problem} -> {target}")
            return
        order = self._order[layer]
        cheaper = [f for f in order[:order.index(fmt)] if self._safe(f, w)] if fmt in order else []
        if not cheaper:
            self._clean[layer] = 0
            return
        self._clean[layer] += 1
        if self._clean[layer] >= self.patience and not cooling:
            self._switch(layer, cheaper[0], step,
                         f"{self._clean[layer]} clean windows >= patience {self.patience}; "
                         f"{cheaper[0]} is safe (fp16 overflow {w.overflow:.3g}, flush {w.flush:.3g}, "
                         f"bf16 err {w.bf16_err:.3g}) -> {cheaper[0]}")

    def _switch(self, layer: str, target: str, step: int, reason: str) -> None:
        if target == self._fmt[layer]:
            return
        self._fmt[layer] = target
        self._last_switch[layer] = step
        self._clean[layer] = 0
        self.reasons[layer] = reason

    # -- state ----------------------------------------------------------------------------------
    @property
    def plan(self) -> Plan:
        return emitted_plan(self._fmt)

    def state_dict(self) -> dict:
        return {"formats": dict(self._fmt), "last_switch": dict(self._last_switch),
                "clean": dict(self._clean), "scale": self._scale,
                "window": {k: w.to_dict() for k, w in self._window.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._fmt.update(state["formats"])
        self._last_switch.update({k: int(v) for k, v in state["last_switch"].items()})
        self._clean.update({k: int(v) for k, v in state["clean"].items()})
        self._scale = float(state["scale"])
        self._window = {k: Window.from_dict(v) for k, v in state["window"].items()}
