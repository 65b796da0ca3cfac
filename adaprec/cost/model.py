"""CostModel: per-layer counts (taken once) x a device profile -> modeled step cost of a plan.

One pricing function, :meth:`CostModel.price` (and its float-only twin :meth:`CostModel.total`),
prices a whole plan with its casts; controllers, budgets, deploy and the analysis all use it,
and :meth:`CostModel.marginal` / :meth:`CostModel.layer_format_costs` are differences of it.

Per layer and phase (forward, backward) the time is the roofline ``max(FLOPs / rate, bytes /
bandwidth)`` in the format the layer computes in on that device, plus ``kernels x kernel_us``
(launch / dispatch). Bytes per layer, with ``b`` the format's bytes:

* forward:  read input + weights, write output            ``(in + p + out) * b``
* backward: read grad-out, saved input, weights; write grad-in, weight grad  ``(2 in + out + 2 p) * b``

Casts, priced at bandwidth as ``elems * (b_src + b_dst)`` plus one kernel per tensor:

* activations, where neighbouring layers (forward execution order) store different formats,
  once in forward and once for the gradient in backward; the model input and the loss are
  fp32, so a plan that does not start or end in fp32 pays the cast in and out;
* weights, every step, for every layer not in fp32: fp32 master -> compute format in forward,
  and the weight gradient back to fp32 (both ``p * (4 + b)``), as torch.autocast does.

A format the profile lists as ``emulated`` computes in fp32 and pays roundings instead of casts
(what :class:`~adaprec.runtime.executors.emulated.EmulatedExecutor` does): its weights and
outputs always, its inputs unless the layer that produced them all (directly or through a
grid-preserving module such as ReLU; ``LayerCount.fed_by``) ran in the same format, and in a custom
(non-``torch.nn``) layer the outputs of its matmuls, softmax and elementwise ops.

Ops outside every layer (residual adds, pooling, functional activations, the loss) run in the
plan's default format: their counted FLOPs, kernels and bytes. The optimizer step
(:mod:`adaprec.cost.optimizer`) runs on the fp32 master weights whatever the plan.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from adaprec.numerics.formats import FORMATS, get_format
from adaprec.runtime.plan import Plan
from adaprec.cost.counting import LayerCount, count_layers
from adaprec.cost.memory import MemoryCost, plan_memory
from adaprec.cost.optimizer import OptimizerSpec, optimizer_spec
from adaprec.cost.profiles import DeviceProfile, load_profile

__all__ = ["CostModel", "PlanCost"]

_INPUT_FORMAT = "fp32"  # data and loss are fp32: the plan's first and last layers cast to/from it
_PARTS = ("fwd", "bwd", "weight_cast", "act_cast", "round")


@dataclass
class PlanCost:
    """The modeled cost of one training step under a plan on one profile."""

    profile: str
    unit: str                       # "s" (modeled seconds) or "bops"
    total: float
    rel_to_fp32: float              # total / total of the all-fp32 plan
    cast: float                     # part of ``total`` spent converting or rounding formats
    flop_shares: dict[str, float]   # plan format -> share of the step's FLOPs (fwd + bwd)
    # one dict per layer: layer, format, runs_as, fwd, bwd, weight_cast, act_cast, round, total
    # (``pandas.DataFrame(cost.per_layer)`` makes a table of it)
    per_layer: list[dict] = field(repr=False)
    other: float = 0.0              # ops outside every layer (the loss included)
    optimizer: float = 0.0          # the optimizer step
    kernels: float = 0.0            # part of ``total`` that is per-kernel fixed cost
    memory: MemoryCost | None = None

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

    def __init__(self, counts: Sequence[LayerCount], other: LayerCount | None = None,
                 optimizer: "str | OptimizerSpec | torch.optim.Optimizer | None" = "sgd",
                 params: tuple[int, int] | None = None):
        """``other``: what no layer owns (see :func:`count_layers`); ``params``: (tensors,
        elements) the optimizer updates (default: the layers' own parameters)."""
        self.counts = list(counts)
        self._by_name = {c.name: c for c in self.counts}
        self.other = other or LayerCount("")
        self.optimizer = optimizer_spec(optimizer)
        self.params = params or (sum(c.param_tensors for c in self.counts),
                                 sum(c.param_elems for c in self.counts))
        self._totals: dict[tuple, float] = {}

    @classmethod
    def count(cls, model: nn.Module, example_inputs: Sequence | torch.Tensor,
              loss_fn: Callable | None = None, layers: Sequence[str] | None = None,
              optimizer: "str | OptimizerSpec | torch.optim.Optimizer | None" = "sgd") -> "CostModel":
        """Run one forward + backward of ``model`` on ``example_inputs`` and count per layer.
        ``optimizer``: a name of :data:`~adaprec.cost.optimizer.OPTIMIZERS` or the instance."""
        counts, other = count_layers(model, example_inputs, loss_fn=loss_fn, layers=layers)
        trainable = [p for p in model.parameters() if p.requires_grad]
        return cls(counts, other, optimizer, (len(trainable), sum(p.numel() for p in trainable)))

    @property
    def layers(self) -> list[str]:
        """Layer names in forward execution order."""
        return [c.name for c in self.counts]

    @property
    def other_fwd(self) -> dict[str, int]:
        """FLOPs by op kind that no layer owns in forward."""
        return dict(self.other.fwd_flops)

    @property
    def other_bwd(self) -> dict[str, int]:
        return dict(self.other.bwd_flops)

    def layer_table(self) -> list[dict]:
        """One row per layer: layer, fwd_flops, bwd_flops, macs, act_in_elems, act_out_elems,
        param_elems, calls, fwd_kernels, bwd_kernels."""
        return [{"layer": c.name, "fwd_flops": c.fwd_total, "bwd_flops": c.bwd_total, "macs": c.macs,
                 "act_in_elems": c.act_in_elems, "act_out_elems": c.act_out_elems,
                 "param_elems": c.param_elems, "calls": c.calls, "fwd_kernels": c.fwd_kernels,
                 "bwd_kernels": c.bwd_kernels} for c in self.counts]

    @property
    def total_flops(self) -> int:
        return sum(c.fwd_total + c.bwd_total for c in self.counts) + self.other.fwd_total + self.other.bwd_total

    # -- the pricing function -----------------------------------------------------------------
    def price(self, plan: Plan | Mapping[str, str] | str, profile: DeviceProfile | str,
              inference: bool = False) -> PlanCost:
        """Modeled cost of one training step under ``plan`` (a Plan, a mapping, or one format name).

        ``inference``: one forward pass instead, weights converted once ahead of time (no
        per-step weight casts or roundings), no backward, gradient casts or optimizer step."""
        profile = load_profile(profile)
        plan = self._as_plan(plan)
        rows, other, opt = self._price(plan, profile, inference)
        total = sum(r["total"] for r in rows) + other + opt
        fp32_total = self.total(Plan.uniform("fp32", self.layers), profile, inference)
        kernels = (0.0 if profile.metric == "bitops"
                   else self._kernel_count(plan, profile, inference) * profile.kernel_s)
        return PlanCost(profile=profile.name, unit=profile.unit, total=total,
                        rel_to_fp32=total / fp32_total if fp32_total else float("nan"),
                        cast=sum(r["weight_cast"] + r["act_cast"] + r["round"] for r in rows),
                        flop_shares=self.flop_shares(plan), per_layer=rows, other=other, optimizer=opt,
                        kernels=kernels,
                        memory=None if profile.metric == "bitops" else self.memory(plan, profile, inference))

    def total(self, plan: Plan | Mapping[str, str] | str, profile: DeviceProfile | str,
              inference: bool = False) -> float:
        """``price(plan, profile, inference).total``, cached per plan: what controllers call."""
        profile = load_profile(profile)
        plan = self._as_plan(plan)
        key = (plan.hash, repr(profile), inference)
        if key not in self._totals:
            rows, other, opt = self._price(plan, profile, inference)
            self._totals[key] = sum(r["total"] for r in rows) + other + opt
        return self._totals[key]

    def layer_cost(self, layer: str, fmt: str, profile: DeviceProfile | str) -> float:
        """Modeled cost of one layer in ``fmt`` among neighbours in ``fmt`` (its compute, memory,
        kernels and weight casts or roundings; no activation casts)."""
        profile = load_profile(profile)
        fmt = get_format(fmt).name
        return sum(self._layer_parts(self._by_name[layer], fmt, fmt, profile, False, fmt).values())

    def marginal(self, plan: Plan | Mapping[str, str] | str, layer: str, fmt: str,
                 profile: DeviceProfile | str) -> float:
        """Change of the step cost when ``layer`` alone switches to ``fmt`` (casts included)."""
        plan = self._as_plan(plan)
        return self.total(plan.with_changes({layer: get_format(fmt).name}), profile) - self.total(plan, profile)

    def layer_format_costs(self, profile: DeviceProfile | str, formats: Sequence[str] | None = None,
                           around: Plan | Mapping[str, str] | str = "fp32") -> dict[str, dict[str, float]]:
        """``{layer: {fmt: cost}}`` for controllers: the layer's own cost in the ``around`` plan
        (default all-fp32) plus the :meth:`marginal` cost of switching it to ``fmt`` there, so
        ``costs[l][f] - costs[l][around[l]]`` is exactly what :meth:`total` says the switch costs."""
        profile = load_profile(profile)
        around = self._as_plan(around)
        formats = [get_format(f).name for f in (formats or FORMATS)]
        rows = {r["layer"]: r["total"] for r in self._price(around, profile, False)[0]}
        return {layer: {f: rows[layer] + self.marginal(around, layer, f, profile) for f in formats}
                for layer in self.layers}

    def cheapness_order(self, profile: DeviceProfile | str,
                        formats: Sequence[str] | None = None) -> list[str]:
        """Formats ordered cheapest first for this model on this device (uniform plans compared)."""
        profile = load_profile(profile)
        formats = [get_format(f).name for f in (formats or FORMATS)]
        totals = {f: self.total(Plan.uniform(f, self.layers), profile) for f in formats}
        return sorted(formats, key=lambda f: (totals[f], formats.index(f)))

    def memory(self, plan: Plan | Mapping[str, str] | str, profile: DeviceProfile | str,
               inference: bool = False) -> MemoryCost:
        """Modeled bytes of a step under ``plan``: weights, gradients, optimizer state, saved
        activations (see :func:`~adaprec.cost.memory.plan_memory`)."""
        profile = load_profile(profile)
        plan = self._as_plan(plan)
        return plan_memory(self.counts, [plan.format_of(c.name) for c in self.counts], profile,
                           self.params[1], self.optimizer, inference)

    def flop_shares(self, plan: Plan | Mapping[str, str] | str) -> dict[str, float]:
        """Share of the step's FLOPs (fwd + bwd) run in each plan format; all formats listed."""
        plan = self._as_plan(plan)
        flops = {f: 0 for f in FORMATS}
        for c in self.counts:  # a per-role entry: forward FLOPs in fprop's format, backward
            roles = get_format(plan.format_of(c.name)).roles()  # split between dgrad and wgrad
            flops[roles["input"]] += c.fwd_total
            flops[roles["dgrad"]] += c.bwd_total / 2
            flops[roles["wgrad"]] += c.bwd_total / 2
        flops[get_format(plan.default).roles()["input"]] += self.other.fwd_total + self.other.bwd_total
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

    # -- the parts ----------------------------------------------------------------------------
    def _price(self, plan: Plan, profile: DeviceProfile, inference: bool) -> tuple[list[dict], float, float]:
        """(per-layer rows, ops outside layers, optimizer step)."""
        rows = []
        prev = _INPUT_FORMAT
        for c in self.counts:
            fmt = plan.format_of(c.name)
            fed = plan.format_of(c.fed_by) if c.fed_by is not None else None
            parts = self._layer_parts(c, fmt, prev, profile, inference, fed)
            rows.append({"layer": c.name, "format": fmt, "runs_as": _runs_as(profile, fmt), **parts,
                         "total": sum(parts.values())})
            prev = fmt
        if rows and profile.metric == "seconds":  # the last layer's output goes to the fp32 loss
            out_cast = self._act_cast(self.counts[-1].act_out_elems, self.counts[-1].out_tensors,
                                      prev, _INPUT_FORMAT, profile, inference)
            rows[-1]["act_cast"] += out_cast
            rows[-1]["total"] += out_cast
        return rows, self._other_cost(plan.default, profile, inference), self._optimizer_cost(profile, inference)

    def _layer_parts(self, c: LayerCount, fmt: str, prev: str, profile: DeviceProfile,
                     inference: bool, fed: str | None = None) -> dict[str, float]:
        """fwd, bwd, weight_cast, act_cast (from ``prev``) and round cost of one layer in ``fmt``;
        ``fed``: the format of the layer that produced all its inputs (None: none did)."""
        if profile.metric == "bitops":
            bits = get_format(fmt).bits
            return {"fwd": float(c.macs * bits * bits), **{k: 0.0 for k in _PARTS[1:]}}
        eff = profile.resolve(fmt)
        comp = profile.compute_format(fmt)
        b, bw, k = get_format(comp).bytes, profile.bandwidth(comp), profile.kernel_s
        fwd_bytes = (c.act_in_elems + c.param_elems + c.act_out_elems) * b
        bwd_bytes = (2 * c.act_in_elems + c.act_out_elems + 2 * c.param_elems) * b
        parts = {"fwd": max(_compute_s(c.fwd_flops, comp, profile), fwd_bytes / bw) + c.fwd_kernels * k,
                 "bwd": 0.0 if inference else (max(_compute_s(c.bwd_flops, comp, profile), bwd_bytes / bw)
                                               + c.bwd_kernels * k),
                 "weight_cast": 0.0, "round": 0.0,
                 "act_cast": self._act_cast(c.act_in_elems, c.in_tensors, prev, fmt, profile, inference)}
        if profile.is_emulated(eff):
            # inference: one forward, so half of each (forward + gradient) rounding
            half = 0.5 if inference else 1.0
            # inputs are rounded unless the layer that made them all was in this format (the
            # executor's tag then says they are on the grid)
            on_grid = fed is not None and profile.resolve(fed) == eff
            parts["act_cast"] = 0.0 if on_grid or c.act_in_elems == 0 else \
                half * profile.rounding_s(eff, c.in_tensors, c.act_in_elems)
            parts["round"] = half * profile.rounding_s(eff, c.out_tensors, c.act_out_elems)
            if not c.stock:
                parts["round"] += half * profile.rounding_s(eff, c.inner_ops, c.inner_out_elems)
            if not inference:
                parts["weight_cast"] = profile.rounding_s(eff, c.param_tensors, c.param_elems)
        elif comp != "fp32" and not inference:
            parts["weight_cast"] = 2 * (c.param_elems * (4 + b) / bw + c.param_tensors * k)
        return parts

    @staticmethod
    def _act_cast(elems: int, tensors: int, src: str, dst: str, profile: DeviceProfile,
                  inference: bool) -> float:
        """Forward conversion of an activation plus backward conversion of its gradient (an
        emulated ``dst`` rounds instead: :meth:`_layer_parts` prices that)."""
        if profile.metric == "bitops" or elems == 0 or profile.is_emulated(profile.resolve(dst)):
            return 0.0
        passes = 1 if inference else 2
        src, dst = profile.compute_format(src), profile.compute_format(dst)
        if src == dst:
            return 0.0
        nbytes = elems * (get_format(src).bytes + get_format(dst).bytes)
        return passes * (nbytes / profile.bandwidth(dst) + tensors * profile.kernel_s)

    def _other_cost(self, fmt: str, profile: DeviceProfile, inference: bool = False) -> float:
        o = self.other
        if profile.metric == "bitops":
            bits = get_format(fmt).bits
            return o.fwd_total / 2 * bits * bits
        comp = profile.compute_format(fmt)
        scale, bw, k = get_format(comp).bytes / 4, profile.bandwidth(comp), profile.kernel_s
        fwd = max(_compute_s(o.fwd_flops, comp, profile), o.fwd_bytes * scale / bw) + o.fwd_kernels * k
        if inference:
            return fwd
        return fwd + max(_compute_s(o.bwd_flops, comp, profile), o.bwd_bytes * scale / bw) + o.bwd_kernels * k

    def _optimizer_cost(self, profile: DeviceProfile, inference: bool) -> float:
        if inference or profile.metric == "bitops":
            return 0.0
        return (self._optimizer_kernels(profile) * profile.kernel_s
                + self.optimizer.passes * 4 * self.params[1] / profile.bandwidth("fp32"))

    def _optimizer_kernels(self, profile: DeviceProfile) -> int:
        per_op = 1 if profile.optimizer_foreach else self.params[0]
        return self.optimizer.kernels * (per_op if self.params[0] else 0)

    def _kernel_count(self, plan: Plan, profile: DeviceProfile, inference: bool) -> float:
        """Kernels of the step on ``profile`` (layers, outside ops, optimizer; casts excluded)."""
        n = sum(c.fwd_kernels + (0 if inference else c.bwd_kernels) for c in self.counts)
        n += self.other.fwd_kernels + (0 if inference else self.other.bwd_kernels)
        return n + (0 if inference else self._optimizer_kernels(profile))


def _compute_s(flops: Mapping[str, int], fmt: str, profile: DeviceProfile) -> float:
    return sum(n / profile.flops_per_s(fmt, kind) for kind, n in flops.items())


def _runs_as(profile: DeviceProfile, fmt: str) -> str:
    if profile.metric == "bitops":
        return fmt
    eff = profile.resolve(fmt)
    return f"{eff} (emulated)" if profile.is_emulated(eff) else eff
