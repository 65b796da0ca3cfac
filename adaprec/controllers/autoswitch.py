"""Autoswitch: the stateless per-layer rule of Transformer Engine's ``AutoswitchGemm`` debug
feature (NVIDIA Transformer Engine, precision debug tools / nvdlfw-inspect), adapted from
"fp8 vs. high precision GEMM" to "``low`` vs. ``high`` float format per layer".

A layer runs in ``high`` precision when, on the latest sampled step, the fraction of its nonzero
values that ``low`` flushes to zero exceeds ``underflow_max`` (5%) or the mean squared
quantization error in ``low`` exceeds ``mse_max`` (1e-4); otherwise in ``low``. Re-decided on
every sampled step (``monitor.every=1`` gives TE's every-step behaviour), no hysteresis.

Adaptation notes: the underflow fraction is fp16's flush-to-zero rate at the loss scale when
``low`` is fp16; bf16 shares fp32's exponent range and flushes only values fp32 can barely hold,
so its underflow fraction is taken as 0. The MSE is ``(rel_err * norm)^2 / numel`` of the
worst of the layer's activation, output gradient, weights and weight gradients.
"""
from __future__ import annotations

from adaprec.runtime.plan import Plan
from adaprec.controllers._common import (FORMAT_RULE, UNIT_RULE, allowed_formats, canonical_formats,
                                        flush_rate, quant_mse, emitted_plan)
from adaprec.controllers.base import Controller, ControllerContext, StepRecord
from adaprec.runtime.ranges import ranges, rule

__all__ = ["Autoswitch"]


@ranges("controller", low=FORMAT_RULE, high=FORMAT_RULE, underflow_max=UNIT_RULE, mse_max=rule(ge=0))
class Autoswitch(Controller):
    """Stateless per-layer switch between ``low`` and ``high`` (see module docstring)."""

    def __init__(self, low: str = "bf16", high: str = "fp32", underflow_max: float = 0.05,
                 mse_max: float = 1e-4, cpu_fp16: bool = False):
        self.low, self.high = canonical_formats([low])[0], canonical_formats([high])[0]
        self.underflow_max, self.mse_max = float(underflow_max), float(mse_max)
        self.cpu_fp16 = bool(cpu_fp16)
        self.reasons: dict[str, str] = {}
        self._low: dict[str, str] = {}
        self._fmt: dict[str, str] = {}

    def setup(self, context: ControllerContext) -> None:
        for layer in context.layers:
            ok = allowed_formats([self.low], layer, context, self.cpu_fp16)
            self._low[layer] = ok[0] if self.low in ok else self.high
            self._fmt[layer] = self._low[layer]
        self.reasons = {layer: f"autoswitch start ({self._fmt[layer]})" for layer in context.layers}

    def observe(self, record: StepRecord) -> None:
        if record.stats is None:
            return
        self.reasons = {}
        for layer, s in record.stats.items():
            if layer not in self._fmt:
                continue
            low = self._low[layer]
            under = flush_rate(s) if low == "fp16" else 0.0
            mse = quant_mse(s, low)
            if under > self.underflow_max or mse > self.mse_max:
                new, why = self.high, (f"{low} underflow {under:.3g} > {self.underflow_max:g}"
                                       if under > self.underflow_max else f"{low} MSE {mse:.3g} > {self.mse_max:g}")
            else:
                new, why = low, f"{low} underflow {under:.3g} and MSE {mse:.3g} within limits"
            if new != self._fmt[layer]:
                self.reasons[layer] = f"autoswitch: {why} -> {new}"
            self._fmt[layer] = new

    def decide(self, step: int) -> Plan:
        if not self._fmt:
            raise RuntimeError("Autoswitch.setup() must run before decide()")
        return emitted_plan(self._fmt)

    def state_dict(self) -> dict:
        return {"formats": dict(self._fmt)}

    def load_state_dict(self, state: dict) -> None:
        self._fmt.update(state["formats"])
