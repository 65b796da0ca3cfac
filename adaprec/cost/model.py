"""CostModel: per-layer counts (taken once) x a device profile -> modeled step cost of a plan.

One pricing function, :meth:`CostModel.price` (and its float-only twin :meth:`CostModel.total`),
prices a whole plan with its casts; controllers, budgets, deploy and the analysis all use it,
and :meth:`CostModel.marginal` / :meth:`CostModel.layer_format_costs` are differences of it.

Every tensor is priced in the format of its role (``Format.roles()``; one plain format gives all
four roles the same format), as the emulated executor rounds it: the layer's input and output
in ``input``, its weights in ``weight``, the output gradient arriving and the input gradient it
produces in ``dgrad``, the weight gradient in ``wgrad``. The three GEMMs of a layer thus read

* forward: input (``input``) x weight (``weight``);
* dgrad:   output gradient (``dgrad``) x weight (``weight``);
* wgrad:   output gradient (``dgrad``) x input (``input``), writing the weight gradient in ``wgrad``.

The GEMMs' operands and bit operations are the same under the emulated executor's
``gemm_rounding="operands"`` (each GEMM rounds its own operands; :mod:`adaprec.runtime.gemm_operands`),
which keeps a linear layer's output and input gradient in fp32, where hardware writes them in
its activation format (bf16 in Transformer Engine); the bytes here stay those of the format.

A GEMM whose operands are in two formats runs at the slower one's rate (the executor's product
of a bf16 and an mxfp8 operand is a bf16 GEMM: running it at fp8 rate would need the bf16
operand quantized too, other numerics), so a per-role entry with bf16 fprop and mxfp8
gradients computes at bf16 rates and saves bytes, casts and roundings.

Per layer and phase (forward, backward) the time is the roofline ``max(compute, bytes /
bandwidth)`` plus ``kernels x kernel_us`` (launch / dispatch); the backward's FLOPs are half
dgrad, half wgrad, each at its GEMM's rate (:meth:`CostModel.flop_shares` splits them the same
way and labels the halves by the ``dgrad`` and ``wgrad`` roles). Bytes
per layer, each tensor in its role's compute format:

* forward:  read input + weights, write output            ``in + p + out``
* backward: read grad-out, saved input, weights; write grad-in, weight grad  ``2 in + out + 2 p``

Casts, priced at bandwidth as ``elems * (b_src + b_dst)`` plus one kernel per tensor:

* activations, where neighbouring layers (forward execution order) store them differently: in
  forward, the previous layer's output (its ``input`` role) to this layer's ``input`` role; in
  backward, this layer's input gradient (``dgrad``) to the previous layer's ``dgrad``. The model
  input and the loss are fp32, so a plan that does not start or end in fp32 pays the cast in
  and out;
* weights, every step, for every layer whose roles are not fp32: the fp32 master to the
  ``weight`` format in forward, the weight gradient from ``wgrad`` back to fp32 (each
  ``p * (4 + b)``), as torch.autocast does.

A format the profile lists as ``emulated`` computes in fp32 and pays roundings instead of casts
(what :class:`~adaprec.runtime.executors.emulated.EmulatedExecutor` does), half of the profile's
forward-and-gradient rounding cost per direction, each direction in its role's format: its
weights and outputs always, its inputs unless the layer that produced them all (directly or
through a grid-preserving module such as ReLU; ``LayerCount.fed_by``) ran in the same plain
format (a per-role layer rounds every input), and in a custom (non-``torch.nn``) layer the
outputs of its matmuls, softmax and elementwise ops.

``bitops`` prices each layer's forward MACs x the mean, over the three GEMMs, of the product of
their operands' bits (wgrad's format is the product's, not an operand's); the mean keeps a
plain format at the quantization literature's ``MACs x b_w x b_a``. ``inference``: the forward
GEMM alone.

Ops outside every layer (residual adds, pooling, functional activations, the loss) run in the
plan's default format (its ``input`` role): their counted FLOPs, kernels and bytes. The
optimizer step (:mod:`adaprec.cost.optimizer`) runs on the fp32 master weights whatever the plan.
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
        return self._layer_row(self._by_name[layer], fmt, fmt, profile, False, fmt)["total"]

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
        known: dict[str, _Roles] = {}  # one plan holds few distinct entries

        def roles(fmt: str) -> _Roles:
            if fmt not in known:
                known[fmt] = _Roles(fmt, profile)
            return known[fmt]

        for c in self.counts:
            fmt = plan.format_of(c.name)
            fed = plan.format_of(c.fed_by) if c.fed_by is not None else None
            rows.append({"layer": c.name, "format": fmt, "runs_as": _runs_as(profile, fmt),
                         **self._layer_row(c, fmt, prev, profile, inference, fed, roles)})
            prev = fmt
        if rows and profile.metric == "seconds":  # the last layer's output goes to the fp32 loss
            last, out, loss = self.counts[-1], roles(prev).tensor, roles(_INPUT_FORMAT).tensor["input"]
            out_cast = _convert(last.act_out_elems, last.out_tensors, out["input"], loss, profile)
            if not inference:  # the loss's fp32 gradient into the last layer's dgrad format
                out_cast += _convert(last.act_out_elems, last.out_tensors, out["dgrad"], loss, profile)
            rows[-1]["act_cast"] += out_cast
            rows[-1]["total"] += out_cast
        return rows, self._other_cost(plan.default, profile, inference), self._optimizer_cost(profile, inference)

    def _layer_row(self, c: LayerCount, fmt: str, prev: str, profile: DeviceProfile,
                   inference: bool, fed: str | None = None,
                   roles: Callable[[str], "_Roles"] | None = None) -> dict[str, float]:
        """fwd, bwd, weight_cast, round, act_cast (from ``prev``) and their total for one layer
        in ``fmt``; ``fed``: the format of the layer that produced all its inputs (None: none
        did); ``roles``: a cache of :class:`_Roles` for ``profile``."""
        if profile.metric == "bitops":
            return _bitops_row(c, get_format(fmt).roles(), inference)
        roles = roles or (lambda f: _Roles(f, profile))
        r, p = roles(fmt), roles(prev)
        cf, t, k = r.cf, r.tensor, profile.kernel_s
        fwd_bytes = [(c.act_in_elems, t["input"]), (c.param_elems, t["weight"]), (c.act_out_elems, t["input"])]
        parts = {"fwd": max(_gemm_s(c.fwd_flops, cf["input"], cf["weight"], profile),
                            _bytes_s(fwd_bytes, profile)) + c.fwd_kernels * k,
                 "bwd": 0.0, "weight_cast": 0.0, "round": 0.0, "act_cast": 0.0}
        if not inference:
            half = {kind: n / 2 for kind, n in c.bwd_flops.items()}
            compute = (_gemm_s(half, cf["dgrad"], cf["weight"], profile)       # dgrad
                       + _gemm_s(half, cf["dgrad"], cf["input"], profile))     # wgrad
            bwd_bytes = [(c.act_out_elems, t["dgrad"]), (c.act_in_elems, t["input"]),
                         (c.param_elems, t["weight"]), (c.act_in_elems, t["dgrad"]),
                         (c.param_elems, t["wgrad"])]
            parts["bwd"] = max(compute, _bytes_s(bwd_bytes, profile)) + c.bwd_kernels * k
            parts["weight_cast"] = (r.weight_pass("weight", c, profile)     # master -> weight
                                    + r.weight_pass("wgrad", c, profile))   # weight grad -> master
        parts["round"] = r.rounding(c.out_tensors, c.act_out_elems, profile, inference)
        if not c.stock:
            parts["round"] += r.rounding(c.inner_ops, c.inner_out_elems, profile, inference)
        # inputs the layer that made them all left on this (plain) format's grid are not rounded
        # again: the executor's tag says so (a per-role layer rounds every input)
        on_grid = (fed is not None and not r.has_roles and not roles(fed).has_roles
                   and roles(fed).eff["input"] == r.eff["input"])
        for role in ("input",) if inference else ("input", "dgrad"):  # the input, its gradient
            if r.emulated[role]:
                parts["act_cast"] += 0.0 if on_grid or c.act_in_elems == 0 else \
                    0.5 * profile.rounding_s(r.eff[role], c.in_tensors, c.act_in_elems)
            else:  # from the previous layer's output (input role) / into its output gradient (dgrad)
                parts["act_cast"] += _convert(c.act_in_elems, c.in_tensors, p.tensor[role], t[role], profile)
        return {**parts, "total": sum(parts.values())}

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


class _Roles:
    """One plan entry's four roles on one profile: the format each runs as (``eff``), whether
    that is emulated, and the format its kernels compute and store in (``cf``)."""

    def __init__(self, fmt: str, profile: DeviceProfile):
        f = get_format(fmt)
        self.has_roles = f.has_roles
        self.eff = {role: profile.resolve(name) for role, name in f.roles().items()}
        self.emulated = {role: profile.is_emulated(e) for role, e in self.eff.items()}
        self.cf = {role: "fp32" if self.emulated[role] else e for role, e in self.eff.items()}
        self.tensor = {role: (cf, get_format(cf).bytes) for role, cf in self.cf.items()}

    def _round(self, role: str, tensors: int, elems: int, profile: DeviceProfile) -> float:
        """One direction (forward value or gradient) of rounding tensors to ``role``'s format."""
        return 0.5 * profile.rounding_s(self.eff[role], tensors, elems) if self.emulated[role] else 0.0

    def rounding(self, tensors: int, elems: int, profile: DeviceProfile, inference: bool) -> float:
        """Rounding a layer's output-like tensors: the value to ``input``, its gradient to ``dgrad``."""
        fwd = self._round("input", tensors, elems, profile)
        return fwd if inference else fwd + self._round("dgrad", tensors, elems, profile)

    def weight_pass(self, role: str, c: LayerCount, profile: DeviceProfile) -> float:
        """The weights' conversion between the fp32 master and ``role`` (weight or wgrad)."""
        if self.emulated[role]:
            return self._round(role, c.param_tensors, c.param_elems, profile)
        comp, b = self.tensor[role]
        if comp == "fp32":
            return 0.0
        return c.param_elems * (4 + b) / profile.bandwidth(comp) + c.param_tensors * profile.kernel_s


def _convert(elems: int, tensors: int, src: tuple[str, float], dst: tuple[str, float],
             profile: DeviceProfile) -> float:
    """One pass converting ``tensors`` tensors between ``(compute format, bytes)`` ``src`` and
    ``dst``, at ``dst``'s bandwidth (the side of the layer that pays)."""
    if elems == 0 or src[0] == dst[0]:
        return 0.0
    return elems * (src[1] + dst[1]) / profile.bandwidth(dst[0]) + tensors * profile.kernel_s


def _bytes_s(tensors: Sequence[tuple[int, tuple[str, float]]], profile: DeviceProfile) -> float:
    """Seconds to move ``(elements, (compute format, its bytes))`` tensors (summed per format
    first, so one format's total is ``elems * b / bandwidth``)."""
    by_format: dict[tuple[str, float], int] = {}
    for elems, fmt in tensors:
        by_format[fmt] = by_format.get(fmt, 0) + elems
    return sum(n * b / profile.bandwidth(f) for (f, b), n in by_format.items())


def _gemm_s(flops: Mapping[str, float], a: str, b: str, profile: DeviceProfile) -> float:
    """A GEMM with operands in compute formats ``a`` and ``b`` runs at the slower one's rate."""
    return _compute_s(flops, a, profile) if a == b else \
        max(_compute_s(flops, a, profile), _compute_s(flops, b, profile))


def _bitops_row(c: LayerCount, roles: Mapping[str, str], inference: bool) -> dict[str, float]:
    """The module docstring's BOPs; the total is one exact integer quotient, so a plain format
    gives ``MACs x b x b`` bit for bit (fwd and bwd are its parts, rounded separately)."""
    bits = {role: get_format(f).bits for role, f in roles.items()}
    fwd = bits["input"] * bits["weight"]
    zeros = {k: 0.0 for k in _PARTS[2:]}
    if inference:
        return {"fwd": float(c.macs * fwd), "bwd": 0.0, **zeros, "total": float(c.macs * fwd)}
    bwd = bits["dgrad"] * bits["weight"] + bits["dgrad"] * bits["input"]
    return {"fwd": c.macs * fwd / 3, "bwd": c.macs * bwd / 3, **zeros, "total": c.macs * (fwd + bwd) / 3}


def _compute_s(flops: Mapping[str, int], fmt: str, profile: DeviceProfile) -> float:
    return sum(n / profile.flops_per_s(fmt, kind) for kind, n in flops.items())


def _runs_as(profile: DeviceProfile, fmt: str) -> str:
    if profile.metric == "bitops":
        return fmt
    f = get_format(fmt)
    if not f.has_roles:
        eff = profile.resolve(fmt)
        return f"{eff} (emulated)" if profile.is_emulated(eff) else eff
    r = _Roles(fmt, profile)  # per_role()'s naming, of the formats each role runs as
    e, emulated = r.eff, [role for role, on in r.emulated.items() if on]
    head = (f"fprop={e['input']}" if e["input"] == e["weight"]
            else f"input={e['input']},weight={e['weight']}")
    runs = e["input"] if len(set(e.values())) == 1 else f"{head},dgrad={e['dgrad']},wgrad={e['wgrad']}"
    if len(emulated) == len(e):
        return f"{runs} (emulated)"
    return runs + (f" (emulated: {', '.join(emulated)})" if emulated else "")
