"""Shared plumbing of the adaptive controllers: config checks, allowed formats, costs, and the
per-layer numerics signals read from :class:`~adaprec.numerics.stats.LayerStats`.

Signals (what every adaptive controller means by "overflow", "flush", "rounding error"):

- range rates (``fp16_overflow``, ``fp16_flush``) take the worst over the layer's output
  activation, its output gradient, its weights and its weight gradients. The monitor evaluates
  every tensor in fp32 (gradients at the loss scale fp16 would see), so the rates describe fp16
  whatever format the layer runs in now.
- rounding error (``bf16_rel_err`` / ``fp16_rel_err``) is the worst over the same tensors. A
  tensor already computed in that format (a bf16 layer's output) reports 0, so the maximum is
  taken over the informative tensors only: the fp32 master weights always, and activations or
  gradients that were produced in another format. This is the *representation* error of the
  layer's tensors in the format, not the accumulated error of its GEMM.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from adaprec.numerics.formats import get_format
from adaprec.numerics.stats import LayerStats
from adaprec.runtime.plan import Plan
from adaprec.runtime.ranges import FORMAT, rule

__all__ = ["canonical_formats", "allowed_formats", "relative_costs",
           "DEFAULT_REL_COST", "RANGE_KINDS", "overflow_rate", "flush_rate", "rel_err",
           "trace_nonfinite", "SLOW_FP16_TYPES", "quant_mse", "cheapest_first",
           "FORMATS_RULE", "FORMAT_RULE", "COST_BUDGET_RULE", "UNIT_RULE", "emitted_plan", "root_format"]

RANGE_KINDS = ("act", "grad", "weight", "wgrad")

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
    """
    if not formats:
        return "fp32"
    counts: dict[str, int] = {}
    for f in formats.values():
        counts[f] = counts.get(f, 0) + 1
    return max(counts, key=lambda f: (counts[f], get_format(f).bits, f))


def emitted_plan(formats: Mapping[str, str]) -> Plan:
    """The Plan a controller emits for per-layer ``formats``: its default is :func:`root_format`.
    Budgets price exactly this plan, so what a controller pays is what the cost model charges."""
    return Plan(formats, default=root_format(formats))


def cheapest_first(formats: Sequence[str], costs: Mapping[str, float], cheapness: Sequence[str]) -> list[str]:
    """Sort ``formats`` by cost, ties broken by the ``cheapness`` order (then fp32 last)."""
    rank = {f: i for i, f in enumerate(cheapness)}
    return sorted(formats, key=lambda f: (costs.get(f, 1.0), rank.get(f, len(rank)), f == "fp32"))


def overflow_rate(s: LayerStats) -> float:
    """Worst fraction of the layer's values that would be inf in fp16 (at the loss scale)."""
    return s.worst("fp16_overflow", RANGE_KINDS)


def flush_rate(s: LayerStats) -> float:
    """Worst fraction of nonzero values that fp16 flushes to zero (at the loss scale)."""
    return s.worst("fp16_flush", RANGE_KINDS)


def rel_err(s: LayerStats, fmt: str) -> float:
    """Relative rounding error of the layer's informative tensors in ``fmt`` (0 for fp32)."""
    if fmt == "fp32":
        return 0.0
    stat = {"bf16": "bf16_rel_err", "fp16": "fp16_rel_err"}.get(fmt)
    return s.worst(stat, RANGE_KINDS) if stat else 0.0


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


def quant_mse(s: LayerStats, fmt: str) -> float:
    """Worst mean squared rounding error of the layer's tensors in ``fmt`` at their true
    magnitude: ``(rel_err * norm)^2 / numel`` per tensor (0 for fp32)."""
    stat = {"bf16": "bf16_rel_err", "fp16": "fp16_rel_err"}.get(fmt)
    if stat is None:
        return 0.0
    out = 0.0
    for kind in RANGE_KINDS:
        t = getattr(s, kind)
        if t is not None and t.numel:
            out = max(out, (getattr(t, stat) * t.norm) ** 2 / t.numel)
    return out
