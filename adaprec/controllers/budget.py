"""Cost budgets: keep a controller's plan at or below a modeled cost relative to all-fp32.

With a cost model (``context.plan_cost``, the model's one pricing function on the configured
profile) a plan's relative cost is exactly what the cost model prices it at: the plan the
controller emits (its default from :func:`~adaprec.controllers._common.root_format`), casts,
launches and the optimizer step included, over the all-fp32 plan; a move's saving is the exact
marginal change. Without one, it is ``sum_l cost[l][fmt_l] / sum_l cost[l]["fp32"]`` over
``context.layer_costs`` (or ``DEFAULT_REL_COST`` with every layer weighing the same).

When numerics push layers up (``pinned``), :meth:`Budget.fit` pays for them by moving other
layers down one format at a time: first layers whose cheaper format is known to be safe,
biggest saving first; then other unpinned layers; the pinned layers themselves only as the
last resort (the budget is a hard limit, so an escalation that no other layer can pay for is
refused). Each move is returned as a trade for the decision log.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from adaprec.controllers._common import DEFAULT_REL_COST, emitted_plan

__all__ = ["Budget"]


class Budget:
    """A hard cap on a plan's modeled relative cost (see module docstring)."""

    def __init__(self, budget: float, orders: Mapping[str, Sequence[str]], context):
        """``orders[layer]``: that layer's allowed formats, cheapest first."""
        self.budget = float(budget)
        self.orders = {k: list(v) for k, v in orders.items()}
        given = context.layer_costs or {}
        self.plan_cost = getattr(context, "plan_cost", None)
        self.costs = {layer: {f: float(given[layer][f]) if layer in given and f in given[layer]
                              else DEFAULT_REL_COST.get(f, 1.0) for f in (*order, "fp32")}
                      for layer, order in self.orders.items()}
        if self.plan_cost is not None:
            self.fp32_total = self.plan_cost(emitted_plan({layer: "fp32" for layer in self.orders}))
        else:
            self.fp32_total = sum(c["fp32"] for c in self.costs.values())
        floor = self.relative({layer: order[0] for layer, order in self.orders.items()})
        if floor > self.budget + 1e-12:
            source = "the cost model" if given or self.plan_cost else "the default relative costs"
            raise ValueError(
                f"controller.cost_budget={self.budget:g} cannot be met: the cheapest allowed plan "
                f"costs {floor:.3f} of all-fp32 ({source}); raise the budget or allow cheaper formats")

    def relative(self, plan: Mapping[str, str]) -> float:
        """Modeled cost of ``plan`` relative to all-fp32."""
        return self._cost(plan) / self.fp32_total

    def _cost(self, plan: Mapping[str, str]) -> float:
        if self.plan_cost is not None:
            return self.plan_cost(emitted_plan(plan))
        return sum(self.costs[layer][plan[layer]] for layer in self.orders)

    def fit(self, plan: dict[str, str], pinned: set[str] = frozenset(),
            safe: Callable[[str, str], bool] = lambda layer, fmt: True) -> list[tuple[str, str, str]]:
        """Move layers of ``plan`` (in place) down until it is within budget; returns the
        trades ``(layer, old, new)`` in the order made."""
        trades = []
        while self.relative(plan) > self.budget + 1e-12:
            move = self._next_move(plan, pinned, safe)
            if move is None:  # cannot happen after the constructor's check, but never loop
                break
            layer, new = move
            trades.append((layer, plan[layer], new))
            plan[layer] = new
        return trades

    def _next_move(self, plan, pinned, safe) -> tuple[str, str] | None:
        tiers: list[list[tuple[float, str, str]]] = [[], [], []]
        for layer, order in self.orders.items():
            idx = order.index(plan[layer]) if plan[layer] in order else len(order)
            if idx == 0:
                continue  # already the cheapest allowed
            cheaper = order[idx - 1]
            if self.plan_cost is not None:
                saving = self._cost(plan) - self._cost({**plan, layer: cheaper})
            else:
                saving = self.costs[layer][plan[layer]] - self.costs[layer][cheaper]
            if saving <= 0:
                continue
            tier = 2 if layer in pinned else (0 if safe(layer, cheaper) else 1)
            tiers[tier].append((saving, layer, cheaper))
        for tier in tiers:
            if tier:
                _, layer, cheaper = max(tier, key=lambda t: (t[0], t[1]))
                return layer, cheaper
        return None
