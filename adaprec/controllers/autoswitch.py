"""Autoswitch: the stateless per-GEMM rule of Transformer Engine's ``AutoswitchGemm`` debug
feature (NVIDIA Transformer Engine precision debug tools / nvdlfw-inspect), from "fp8 vs. high
precision GEMM" to "``low`` vs. ``high`` float format", per layer **and per GEMM**.

Each layer runs three GEMMs, and each is decided on its own two inputs, measured in fp32 before
any cast (the monitor's ``input``, ``weight`` and ``grad`` tensors):

- ``fprop`` (forward): the input activation and the weight;
- ``dgrad`` (input gradient): the output gradient and the weight;
- ``wgrad`` (weight gradient): the output gradient and the input activation.

A GEMM runs in ``high`` when, on the latest sampled step, the fraction of either input's nonzero
values that ``low`` flushes to zero at the scale ``low`` really uses (the loss scale for fp16,
per-tensor/block scales for fp8 and MX) exceeds ``underflow_max`` (TE's 5%), or either input's
quantization MSE in ``low`` at its true magnitude exceeds ``mse_max`` (TE's 1e-4); else in
``low``. The layer's plan entry holds the three GEMM formats as per-role formats (``fprop``
rounds the input and weight, ``dgrad`` the gradients flowing through the layer, ``wgrad`` the
weight gradient); when all three agree it is that plain format.

Deviations from TE, on purpose and stated: the decision is made after the step that was
measured and takes effect from the next one (TE's feature can switch the GEMM in question; here
the step's statistics are complete only after its backward), so ``monitor.every=1`` gives TE's
every-step behaviour and other intervals keep the last decision in between; no switch is priced
(TE's rule is numerics only, and a faithful baseline keeps it so); ``dgrad`` in the emulated
executor rounds the whole gradient path through the layer (the output gradient and the input
gradient it produces), ``wgrad`` the weight gradient.
"""
from __future__ import annotations

from adaprec.numerics.formats import per_role
from adaprec.runtime.plan import Plan
from adaprec.controllers._common import (FORMAT_RULE, UNIT_RULE, allowed_formats, canonical_formats,
                                        flush_rate, quant_mse, emitted_plan)
from adaprec.controllers.base import Controller, ControllerContext, StepRecord
from adaprec.runtime.ranges import ranges, rule

__all__ = ["Autoswitch", "GEMM_OPERANDS"]

# TE's three GEMMs of a linear layer and the two tensors each consumes
GEMM_OPERANDS = {"fprop": ("input", "weight"), "dgrad": ("grad", "weight"), "wgrad": ("grad", "input")}


@ranges("controller", low=FORMAT_RULE, high=FORMAT_RULE, underflow_max=UNIT_RULE, mse_max=rule(ge=0))
class Autoswitch(Controller):
    """Stateless per-layer, per-GEMM switch between ``low`` and ``high`` (module docstring)."""

    def __init__(self, low: str = "bf16", high: str = "fp32", underflow_max: float = 0.05,
                 mse_max: float = 1e-4, cpu_fp16: bool = False):
        self.low, self.high = canonical_formats([low])[0], canonical_formats([high])[0]
        self.underflow_max, self.mse_max = float(underflow_max), float(mse_max)
        self.cpu_fp16 = bool(cpu_fp16)
        self.reasons: dict[str, str] = {}
        self._low: dict[str, str] = {}
        self._gemms: dict[str, dict[str, str]] = {}

    @property
    def formats(self) -> list[str]:
        """The formats the rule chooses between (what the monitor judges)."""
        return [self.low, self.high]

    def setup(self, context: ControllerContext) -> None:
        for layer in context.layers:
            ok = allowed_formats([self.low], layer, context, self.cpu_fp16)
            self._low[layer] = ok[0] if self.low in ok else self.high
            self._gemms[layer] = {g: self._low[layer] for g in GEMM_OPERANDS}
        self.reasons = {layer: f"autoswitch start ({self._low[layer]})" for layer in context.layers}

    def _judge(self, s, low: str, gemm: str) -> tuple[bool, str]:
        """Whether ``gemm`` of the layer measured by ``s`` needs ``high``, and why."""
        kinds = [k for k in GEMM_OPERANDS[gemm] if getattr(s, k) is not None]
        if not kinds:
            return False, "no inputs measured"
        under = flush_rate(s, low, kinds)
        mse = quant_mse(s, low, kinds)
        if under > self.underflow_max:
            return True, f"{gemm} {low} underflow {under:.3g} > {self.underflow_max:g}"
        if mse > self.mse_max:
            return True, f"{gemm} {low} MSE {mse:.3g} > {self.mse_max:g}"
        return False, f"{gemm} {low} underflow {under:.3g}, MSE {mse:.3g} within limits"

    def observe(self, record: StepRecord) -> None:
        if record.stats is None:
            return
        self.reasons = {}
        for layer, s in record.stats.items():
            if layer not in self._gemms:
                continue
            low = self._low[layer]
            changed = []
            for gemm in GEMM_OPERANDS:
                high, why = self._judge(s, low, gemm)
                new = self.high if high else low
                if new != self._gemms[layer][gemm]:
                    changed.append(f"{why} -> {new}")
                self._gemms[layer][gemm] = new
            if changed:
                self.reasons[layer] = "autoswitch: " + "; ".join(changed)

    def _entry(self, layer: str) -> str:
        g = self._gemms[layer]
        return per_role(dict(g)).name

    def decide(self, step: int) -> Plan:
        if not self._gemms:
            raise RuntimeError("Autoswitch.setup() must run before decide()")
        return emitted_plan({layer: self._entry(layer) for layer in self._gemms})

    @property
    def gemm_formats(self) -> dict[str, dict[str, str]]:
        """``{layer: {fprop, dgrad, wgrad: format}}`` as decided last."""
        return {layer: dict(g) for layer, g in self._gemms.items()}

    def state_dict(self) -> dict:
        return {"gemms": self.gemm_formats}

    def load_state_dict(self, state: dict) -> None:
        if "gemms" in state:
            for layer, g in state["gemms"].items():
                self._gemms[layer].update(g)
        else:  # a checkpoint from before per-GEMM formats: one format per layer
            for layer, fmt in state["formats"].items():
                self._gemms[layer] = {g: fmt for g in GEMM_OPERANDS}
