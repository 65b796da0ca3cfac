"""CostModel: per-layer counts (taken once) x a device profile -> modeled step cost of a plan.

Per layer and phase (forward, backward) the roofline time is ``max(FLOPs / rate, bytes / bandwidth)``
in the format the layer runs as on that device. Bytes per layer, with ``b`` the format's bytes:

* forward:  read input + weights, write output            ``(in + p + out) * b``
* backward: read grad-out, saved input, weights; write grad-in, weight grad  ``(2 in + out + 2 p) * b``

Casts, priced at bandwidth as ``elems * (b_src + b_dst)``:

* activations, where neighbouring layers (forward execution order) differ in format, once in
  forward and once for the gradient in backward; the model input and the loss are fp32, so a
  plan that does not start or end in fp32 pays the cast in and out;
* weights, every step, for every layer not in fp32: fp32 master -> compute format in forward,
  and the weight gradient back to fp32 (both ``p * (4 + b)``), as torch.autocast does.

FLOPs outside every layer (root-level code, the loss) run in the plan's default format.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from adaprec.numerics.formats import FORMATS, get_format
from adaprec.runtime.plan import Plan
from adaprec.cost.counting import LayerCount, count_layers
from adaprec.cost.profiles import DeviceProfile, load_profile

__all__ = ["CostModel", "PlanCost"]

_INPUT_FORMAT = "fp32"  # data and loss are fp32: the plan's first and last layers cast to/from it


@dataclass
class PlanCost:
    """The modeled cost of one training step under a plan on one profile."""

    profile: str
    unit: str                       # "s" (modeled seconds) or "bops"
    total: float
    rel_to_fp32: float              # total / total of the all-fp32 plan
    cast: float                     # part of ``total`` spent converting formats
    flop_shares: dict[str, float]   # plan format -> share of the step's FLOPs (fwd + bwd)
    # one dict per layer: layer, format, runs_as, fwd, bwd, weight_cast, act_cast, total
    # (``pandas.DataFrame(cost.per_layer)`` makes a table of it)
    per_layer: list[dict] = field(repr=False)

    @property
    def seconds(self) -> float:
        if self.unit != "s":
            raise ValueError(f"profile {self.profile!r} prices in {self.unit}, not seconds; use .total")
        return self.total

    def metrics(self) -> dict[str, float]:
        """Flat fields for logs: ``cost_<profile>_<unit>``, ``rel_cost_<profile>``."""
        return {f"cost_{self.profile}_{self.unit}": self.total, f"rel_cost_{self.profile}": self.rel_to_fp32}


class CostModel:
    """Counts of one model at one input shape; prices any plan on any profile."""

    def __init__(self, counts: Sequence[LayerCount], other_fwd: Mapping[str, int] | None = None,
                 other_bwd: Mapping[str, int] | None = None):
        self.counts = list(counts)
        self._by_name = {c.name: c for c in self.counts}
        self.other_fwd = dict(other_fwd or {})
        self.other_bwd = dict(other_bwd or {})

    @classmethod
    def count(cls, model: nn.Module, example_inputs: Sequence | torch.Tensor,
              loss_fn: Callable | None = None, layers: Sequence[str] | None = None) -> "CostModel":
        """Run one forward + backward of ``model`` on ``example_inputs`` and count per layer."""
        counts, other_fwd, other_bwd = count_layers(model, example_inputs, loss_fn=loss_fn, layers=layers)
        return cls(counts, other_fwd, other_bwd)

    @property
    def layers(self) -> list[str]:
        """Layer names in forward execution order."""
        return [c.name for c in self.counts]

    def layer_table(self) -> list[dict]:
        """One dict per layer: layer, fwd_flops, bwd_flops, macs, act_in_elems, act_out_elems,
        param_elems, calls (``pandas.DataFrame(cm.layer_table())`` makes a table of it)."""
        rows = [{"layer": c.name, "fwd_flops": c.fwd_total, "bwd_flops": c.bwd_total, "macs": c.macs,
                 "act_in_elems": c.act_in_elems, "act_out_elems": c.act_out_elems,
                 "param_elems": c.param_elems, "calls": c.calls} for c in self.counts]
        return rows

    @property
    def total_flops(self) -> int:
        return (sum(c.fwd_total + c.bwd_total for c in self.counts)
                + sum(self.other_fwd.values()) + sum(self.other_bwd.values()))

    # -- pricing ------------------------------------------------------------------------------
    def layer_cost(self, layer: str, fmt: str, profile: DeviceProfile | str) -> float:
        """Modeled cost of one layer in ``fmt`` (compute, memory and its weight casts; no neighbours)."""
        profile = load_profile(profile)
        return sum(self._layer_parts(self._by_name[layer], get_format(fmt).name, profile).values())

    def layer_format_costs(self, profile: DeviceProfile | str, formats: Sequence[str] | None = None
                           ) -> dict[str, dict[str, float]]:
        """``{layer: {fmt: cost}}`` for controllers (e.g. a bandit's cost term); no cast terms."""
        profile = load_profile(profile)
        formats = [get_format(f).name for f in (formats or FORMATS)]
        return {c.name: {f: sum(self._layer_parts(c, f, profile).values()) for f in formats}
                for c in self.counts}

    def cheapness_order(self, profile: DeviceProfile | str,
                        formats: Sequence[str] | None = None) -> list[str]:
        """Formats ordered cheapest first for this model on this device (uniform plans compared)."""
        profile = load_profile(profile)
        formats = [get_format(f).name for f in (formats or FORMATS)]
        totals = {f: self.price(Plan.uniform(f, self.layers), profile).total for f in formats}
        return sorted(formats, key=lambda f: (totals[f], formats.index(f)))

    def price(self, plan: Plan | Mapping[str, str] | str, profile: DeviceProfile | str,
              inference: bool = False) -> PlanCost:
        """Modeled cost of one training step under ``plan`` (a Plan, a mapping, or one format name).

        ``inference``: one forward pass instead, weights converted once ahead of time (no
        per-step weight casts) and no backward or gradient casts."""
        profile = load_profile(profile)
        plan = self._as_plan(plan)
        total, cast, rows = self._price(plan, profile, inference)
        fp32_total, _, _ = self._price(Plan.uniform("fp32", self.layers), profile, inference)
        return PlanCost(profile=profile.name, unit=profile.unit, total=total,
                        rel_to_fp32=total / fp32_total if fp32_total else float("nan"), cast=cast,
                        flop_shares=self.flop_shares(plan), per_layer=rows)

    def flop_shares(self, plan: Plan | Mapping[str, str] | str) -> dict[str, float]:
        """Share of the step's FLOPs (fwd + bwd) run in each plan format; all formats listed."""
        plan = self._as_plan(plan)
        flops = {f: 0 for f in FORMATS}
        for c in self.counts:
            flops[plan.format_of(c.name)] += c.fwd_total + c.bwd_total
        flops[plan.default] += sum(self.other_fwd.values()) + sum(self.other_bwd.values())
        total = sum(flops.values())
        return {f: (n / total if total else 0.0) for f, n in flops.items()}

    def _as_plan(self, plan) -> Plan:
        if isinstance(plan, Plan):
            return plan
        if isinstance(plan, str):
            return Plan.uniform(plan, self.layers)
        if isinstance(plan, Mapping):
            return Plan(plan)
        raise ValueError("price() takes a Plan, a {layer: format} mapping or a format name, "
                         f"got {type(plan).__name__}")

    def _price(self, plan: Plan, profile: DeviceProfile, inference: bool = False
               ) -> tuple[float, float, list[dict]]:
        rows, total, cast = [], 0.0, 0.0
        prev = _INPUT_FORMAT
        passes = 0.5 if inference else 1.0  # activation casts: forward only, no gradient cast
        for c in self.counts:
            fmt = plan.format_of(c.name)
            parts = self._layer_parts(c, fmt, profile)
            if inference:
                parts["bwd"] = parts["weight_cast"] = 0.0
            parts["act_cast"] = passes * self._act_cast(c.act_in_elems, prev, fmt, profile)
            rows.append({"layer": c.name, "format": fmt, "runs_as": _runs_as(profile, fmt), **parts,
                         "total": sum(parts.values())})
            total += rows[-1]["total"]
            cast += parts["act_cast"] + parts["weight_cast"]
            prev = fmt
        if self.counts:  # the last layer's output goes to the fp32 loss
            out_cast = passes * self._act_cast(self.counts[-1].act_out_elems, prev, _INPUT_FORMAT, profile)
            rows[-1]["act_cast"] += out_cast
            rows[-1]["total"] += out_cast
            total += out_cast
            cast += out_cast
        total += self._other_cost(plan.default, profile, inference)
        return total, cast, rows

    def _layer_parts(self, c: LayerCount, fmt: str, profile: DeviceProfile) -> dict[str, float]:
        """fwd, bwd (roofline each) and weight_cast cost of one layer in ``fmt``."""
        if profile.metric == "bitops":
            bits = get_format(fmt).bits
            return {"fwd": float(c.macs * bits * bits), "bwd": 0.0, "weight_cast": 0.0}
        eff = profile.resolve(fmt)
        b, bw = get_format(eff).bytes, profile.bandwidth(eff)
        fwd_bytes = (c.act_in_elems + c.param_elems + c.act_out_elems) * b
        bwd_bytes = (2 * c.act_in_elems + c.act_out_elems + 2 * c.param_elems) * b
        weight_cast = 0.0 if eff == "fp32" else 2 * c.param_elems * (4 + b) / bw
        return {"fwd": max(_compute_s(c.fwd_flops, eff, profile), fwd_bytes / bw),
                "bwd": max(_compute_s(c.bwd_flops, eff, profile), bwd_bytes / bw),
                "weight_cast": weight_cast}

    @staticmethod
    def _act_cast(elems: int, src: str, dst: str, profile: DeviceProfile) -> float:
        """Forward conversion of an activation plus backward conversion of its gradient."""
        if profile.metric == "bitops":
            return 0.0
        src, dst = profile.resolve(src), profile.resolve(dst)
        if src == dst or elems == 0:
            return 0.0
        nbytes = elems * (get_format(src).bytes + get_format(dst).bytes)
        return 2 * nbytes / profile.bandwidth(dst)

    def _other_cost(self, fmt: str, profile: DeviceProfile, inference: bool = False) -> float:
        if profile.metric == "bitops":
            bits = get_format(fmt).bits
            return sum(self.other_fwd.values()) / 2 * bits * bits
        eff = profile.resolve(fmt)
        bwd = 0.0 if inference else _compute_s(self.other_bwd, eff, profile)
        return _compute_s(self.other_fwd, eff, profile) + bwd


def _compute_s(flops: Mapping[str, int], eff: str, profile: DeviceProfile) -> float:
    return sum(n / profile.flops_per_s(eff, kind) for kind, n in flops.items())


def _runs_as(profile: DeviceProfile, fmt: str) -> str:
    return fmt if profile.metric == "bitops" else profile.resolve(fmt)
