"""Threshold: a per-layer rule controller with hysteresis, on what each layer's GEMMs consume.

Every ``interval`` steps each layer's window of sampled statistics (``_common`` says what the
signals mean; every candidate format is judged at the scale it really uses) is checked against
the rules. A format ``f`` is **safe** for a layer when, in the window:

- no non-finite values were traced to the layer while it ran in ``f``;
- **input-side range**: ``f``'s overflow rate (values beyond its range) is within
  ``overflow_max`` and its underflow rate (nonzero values it flushes to zero, at the loss scale
  for fp16, at per-tensor/block scales for fp8 and MX) within ``underflow_max``, over the
  layer's input, weights, output, output gradient and weight gradients;
- **operand rounding**: ``f``'s relative rounding error of those tensors is within
  ``rounding_err_max``;
- **output error**: the layer's output in ``f`` against an fp32 recomputation (the monitor's
  shadow), as RMSE over the output's spread, is within ``output_err_max``: measured when the
  layer ran in ``f``, predicted otherwise (``Window.output_err``). This is the mantissa signal a
  per-element relative error misses (outputs near 1000 varying by 2: bf16's spacing there is 4).
  Layers without a shadow (batch norm, composite layers) skip this rule.

A layer whose format is unsafe leaves it at once for the **cheapest safe** format; after
``patience`` consecutive windows in which a cheaper format was comfortably safe (every signal
within ``margin`` times its limit: a band that keeps a layer whose error sits at a limit from
flipping back and forth) it moves down to the cheapest such format; ``cooldown`` steps separate a layer's switches (leaving a format that produced
non-finite values is never delayed). When nothing is safe, fp32.

**Cost.** "Cheapest" is the modeled cost of the whole plan each choice leads to
(:class:`~adaprec.controllers._common.PlanPricer`: casts between neighbouring layers, launches
and the optimizer step included), so a switch is priced with the casts it causes; ties follow
``context.cheapness``.

**Start** (``start="measured"``, the default): every layer runs fp32 for ``warmup`` steps while
the monitor judges every candidate format on the real tensors; then the plan becomes the
cheapest (by modeled plan cost, :meth:`PlanPricer.best`) of the formats safe for each layer in
that warm-up window, with the reason for every cheaper format a layer rejected in
``decisions.csv``. ``start="cheapest"`` starts from the cheapest format by cost
alone, or name a format. Every switch carries its reason.
"""
from __future__ import annotations

from collections.abc import Sequence

from adaprec.runtime.plan import Plan
from adaprec.controllers._common import (COST_BUDGET_RULE, FORMATS_RULE, UNIT_RULE, PlanPricer,
                                        allowed_formats, canonical_formats, cheapest_first,
                                        emitted_plan, relative_costs)
from adaprec.controllers._window import Window, summarize_step
from adaprec.controllers.budget import Budget
from adaprec.controllers.base import Controller, ControllerContext, StepRecord
from adaprec.runtime.ranges import is_format, ranges, rule

__all__ = ["Threshold"]

START_MODES = ("measured", "cheapest")


@ranges("controller", overflow_max=UNIT_RULE, underflow_max=UNIT_RULE, rounding_err_max=UNIT_RULE,
        output_err_max=rule(gt=0), margin=rule(gt=0, le=1), patience=rule(ge=0), cooldown=rule(ge=0), interval=rule(ge=1),
        warmup=rule(ge=1), formats=FORMATS_RULE,
        start=rule(ok=lambda v: v in START_MODES or is_format(v),
                   allowed="'measured', 'cheapest' or a format name"),
        cost_budget=COST_BUDGET_RULE)
class Threshold(Controller):
    """Rule-based per-layer switching between the allowed formats (see module docstring).

    Args:
        overflow_max: largest tolerated overflow rate of a format (fraction of values).
        underflow_max: largest tolerated flush-to-zero rate of nonzero values.
        rounding_err_max: largest tolerated relative rounding error (L2) of the operands.
        output_err_max: largest tolerated output error, RMSE over the output's spread.
        margin: moving down needs every signal within ``margin`` x its limit (hysteresis).
        patience: clean windows before moving to a cheaper format.
        cooldown: steps after a switch during which the layer does not switch again.
        interval: decide every this many steps.
        warmup: fp32 steps before the measured start plan (rounded up to whole intervals).
        formats: the formats a layer may use (fp32 is always added).
        start: ``"measured"`` (fp32 warm-up), ``"cheapest"`` (by cost alone) or a format.
        cpu_fp16: keep fp16 on CPU with the native executor for non-convolution layers (slow
            kernels; off by default, see ``_common.allowed_formats``).
        cost_budget: if set, the plan's modeled cost relative to all-fp32 never exceeds it;
            layers pushed up by numerics are paid for by moving others down (``budget``).
    """

    def __init__(self, overflow_max: float = 1e-4, underflow_max: float = 0.01,
                 rounding_err_max: float = 0.005, output_err_max: float = 0.1, margin: float = 0.5,
                 patience: int = 3,
                 cooldown: int = 20, interval: int = 10, warmup: int = 20,
                 formats: Sequence[str] = ("bf16", "fp16", "fp32"), start: str = "measured",
                 cpu_fp16: bool = False, cost_budget: float | None = None):
        self.overflow_max, self.underflow_max = float(overflow_max), float(underflow_max)
        self.rounding_err_max, self.output_err_max = float(rounding_err_max), float(output_err_max)
        self.patience, self.cooldown, self.interval = int(patience), int(cooldown), int(interval)
        self.warmup, self.margin = int(warmup), float(margin)
        self.formats = canonical_formats(formats)
        if "fp32" not in self.formats:
            self.formats.append("fp32")  # the escalation target must always be reachable
        self.start = start if start in START_MODES else canonical_formats([start])[0]
        self.cpu_fp16 = bool(cpu_fp16)
        self.cost_budget = cost_budget
        self._budget: Budget | None = None
        self._pricer: PlanPricer | None = None
        self._cheapness: tuple[str, ...] = ()
        self.reasons: dict[str, str] = {}
        self._layers: list[str] = []
        self._order: dict[str, list[str]] = {}   # allowed formats per layer, cheapest first
        self._fmt: dict[str, str] = {}
        self._last_switch: dict[str, int] = {}
        self._clean: dict[str, int] = {}
        self._window: dict[str, Window] = {}
        self._scale = 0.0
        self._warming = False

    # -- protocol -------------------------------------------------------------------------------
    def setup(self, context: ControllerContext) -> None:
        self._layers = list(context.layers)
        costs = relative_costs(context, self.formats)
        self._pricer = PlanPricer(context, self.formats)
        self._cheapness = tuple(context.cheapness)
        for layer in self._layers:
            allowed = allowed_formats(self.formats, layer, context, self.cpu_fp16)
            self._order[layer] = cheapest_first(allowed, costs[layer], context.cheapness)
            self._last_switch[layer] = -(10**9)
            self._clean[layer] = 0
        self._warming = self.start == "measured"
        if self._warming:
            self._fmt = {layer: "fp32" for layer in self._layers}
            self.reasons = {layer: f"threshold start: fp32 for a {self._warmup_steps()}-step warm-up "
                                   "that measures every candidate format" for layer in self._layers}
        elif self.start == "cheapest":
            self._fmt = self._pricer.best(self._order, self._cheapness)
            self.reasons = {layer: "threshold start (cheapest by modeled plan cost)" for layer in self._layers}
        else:
            self._fmt = {layer: self.start if self.start in self._order[layer] else self._order[layer][0]
                         for layer in self._layers}
            self.reasons = {layer: self._start_reason(layer) for layer in self._layers}
        if self.cost_budget is not None:
            self._budget = Budget(self.cost_budget, self._order, context)
            if not self._warming:
                self._fit_budget(pinned=set(), windows={})

    def _warmup_steps(self) -> int:
        return -(-self.warmup // self.interval) * self.interval

    def _start_reason(self, layer: str) -> str:
        """The start format as it really is (a start format the layer cannot use is replaced)."""
        fmt = self._fmt[layer]
        if self.start in ("cheapest", fmt):
            return f"threshold start ({fmt})"
        return f"threshold start ({fmt}; {self.start} is not available to this layer here)"

    def observe(self, record: StepRecord) -> None:
        self._scale = record.loss_scale
        for layer, w in summarize_step(record.stats, self._layers, record.plan,
                                       record.nonfinite_layer, self.formats).items():
            self._window.setdefault(layer, Window()).add(w)

    def decide(self, step: int) -> Plan:
        if not self._layers:
            raise RuntimeError("Threshold.setup() must run before decide()")
        if step > 0 and step % self.interval == 0:
            if self._warming:
                if step >= self._warmup_steps():
                    self._measured_start(step)
                return emitted_plan(self._fmt)
            self.reasons = {}
            before = dict(self._fmt)
            windows = dict(self._window)
            for layer in self._layers:
                self._decide_layer(layer, self._window.pop(layer, None), step)
            self._window.clear()
            if self._budget is not None:
                up = {n for n in self._layers if self._pricer.with_layer(before, n, self._fmt[n])
                      > self._pricer.cost(before) + 1e-12}
                self._fit_budget(up, windows, step)
        return emitted_plan(self._fmt)

    def _measured_start(self, step: int) -> None:
        """End of the fp32 warm-up: each layer takes the cheapest format its window says is safe."""
        self._warming = False
        self.reasons = {}
        windows = dict(self._window)
        self._window.clear()
        rejected, safe = {}, {}
        for layer in self._layers:
            w = windows.get(layer)
            if w is None or w.samples == 0:  # no evidence: every allowed format stays possible
                rejected[layer], safe[layer] = {}, list(self._order[layer])
                continue
            rejected[layer] = {f: self._problem(f, w) for f in self._order[layer]}
            safe[layer] = [f for f, why in rejected[layer].items() if why is None] or ["fp32"]
        self._fmt = self._pricer.best(safe, self._cheapness)
        cost = self._pricer.cost(self._fmt)
        for layer in self._layers:
            target = self._fmt[layer]
            self._last_switch[layer] = step
            if not rejected[layer]:
                self.reasons[layer] = (f"measured start: no statistics in the {step}-step warm-up; "
                                       f"{target} by modeled plan cost ({cost:.3f} of fp32)")
                continue
            why_not = "; ".join(f"not {f}: {why}" for f, why in rejected[layer].items()
                                if why is not None and self._cheaper(layer, f, target))
            self.reasons[layer] = (f"measured start after {step} fp32 steps: {target} in the cheapest "
                                   f"plan of safe formats ({cost:.3f} of fp32)"
                                   f"{' (' + why_not + ')' if why_not else ''}")
        if self._budget is not None:
            self._fit_budget(set(), windows, step)

    def _cheapest(self, layer: str, candidates: Sequence[str]) -> str:
        return self._pricer.cheapest(self._fmt, layer, candidates, self._cheapness)[0]

    def _cheaper(self, layer: str, a: str, b: str) -> bool:
        """Whether ``a`` makes the plan cheaper than ``b`` for ``layer`` (ties: cheapness order)."""
        return a != b and self._pricer.cheapest(self._fmt, layer, [a, b], self._cheapness)[0] == a

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
    def _problem(self, fmt: str, w: Window, margin: float = 1.0) -> str | None:
        """Why ``fmt`` is unsafe for the layer whose window is ``w`` (None: safe), with every
        limit multiplied by ``margin``."""
        if w.nonfinite == fmt:
            return f"non-finite values traced to the layer in {fmt}"
        if fmt == "fp32":
            return None
        over, under = w.stat(fmt, "overflow"), w.stat(fmt, "underflow")
        k = "" if margin == 1.0 else f"{margin:g} x "
        if over > margin * self.overflow_max:
            return f"{fmt} overflow rate {over:.3g} > {k}overflow_max {self.overflow_max:g}"
        if under > margin * self.underflow_max:
            scale = f" at loss scale {self._scale:g}" if fmt == "fp16" else " at its scale"
            return f"{fmt} flush-to-zero rate {under:.3g} > {k}underflow_max {self.underflow_max:g}{scale}"
        err = w.stat(fmt, "rel_err")
        if err > margin * self.rounding_err_max:
            return f"{fmt} rounding error {err:.3g} > {k}rounding_err_max {self.rounding_err_max:g}"
        out = w.output_err(fmt)
        if out is not None and out > margin * self.output_err_max:
            how = "measured" if w.shadow_format == fmt else "predicted"
            return (f"{fmt} output error {out:.3g} ({how}, RMSE / output spread vs fp32) > "
                    f"{k}output_err_max {self.output_err_max:g}")
        return None

    def _safe(self, fmt: str, w: Window, margin: float = 1.0) -> bool:
        return self._problem(fmt, w, margin) is None

    def _decide_layer(self, layer: str, w: Window | None, step: int) -> None:
        if w is None:  # nothing measured this window: no evidence either way
            return
        fmt = self._fmt[layer]
        order = self._order[layer]
        cooling = step - self._last_switch[layer] < self.cooldown
        problem = self._problem(fmt, w)
        if problem is not None:
            self._clean[layer] = 0
            if cooling and w.nonfinite != fmt:
                return
            safe = [f for f in order if f != fmt and self._safe(f, w)]
            target = self._cheapest(layer, safe) if safe else "fp32"
            self._switch(layer, target, step, f"{problem} -> {target}")
            return
        cheaper = [f for f in order if self._cheaper(layer, f, fmt) and self._safe(f, w, self.margin)]
        if not cheaper:
            self._clean[layer] = 0
            return
        self._clean[layer] += 1
        if self._clean[layer] >= self.patience and not cooling:
            best = self._cheapest(layer, cheaper)
            out = w.output_err(best)
            self._switch(layer, best, step,
                         f"{self._clean[layer]} clean windows >= patience {self.patience}; {best} is "
                         f"safe and cheaper (overflow {w.stat(best, 'overflow'):.3g}, flush "
                         f"{w.stat(best, 'underflow'):.3g}, rounding error {w.stat(best, 'rel_err'):.3g}"
                         f"{'' if out is None else f', output error {out:.3g}'}; plan cost "
                         f"{self._pricer.cost(self._fmt):.3f} -> "
                         f"{self._pricer.with_layer(self._fmt, layer, best):.3f}) -> {best}")

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
                "clean": dict(self._clean), "scale": self._scale, "warming": self._warming,
                "window": {k: w.to_dict() for k, w in self._window.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._fmt.update(state["formats"])
        self._last_switch.update({k: int(v) for k, v in state["last_switch"].items()})
        self._clean.update({k: int(v) for k, v in state["clean"].items()})
        self._scale = float(state["scale"])
        self._warming = bool(state.get("warming", False))
        self._window = {k: Window.from_dict(v) for k, v in state["window"].items()}
