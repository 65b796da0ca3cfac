"""MuPPET: precision switching driven by gradient diversity.

A. Rajagopal, D. A. Vink, S. I. Venieris, C.-S. Bouganis, "Multi-Precision Policy Enforced
Training (MuPPET): A precision-switching strategy for quantised fixed-point training of CNNs",
ICML 2020.

Every ``interval`` steps (one "epoch" of the paper) the controller computes, per layer, the
gradient diversity over the last ``batches`` minibatches k of the window::

    Delta_l = sum_k ||g_k||^2 / ||sum_k g_k||^2

and averages it over layers. With ``Delta_max`` the largest value since the last switch and
``e`` the number of checks so far, the ratio ``p = Delta_max / Delta`` is compared with
``T(e) = 1 + 1.5 * exp(-0.1 e)``; when ``p > T(e)`` on ``patience`` consecutive checks, every
layer moves up one rung of the ladder (global switching).

Adaptation: the paper climbs a ladder of dynamic fixed-point word lengths (8, 12, 14, 16 bit,
then fp32), and every step up adds bits while the per-tensor scaling keeps the range: each
rung can hold everything the rung below could, more finely. The float ladder keeps that
property: every rung must have at least the mantissa bits *and* the range (largest value,
smallest normal) of the rung below, or the constructor refuses it (bf16 -> fp16 would gain 3
mantissa bits but lose 2^112 of range at both ends: a model training fine in bf16 overflows in
fp16, the failure a ladder exists to avoid). The mapping used: the paper's 8-bit rung ~ bf16 (8
significand bits, fp32's range), its 16-bit-and-up rungs ~ fp32 (24 bits); formats between them
with fp32's range (e.g. a bf16 with more mantissa) do not exist in hardware, so the default
ladder is bf16 -> fp32. fp16 -> fp32 is a valid ladder too. A rung some layer cannot run on
this device (fp16 on CPU with the native executor) is left out.

The gradients come from the runtime: :meth:`MuPPET.wants_gradients` asks for them on the
window's last ``batches`` steps, and each such :class:`~adaprec.controllers.base.StepRecord`
carries them (``record.gradients``); the controller never touches the model.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from adaprec.runtime.plan import Plan
from adaprec.numerics.formats import get_format
from adaprec.controllers._common import FORMATS_RULE, allowed_formats, canonical_formats
from adaprec.controllers.base import Controller, ControllerContext, StepRecord
from adaprec.runtime.ranges import ranges, rule

__all__ = ["MuPPET", "muppet_threshold"]


def muppet_threshold(e: int) -> float:
    """The paper's switching threshold T(e) = 1 + 1.5 * exp(-0.1 e) at check ``e``."""
    return 1.0 + 1.5 * math.exp(-0.1 * e)


@ranges("controller", ladder=FORMATS_RULE, interval=rule(ge=1), patience=rule(ge=1),
        batches=rule(ge=2, why="diversity needs several minibatches"))
class MuPPET(Controller):
    """Global switching up a precision ladder on falling gradient diversity (module docstring).

    Args:
        ladder: formats from least to most precise.
        interval: steps per check (the paper's epoch).
        batches: the last minibatches of each window whose gradients enter the diversity.
        patience: consecutive checks with p > T(e) before switching.
        cpu_fp16: keep the fp16 rung on CPU with the native executor (slow kernels).
    """

    def __init__(self, ladder: Sequence[str] = ("bf16", "fp32"), interval: int = 20,
                 batches: int = 4, patience: int = 2, cpu_fp16: bool = False):
        self.ladder = canonical_formats(ladder)
        for low, high in zip(self.ladder, self.ladder[1:]):
            lo, hi = get_format(low), get_format(high)
            if hi.mantissa_bits < lo.mantissa_bits or hi.max < lo.max or hi.smallest_normal > lo.smallest_normal:
                raise ValueError(f"controller.ladder: {low} -> {high} loses precision or range; every rung "
                                 "must hold what the one below holds (e.g. bf16 -> fp32, fp16 -> fp32)")
        if batches > interval:
            raise ValueError(f"controller.batches={batches} must be <= controller.interval={interval}")
        self.interval, self.batches, self.patience = int(interval), int(batches), int(patience)
        self.cpu_fp16 = bool(cpu_fp16)
        self.reasons: dict[str, str] = {}
        self._layers: list[str] = []
        self._rung = 0
        self._checks = 0
        self._violations = 0
        self._max_div = 0.0
        self.history: list[dict] = []   # one entry per check: step, diversity, ratio, threshold
        self._sum: dict[str, torch.Tensor] = {}
        self._sq: dict[str, float] = {}

    def setup(self, context: ControllerContext) -> None:
        self._layers = list(context.layers)
        dropped = [f for f in self.ladder if any(
            f not in allowed_formats([f], layer, context, self.cpu_fp16) for layer in self._layers)]
        self.ladder = [f for f in self.ladder if f not in dropped] or ["fp32"]
        note = f" (left out, not runnable here: {', '.join(dropped)})" if dropped else ""
        self.reasons = {l: f"muppet start: ladder {' -> '.join(self.ladder)}{note}" for l in self._layers}

    # -- gradients ------------------------------------------------------------------------------
    def wants_gradients(self, step: int) -> bool:
        """The last ``batches`` steps of each window enter the diversity."""
        return step % self.interval >= self.interval - self.batches  # position in the window

    def observe(self, record: StepRecord) -> None:
        if not self.wants_gradients(record.step) or record.skipped:
            return
        if record.gradients is None:
            raise ValueError(f"MuPPET needs the gradients of step {record.step} in its StepRecord "
                             "(AdaptivePrecision supplies them when wants_gradients() asks)")
        for layer in self._layers:
            g = record.gradients.get(layer)
            if g is None:
                continue
            self._sum[layer] = g.clone() if layer not in self._sum else self._sum[layer] + g
            self._sq[layer] = self._sq.get(layer, 0.0) + float(g.square().sum())

    def diversity(self) -> float | None:
        """Mean over layers of sum_k ||g_k||^2 / ||sum_k g_k||^2 for the window so far."""
        values = []
        for layer, total in self._sum.items():
            denom = float(total.square().sum())
            if denom > 0 and math.isfinite(denom):
                values.append(self._sq[layer] / denom)
        return sum(values) / len(values) if values else None

    # -- decisions ------------------------------------------------------------------------------
    def decide(self, step: int) -> Plan:
        if not self._layers:
            raise RuntimeError("MuPPET.setup() must run before decide()")
        if step > 0 and step % self.interval == 0:
            self._check(step)
        return self.plan

    def _check(self, step: int) -> None:
        div = self.diversity()
        self._sum, self._sq = {}, {}
        self.reasons = {}
        if div is None:
            return
        self._checks += 1
        self._max_div = max(self._max_div, div)
        ratio, thr = self._max_div / div, muppet_threshold(self._checks)
        self._violations = self._violations + 1 if ratio > thr else 0
        self.history.append({"step": step, "diversity": div, "ratio": ratio, "threshold": thr})
        if self._violations >= self.patience and self._rung + 1 < len(self.ladder):
            old, self._rung = self.ladder[self._rung], self._rung + 1
            why = (f"muppet: diversity ratio {ratio:.3g} > T({self._checks})={thr:.3g} on "
                   f"{self._violations} checks: {old} -> {self.ladder[self._rung]}")
            self.reasons = {l: why for l in self._layers}
            self._violations, self._max_div = 0, 0.0

    @property
    def plan(self) -> Plan:
        return Plan.uniform(self.ladder[self._rung], self._layers)

    def state_dict(self) -> dict:
        return {"rung": self._rung, "checks": self._checks, "violations": self._violations,
                "max_div": self._max_div, "sum": dict(self._sum), "sq": dict(self._sq),
                "ladder": list(self.ladder)}

    def load_state_dict(self, state: dict) -> None:
        self._rung, self._checks = int(state["rung"]), int(state["checks"])
        self._violations, self._max_div = int(state["violations"]), float(state["max_div"])
        self._sum = {k: v.clone() for k, v in state["sum"].items()}
        self._sq = {k: float(v) for k, v in state["sq"].items()}
        self.ladder = list(state["ladder"])
