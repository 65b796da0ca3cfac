"""Shared plumbing of the adaptive controllers: config checks, allowed formats, costs, and the
per-layer numerics signals read from :class:`~adaprec.numerics.stats.LayerStats`.

Signals (what every adaptive controller means by "overflow", "flush", "rounding error"), for
any format the monitor judged (:class:`~adaprec.numerics.stats.FormatError`):

- range rates (``overflow_rate(s, fmt)``, ``flush_rate(s, fmt)``) take the worst over the
  layer's input activation, output, output gradient, weights and weight gradients, each at the
  scale ``fmt`` really uses (the loss scale for fp16, per-tensor or block scales for fp8/MX).
  The monitor measures the GEMM operands in fp32 before any cast (the output gradient before
  the layer's own rounding), so the rates describe ``fmt`` whatever the layer runs in now.
- rounding error (``rel_err``) and Transformer Engine's quantization MSE (``quant_mse``) are
  the worst over the same tensors. A tensor a previous layer already produced in ``fmt``
  reports 0 for it (it *is* on the grid); the output error of the layer's own GEMM is the
  shadow measurement (``LayerStats.shadow``), not a representation error.
- A format the monitor did not judge is unknown, and unknown is not safe: its rates and errors
  are inf (fp8 is never taken for exact).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from adaprec.numerics.formats import get_format
from adaprec.numerics.stats import LayerStats
from adaprec.runtime.plan import Plan
from adaprec.runtime.ranges import FORMAT, rule

__all__ = ["canonical_formats", "allowed_formats", "relative_costs",
           "DEFAULT_REL_COST", "RANGE_KINDS", "OPERANDS", "overflow_rate", "flush_rate", "rel_err",
           "trace_nonfinite", "SLOW_FP16_TYPES", "quant_mse", "cheapest_first",
           "FORMATS_RULE", "FORMAT_RULE", "COST_BUDGET_RULE", "UNIT_RULE", "emitted_plan", "root_format",
           "PlanPricer"]

RANGE_KINDS = ("input", "act", "grad", "weight", "wgrad")
OPERANDS = ("input", "weight", "grad")  # what the layer's fprop / dgrad / wgrad GEMMs consume

# Default cost of a layer in each format relative to fp32, used when no cost model is wired:
# 16-bit halves memory traffic and (on tensor cores / AMX) at least halves GEMM time.
# fp8 (emulated) is priced at a quarter. Ties are broken by ControllerContext.cheapness.
DEFAULT_REL_COST = {"fp32": 1.0, "bf16": 0.5, "fp16": 0.5, "fp8_e4m3": 0.25, "fp8_e5m2": 0.25}

# Native fp16 convolution *training* on CPU runs reference kernels (orders of magnitude slower
# than bf16 with AMX/oneDNN), so these layer types never get fp16 on CPU with the native executor.
SLOW_FP16_TYPES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                   "ConvTranspose3d")


# The range rules every controller declares the same way (``@ranges`` beside each class).
FORMATS_RULE = rule(each=True, nonempty=True, **FORMAT)      # a non-empty list of format names
FORMAT_RULE = rule(**FORMAT)                                   # one format name
COST_BUDGET_RULE = rule(gt=0, why="relative to all-fp32")      # None = no budget
UNIT_RULE = rule(ge=0, le=1)                                   # a rate or a fraction


def canonical_formats(formats: Iterable[str]) -> list[str]:
    """Canonical names of ``formats`` (aliases resolved, duplicates dropped, order kept); the
    names were checked by the class's ``FORMATS_RULE``."""
    return list(dict.fromkeys(get_format(f).name for f in formats))


def allowed_formats(formats: Sequence[str], layer: str, context, cpu_fp16: bool = False) -> list[str]:
    """The formats ``layer`` may use on this device.

    With the native executor on CPU, fp16 is dropped: PyTorch's CPU fp16 training kernels are
    slow (a 512x512 Linear forward+backward measured ~5x slower than fp32 and ~13x slower than
    bf16 here; convolutions far worse). ``cpu_fp16=True`` keeps fp16 for non-convolution layers
    (small models, tests); convolutions never get it. Emulation-only formats (fp8) need a
    non-native executor. A format the executor cannot run for this layer
    (``context.runs``) is never allowed.
    """
    types = context.layer_types or {}
    slow_fp16 = context.device_type == "cpu" and context.executor == "native"
    runs = getattr(context, "runs", None)
    out = []
    for f in formats:
        if context.executor == "native" and not get_format(f).native:
            continue
        if f == "fp16" and slow_fp16 and (not cpu_fp16 or types.get(layer) in SLOW_FP16_TYPES):
            continue
        if runs is not None and not runs(layer, f):
            continue
        out.append(f)
    return out or ["fp32"]


def relative_costs(context, formats: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{layer: {fmt: cost}}`` normalized so each layer's fp32 cost is 1.

    From ``context.layer_costs`` (the cost model's :meth:`~adaprec.cost.CostModel.layer_format_costs`:
    the layer's cost in the all-fp32 plan plus the exact marginal cost of switching it, casts
    included) when given, else :data:`DEFAULT_REL_COST`.
    Per-layer normalization makes ``cost_weight`` mean the same thing for every layer: the
    reward weighs a layer's *relative* saving against that layer's numerics.
    """
    out: dict[str, dict[str, float]] = {}
    for layer in context.layers:
        given = (context.layer_costs or {}).get(layer)
        if given and given.get("fp32", 0) > 0:
            out[layer] = {f: float(given.get(f, given["fp32"])) / float(given["fp32"]) for f in formats}
        else:
            out[layer] = {f: DEFAULT_REL_COST.get(f, 1.0) for f in formats}
    return out


def root_format(formats: Mapping[str, str]) -> str:
    """The format for code outside every layer (the plan's default): the one most layers use.

    Residual adds, pooling and functional activations between layers then run in their
    neighbours' format, so a mostly-bf16 plan does not pay an fp32 round trip (a cast up after
    every layer and down before the next) around each of them: measured 1.15x step time on
    ResNet-18 with an fp32 default. Ties go to the more precise format.

    Never fp16 while a layer runs bf16: the code between layers would receive that layer's
    output cast to fp16 (what one autocast region gives), overflowing the range the layer was
    moved to bf16 for; bf16 holds every fp16 value's range instead.
    """
    if not formats:
        return "fp32"
    counts: dict[str, int] = {}
    for f in formats.values():
        counts[f] = counts.get(f, 0) + 1
    root = max(counts, key=lambda f: (counts[f], get_format(f).bits, f))
    return "bf16" if root == "fp16" and "bf16" in counts else root


def emitted_plan(formats: Mapping[str, str]) -> Plan:
    """The Plan a controller emits for per-layer ``formats``: its default is :func:`root_format`.
    Budgets price exactly this plan, so what a controller pays is what the cost model charges."""
    return Plan(formats, default=root_format(formats))


def cheapest_first(formats: Sequence[str], costs: Mapping[str, float], cheapness: Sequence[str]) -> list[str]:
    """Sort ``formats`` by cost, ties broken by the ``cheapness`` order (then fp32 last)."""
    rank = {f: i for i, f in enumerate(cheapness)}
    return sorted(formats, key=lambda f: (costs.get(f, 1.0), rank.get(f, len(rank)), f == "fp32"))


def overflow_rate(s: LayerStats, fmt: str = "fp16", kinds: Sequence[str] = RANGE_KINDS) -> float:
    """Worst fraction of the layer's values beyond ``fmt``'s range at its real scale."""
    return s.worst_error(fmt, "overflow", kinds)


def flush_rate(s: LayerStats, fmt: str = "fp16", kinds: Sequence[str] = RANGE_KINDS) -> float:
    """Worst fraction of nonzero values ``fmt`` flushes to zero at its real scale."""
    return s.worst_error(fmt, "underflow", kinds)


def rel_err(s: LayerStats, fmt: str, kinds: Sequence[str] = RANGE_KINDS) -> float:
    """Relative rounding error of the layer's tensors in ``fmt`` (0 for fp32, inf if unjudged)."""
    return 0.0 if fmt == "fp32" else s.worst_error(fmt, "rel_err", kinds)


def trace_nonfinite(stats: Mapping[str, LayerStats], layers: Sequence[str]) -> str | None:
    """The layer that non-finite values start at, or None.

    Forward first: the first layer (forward order) whose output holds inf/NaN; everything
    downstream inherits it. Else backward: a layer whose weight gradient is non-finite while its
    output gradient is finite produced the bad value itself; else the last layer (forward order,
    i.e. the first reached in backward) whose output gradient is non-finite.
    """
    def bad(s: LayerStats, kind: str) -> bool:
        t = getattr(s, kind)
        return t is not None and t.nonfinite_frac > 0

    present = [name for name in layers if name in stats]
    for name in present:
        if bad(stats[name], "act"):
            return name
    for name in reversed(present):
        if bad(stats[name], "wgrad") and not bad(stats[name], "grad"):
            return name
    for name in reversed(present):
        if bad(stats[name], "grad"):
            return name
    return None


def quant_mse(s: LayerStats, fmt: str, kinds: Sequence[str] = RANGE_KINDS) -> float:
    """Worst mean squared rounding error of the layer's tensors in ``fmt`` at their true
    magnitude (0 for fp32, inf if unjudged): Transformer Engine's quantization MSE."""
    return 0.0 if fmt == "fp32" else s.worst_error(fmt, "mse", kinds)


class PlanPricer:
    """Prices a per-layer format assignment the way the cost model charges it: the whole plan
    the controller would emit (casts between neighbours, launches, the optimizer step
    included) relative to all-fp32, so a switch costs what it really changes, not a per-layer
    figure measured against an all-fp32 neighbourhood. Without a cost model: the mean of the
    layers' relative costs (``relative_costs``)."""

    def __init__(self, context, formats: Sequence[str]):
        self.layers = list(context.layers)
        self.plan_cost = getattr(context, "plan_cost", None)
        self.rel = relative_costs(context, list(dict.fromkeys([*formats, "fp32"])))
        self._layer_fp32 = {n: float(c["fp32"]) for n, c in (context.layer_costs or {}).items()
                            if c.get("fp32", 0) > 0}
        self._cache: dict[tuple, float] = {}
        self.fp32_total = (self.plan_cost(emitted_plan({n: "fp32" for n in self.layers}))
                           if self.plan_cost is not None else float(len(self.layers) or 1))

    def cost(self, formats: Mapping[str, str]) -> float:
        """Modeled cost of the plan with these per-layer formats, relative to all-fp32."""
        key = tuple(formats[n] for n in self.layers)
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            raw = (self.plan_cost(emitted_plan(dict(formats))) if self.plan_cost is not None
                   else sum(self.rel[n].get(formats[n], 1.0) for n in self.layers))
            self._cache[key] = raw / self.fp32_total
        return self._cache[key]

    def layer_cost(self, formats: Mapping[str, str], layer: str, fmt: str) -> float:
        """``layer``'s cost in ``fmt`` in units of its own fp32 cost, with the rest of the plan as
        in ``formats``: ``1 +`` the plan's change from ``layer`` in fp32 to ``layer`` in
        ``fmt`` (casts to and from its neighbours included) over the layer's fp32 cost. Without
        a cost model: ``relative_costs``."""
        if self.plan_cost is None or layer not in self._layer_fp32:
            return self.rel[layer].get(fmt, 1.0)
        share = self._layer_fp32[layer] / self.fp32_total
        delta = self.with_layer(formats, layer, fmt) - self.with_layer(formats, layer, "fp32")
        return 1.0 + delta / share

    def with_layer(self, formats: Mapping[str, str], layer: str, fmt: str) -> float:
        """The plan's relative cost with ``layer`` switched to ``fmt`` (the others unchanged)."""
        return self.cost({**formats, layer: fmt})

    def cheapest(self, formats: Mapping[str, str], layer: str, candidates: Sequence[str],
                 cheapness: Sequence[str] = ()) -> list[str]:
        """``candidates`` for ``layer`` sorted by the plan cost each leads to (ties: ``cheapness``
        order, then fp32 last)."""
        rank = {f: i for i, f in enumerate(cheapness)}
        return sorted(candidates, key=lambda f: (round(self.with_layer(formats, layer, f), 12),
                                                 rank.get(f, len(rank)), f == "fp32"))

    def best(self, candidates: Mapping[str, Sequence[str]], cheapness: Sequence[str] = (),
             passes: int = 3) -> dict[str, str]:
        """A cheap plan choosing each layer's format from ``candidates[layer]``: coordinate
        descent on the plan cost (each layer in turn to its cheapest candidate given the
        others, a few passes) from two starts, every layer on its own cheapest candidate and
        every layer on its most expensive one (casts make the landscape non-separable: one
        layer alone in bf16 between fp32 neighbours can cost more than all of them in fp32);
        the cheaper result wins."""
        rank = {f: i for i, f in enumerate(cheapness)}
        order = {n: sorted(c, key=lambda f: (self.rel[n].get(f, 1.0), rank.get(f, len(rank)), f == "fp32"))
                 for n, c in candidates.items()}
        results = []
        for start in ({n: o[0] for n, o in order.items()}, {n: o[-1] for n, o in order.items()}):
            plan = dict(start)
            for _ in range(passes):
                changed = False
                for n in self.layers:
                    if n not in order:
                        continue
                    pick = self.cheapest(plan, n, order[n], cheapness)[0]
                    changed |= pick != plan[n]
                    plan[n] = pick
                if not changed:
                    break
            results.append(plan)
        return min(results, key=self.cost)
