"""The search behind :mod:`adaprec.tools.best_static`: fixed per-layer plans, their modeled cost
and their measured quality, and the cost/quality front of the plans measured.

Pure functions over two callables, so any quality measure and any cost model plug in (the tool
measures quality by training each plan briefly; tests use synthetic ones):

- ``evaluate(plan) -> (quality, status)``: ``status`` ``"ok"`` or why the plan failed
  (``"diverged"``, ``"failed: ..."``); a failed plan's quality is NaN.
- ``cost(plan) -> float``: modeled cost, any unit (the tool: relative to all-fp32).

Two searches:

- :func:`exhaustive` — every plan of ``formats ** len(layers)`` (the tool uses it up to
  ``max_exhaustive`` plans, default ``4 ** 6``).
- :func:`greedy` — beyond that, on measured sensitivity: the reference plan (every layer in the
  first, most precise format), each uniform plan, each layer alone in each other format (its
  quality drop and cost saving measured), then a walk from the reference that applies single-layer
  changes in order of saving per unit of drop, keeping a change when the combined plan (measured
  again) stays within ``tolerance``. Every plan measured is a candidate.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Candidate", "Search", "plan_space_size", "exhaustive", "greedy", "quality_drop",
           "pareto_front", "select_plans"]

Evaluate = Callable[[dict[str, str]], tuple[float, str]]
Cost = Callable[[dict[str, str]], float]
_EPS = 1e-4  # drops are floored at this, so free changes go first (biggest saving first)


@dataclass(frozen=True)
class Candidate:
    """One measured plan: ``plan`` (every layer named), ``cost``, ``quality`` (NaN unless ok)."""
    plan: dict[str, str] = field(hash=False)
    cost: float
    quality: float
    status: str
    stage: str  # reference | uniform | exhaustive | sensitivity | greedy

    @property
    def ok(self) -> bool:
        return self.status == "ok" and math.isfinite(self.quality)

    def formats(self) -> set[str]:
        return set(self.plan.values())


def quality_drop(reference: float, quality: float, higher_is_better: bool, absolute: bool) -> float:
    """How much worse ``quality`` is than ``reference``: absolute (accuracy points) or relative
    (perplexity, RMSE); ``inf`` for a non-finite quality."""
    if not math.isfinite(quality):
        return math.inf
    diff = reference - quality if higher_is_better else quality - reference
    return diff if absolute else diff / abs(reference) if reference else diff


def plan_space_size(n_layers: int, n_formats: int) -> int:
    return n_formats ** n_layers


class Search:
    """Measured plans, each measured once (plans are keyed by their layer -> format items)."""

    def __init__(self, layers: Sequence[str], formats: Sequence[str], evaluate: Evaluate, cost: Cost,
                 higher_is_better: bool, absolute_drop: bool):
        if not layers or not formats:
            raise ValueError("a plan search needs at least one layer and one format")
        self.layers, self.formats = list(layers), list(formats)
        self._evaluate, self._cost = evaluate, cost
        self.higher_is_better, self.absolute_drop = higher_is_better, absolute_drop
        self.measured: dict[tuple, Candidate] = {}

    def measure(self, plan: dict[str, str], stage: str) -> Candidate:
        key = tuple(plan[layer] for layer in self.layers)
        if key not in self.measured:
            quality, status = self._evaluate(dict(plan))
            self.measured[key] = Candidate(dict(plan), float(self._cost(plan)),
                                           float(quality) if status == "ok" else math.nan, status, stage)
        return self.measured[key]

    def uniform(self, fmt: str) -> dict[str, str]:
        return {layer: fmt for layer in self.layers}

    def drop(self, reference: Candidate, c: Candidate) -> float:
        return quality_drop(reference.quality, c.quality if c.ok else math.nan,
                            self.higher_is_better, self.absolute_drop)


def exhaustive(search: Search) -> list[Candidate]:
    """Measure every plan (reference and uniform plans first)."""
    search.measure(search.uniform(search.formats[0]), "reference")
    for fmt in search.formats[1:]:
        search.measure(search.uniform(fmt), "uniform")
    for combo in itertools.product(search.formats, repeat=len(search.layers)):
        search.measure(dict(zip(search.layers, combo)), "exhaustive")
    return list(search.measured.values())


def greedy(search: Search, tolerance: float) -> list[Candidate]:
    """Sensitivity, then a greedy walk from the reference (see the module docstring)."""
    ref_fmt = search.formats[0]
    reference = search.measure(search.uniform(ref_fmt), "reference")
    for fmt in search.formats[1:]:
        search.measure(search.uniform(fmt), "uniform")
    moves = []
    for layer in search.layers:
        for fmt in search.formats[1:]:
            c = search.measure({**reference.plan, layer: fmt}, "sensitivity")
            saving, drop = reference.cost - c.cost, search.drop(reference, c)
            if saving > 0 and drop <= tolerance:
                moves.append((saving / max(drop, _EPS), saving, layer, fmt))
    current = reference
    for _, _, layer, fmt in sorted(moves, key=lambda m: (-m[0], -m[1], m[2], m[3])):
        if current.plan[layer] != ref_fmt:
            continue  # this layer already took a cheaper admissible format
        trial = {**current.plan, layer: fmt}
        if search._cost(trial) >= current.cost:
            continue  # casts around it cost more than it saves here
        c = search.measure(trial, "greedy")
        if search.drop(reference, c) <= tolerance:
            current = c
    return list(search.measured.values())


def pareto_front(candidates: Sequence[Candidate], higher_is_better: bool, min_gain: float = 0.0,
                 absolute_gain: bool = False) -> list[Candidate]:
    """The measured plans no other ok plan beats on both cost and quality, cheapest first
    (failed plans are never on it). A dearer plan joins only if it improves on the last one
    by more than ``min_gain`` (absolute, or relative to the last one's quality), so noise-level
    gains do not buy cost."""
    sign = 1.0 if higher_is_better else -1.0
    front: list[Candidate] = []
    for c in sorted((c for c in candidates if c.ok), key=lambda c: (c.cost, -sign * c.quality)):
        if not front:
            front.append(c)
            continue
        last = front[-1].quality
        gain = sign * (c.quality - last) / (1.0 if absolute_gain else abs(last) or 1.0)
        if gain > min_gain:
            front.append(c)
    return front


def select_plans(front: Sequence[Candidate], reference: Candidate, max_plans: int, tolerance: float,
                 higher_is_better: bool, absolute_drop: bool, skip_uniform: bool = True) -> list[Candidate]:
    """Up to ``max_plans`` front plans to train in full, cheapest first: the cheapest within
    ``tolerance`` of the reference, the best measured, then the widest cost gaps filled. Uniform
    plans are skipped when ``skip_uniform`` (the static baselines train them already)."""
    pool = [c for c in front if not (skip_uniform and len(c.formats()) == 1)]
    if not pool or max_plans < 1:
        return []
    within = [c for c in pool if quality_drop(reference.quality, c.quality, higher_is_better,
                                              absolute_drop) <= tolerance]
    picks = ([within[0]] if within else []) + [pool[-1]]
    while len({id(c) for c in picks}) < min(max_plans, len(pool)):
        chosen = sorted({id(c): c for c in picks}.values(), key=lambda c: c.cost)
        rest = [c for c in pool if all(c is not p for p in chosen)]
        # the plan farthest (in cost) from every plan already chosen
        picks.append(max(rest, key=lambda c: min(abs(c.cost - p.cost) for p in chosen)))
    return sorted({id(c): c for c in picks}.values(), key=lambda c: c.cost)[:max_plans]
