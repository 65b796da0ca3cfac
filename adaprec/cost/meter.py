"""CostMeter: what the trainer calls each step to log modeled cost next to measured time.

    meter = CostMeter(CostModel.count(model, (x,), loss_fn), profiles=["h100", "local"])
    row.update(meter.update(plan))      # steps.csv: cost_h100_s, cost_local_s (this step's cost)
    row.update(meter.memory_columns(plan))   # steps.csv: mem_h100_bytes (modeled, this step)
    metrics.update(meter.metrics())     # metrics.json: cost_<p>_s summed over the run,
                                        # rel_cost_<p>, flop_share_<fmt> (step-weighted),
                                        # mem_<p>_bytes (the run's modeled peak)

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
        self.fp32_step = {p.name: self._step_cost("fp32", p) for p in self.profiles}
        self._flops = {f: 0.0 for f in FORMATS}
        self._memory: dict[str, dict[str, int]] = {}
        self._mem_peak: dict[str, int] = {}

    def _step_cost(self, plan, profile: DeviceProfile) -> float:
        """One optimizer step: ``passes`` forward+backward passes, one optimizer update."""
        cost = self.cost_model.price(plan, profile)
        return self.passes * (cost.total - cost.optimizer) + cost.optimizer

    def _priced(self, plan: Plan):
        if plan.hash not in self._cache:
            columns = {f"cost_{p.name}_{p.unit}": self._step_cost(plan, p) for p in self.profiles}
            self._cache[plan.hash] = (columns, self.cost_model.flop_shares(plan))
        return self._cache[plan.hash]

    def memory_columns(self, plan: Plan) -> dict[str, int]:
        """``{mem_<profile>_bytes: modeled bytes}`` of a step under ``plan`` (weights, gradients,
        optimizer state, saved activations; see :mod:`adaprec.cost.memory`), per seconds profile."""
        if plan.hash not in self._memory:
            # activations of one micro-batch: accumulation frees each pass's before the next
            self._memory[plan.hash] = {f"mem_{p.name}_bytes": self.cost_model.memory(plan, p).total
                                       for p in self.profiles if p.metric == "seconds"}
        out = self._memory[plan.hash]
        for k, v in out.items():
            self._mem_peak[k] = max(self._mem_peak.get(k, 0), v)
        return dict(out)

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
        out.update(self._mem_peak)
        return out

    # -- run state (checkpoints) ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """The run totals (prices are recomputed from the model and profiles on resume)."""
        return {"steps": self.steps, "cost": dict(self._cost), "flops": dict(self._flops),
                "mem_peak": dict(self._mem_peak)}

    def load_state_dict(self, state: dict) -> None:
        """Continue the totals :meth:`state_dict` captured."""
        self.steps = int(state["steps"])
        self._cost.update(state["cost"])
        self._flops.update(state["flops"])
        self._mem_peak.update(state.get("mem_peak", {}))  # checkpoints before memory: none

    @property
    def controller_profile(self) -> DeviceProfile:
        """The profile controllers see: the first configured one (``cost.profiles[0]``; a workload
        whose roofline is launch-bound may put ``bitops`` first to decide on arithmetic)."""
        return self.profiles[0]

    def layer_format_costs(self, profile: str | DeviceProfile | None = None) -> dict[str, dict[str, float]]:
        """``{layer: {fmt: cost of one pass}}`` on ``profile`` (default :attr:`controller_profile`)."""
        return self.cost_model.layer_format_costs(profile if profile is not None else self.controller_profile)

    def plan_cost(self, plan: Plan) -> float:
        """Modeled cost of one pass (seconds, or bit operations) under ``plan`` on
        :attr:`controller_profile`: the cost
        model's pricing function, which controllers and budgets call."""
        return self.cost_model.total(plan, self.controller_profile)

    def cheapness(self, formats: Sequence[str] = ("bf16", "fp16", "fp32")) -> list[str]:
        """``formats`` cheapest first on :attr:`controller_profile` (ties keep the given order)."""
        return self.cost_model.cheapness_order(self.controller_profile, formats)
