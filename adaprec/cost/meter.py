"""CostMeter: what the trainer calls each step to log modeled cost next to measured time.

    meter = CostMeter(CostModel.count(model, (x,), loss_fn), profiles=["h100", "local"])
    row.update(meter.update(plan))      # steps.csv: cost_h100_s, cost_local_s (this step's cost)
    metrics.update(meter.metrics())     # metrics.json: cost_<p>_s summed over the run,
                                        # rel_cost_<p>, flop_share_<fmt> (step-weighted)

Prices are cached per plan hash, so a step whose plan did not change costs a dict lookup.
"""
from __future__ import annotations

from collections.abc import Sequence

from adaprec.numerics.formats import FORMATS
from adaprec.runtime.plan import Plan
from adaprec.cost.model import CostModel
from adaprec.cost.profiles import DeviceProfile, load_profile

__all__ = ["CostMeter"]


class CostMeter:
    """Prices each step's plan on every configured profile and accumulates the run's totals."""

    def __init__(self, cost_model: CostModel, profiles: Sequence[str | DeviceProfile] = ("h100",),
                 passes_per_step: int = 1):
        """``passes_per_step``: counted forward+backward passes per optimizer step (gradient
        accumulation over k micro-batches of the counted size: k)."""
        if passes_per_step < 1:
            raise ValueError(f"passes_per_step must be >= 1, got {passes_per_step}")
        if not profiles:
            raise ValueError("CostMeter needs at least one profile, e.g. profiles=['h100']")
        self.cost_model = cost_model
        self.profiles = [load_profile(p) for p in profiles]
        names = [p.name for p in self.profiles]
        if len(set(names)) != len(names):
            raise ValueError(f"profile names must be distinct (they name columns): {names}")
        self._cache: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
        self.steps = 0
        self._cost = {p.name: 0.0 for p in self.profiles}
        self.passes = int(passes_per_step)
        self.fp32_step = {p.name: self.passes * cost_model.price("fp32", p).total for p in self.profiles}
        self._flops = {f: 0.0 for f in FORMATS}

    def _priced(self, plan: Plan):
        if plan.hash not in self._cache:
            columns = {f"cost_{p.name}_{p.unit}": self.passes * self.cost_model.price(plan, p).total
                       for p in self.profiles}
            self._cache[plan.hash] = (columns, self.cost_model.flop_shares(plan))
        return self._cache[plan.hash]

    def step_columns(self, plan: Plan) -> dict[str, float]:
        """``{cost_<profile>_<unit>: modeled cost of one step}`` under ``plan`` (no accumulation)."""
        return dict(self._priced(plan)[0])

    def update(self, plan: Plan) -> dict[str, float]:
        """Count one training step run under ``plan``; returns its :meth:`step_columns`."""
        columns, shares = self._priced(plan)
        self.steps += 1
        for p in self.profiles:
            self._cost[p.name] += columns[f"cost_{p.name}_{p.unit}"]
        for f, share in shares.items():
            self._flops[f] += share
        return dict(columns)

    def metrics(self) -> dict[str, float]:
        """Run totals: ``cost_<p>_<unit>`` (sum over steps), ``rel_cost_<p>`` (vs all-fp32 steps),
        ``flop_share_<fmt>`` (share of the run's FLOPs per format)."""
        out: dict[str, float] = {}
        for p in self.profiles:
            out[f"cost_{p.name}_{p.unit}"] = self._cost[p.name]
            fp32_run = self.steps * self.fp32_step[p.name]
            out[f"rel_cost_{p.name}"] = self._cost[p.name] / fp32_run if fp32_run else float("nan")
        for f, n in self._flops.items():
            out[f"flop_share_{f}"] = n / self.steps if self.steps else float("nan")
        return out

    # -- run state (checkpoints) ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """The run totals (prices are recomputed from the model and profiles on resume)."""
        return {"steps": self.steps, "cost": dict(self._cost), "flops": dict(self._flops)}

    def load_state_dict(self, state: dict) -> None:
        """Continue the totals :meth:`state_dict` captured."""
        self.steps = int(state["steps"])
        self._cost.update(state["cost"])
        self._flops.update(state["flops"])

    @property
    def controller_profile(self) -> DeviceProfile:
        """The profile controllers see: the first configured one that prices in seconds."""
        return next((p for p in self.profiles if p.metric == "seconds"), self.profiles[0])

    def layer_format_costs(self, profile: str | DeviceProfile | None = None) -> dict[str, dict[str, float]]:
        """``{layer: {fmt: cost of one pass}}`` on ``profile`` (default :attr:`controller_profile`)."""
        return self.cost_model.layer_format_costs(profile if profile is not None else self.controller_profile)

    def cheapness(self, formats: Sequence[str] = ("bf16", "fp16", "fp32")) -> list[str]:
        """``formats`` cheapest first on :attr:`controller_profile` (ties keep the given order)."""
        return self.cost_model.cheapness_order(self.controller_profile, formats)
