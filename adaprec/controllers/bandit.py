"""Bandit: one multi-armed bandit per layer over its allowed formats.

Every ``interval`` steps each layer's bandit is credited for the format it ran in during the
window just ended (the arm it played), then picks the format for the next window.

**Reward** of arm ``f`` for layer ``l`` (raw, <= 0)::

    r = -cost_weight * cost[l][f] - min(1, penalty[l][f])
    penalty = nonfinite_penalty * [non-finite values traced to l while in f]
            + overflow_weight * overflow rate of f      (at f's real scale)
            + underflow_weight * flush-to-zero rate of f (at the loss scale for fp16, at
                                                          per-tensor/block scales for fp8/MX)
            + err_weight * relative rounding error in f  (0 for fp32; every format judged)
            + output_weight * output error in f         (RMSE over the output's spread against
                                                          the fp32 shadow, ``Window.output_err``)
            + spike_weight * loss spike                 (the quality effect, see below)

``cost[l][f]`` is the layer's cost in ``f`` in units of its fp32 cost, priced at plan level
(:meth:`~adaprec.controllers._common.PlanPricer.layer_cost`: the whole plan's modeled change
when the layer moves from fp32 to ``f`` with the other layers as they are, casts to and from
its neighbours included; without a cost model ``DEFAULT_REL_COST``). The policies see
``1 + r / (cost_weight + 1)`` in [0, 1].

**Quality.** The loss spike is the measured effect on the training loss: ``max(0, window mean
loss / baseline - 1 - spike_tol)`` against an exponential moving average of earlier windows'
mean loss, plus the fraction of skipped steps no layer was blamed for. It goes to the layers
that *switched* into the arm they played in the window (an exploration's effect on quality
lands on the exploring layers); when no layer switched, every layer that played a non-fp32 arm
shares it (fp32 cannot have caused it).

**Credit assignment.** Layer-local signals (range, rounding, traced non-finite values) go to
that layer's arm only. Because the monitor judges every candidate format on every tensor
whatever format the layer ran in, the numerics penalty of *every* arm is known each sampled
window: the full information Hedge uses (only the quality effect stays bandit feedback). The
other algorithms learn from the played arm only.

**Exploration that does not wreck training.** An arm that produced non-finite values is blocked
for ``block_windows`` decisions; an arm whose numerics penalty in the last sampled window
reached ``explore_max`` is not offered (fp16 on a layer whose gradients it would flush, say:
its rates are measured without playing it); fp16 is not offered to a layer whose last fp16
overflow rate exceeds ``range_max``; a layer keeps an arm for at least ``min_dwell`` windows
before the policy may move it (a switch cost: each switch changes the casts around the layer and
its effect needs windows to show), unless the arm became unsafe. On CPU with the native executor
fp16 is dropped (``allowed_formats``). A window without a sampled step updates nothing.

**Regret.** Each window's reward of every arm (the quality effect of unplayed arms taken as 0)
is summed per arm; :meth:`summary` reports, per layer, the pulls of each arm, their mean
reward, and the regret against the best fixed arm in hindsight (that arm's summed reward minus
the reward earned), and the per-window trace (``trace``: the decision step that closed each
window with evidence, the arm played in it, and every arm's reward that window, exactly the values
summed for the regret); the training app writes it to ``controller.json`` in the run directory
(``analysis.bandits`` draws regret over training and reward traces from it). The trace is
bookkeeping only: it copies values the decision already computed and feeds nothing back.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from adaprec.runtime.plan import Plan
from adaprec.controllers._common import (COST_BUDGET_RULE, FORMATS_RULE, UNIT_RULE, PlanPricer,
                                        allowed_formats, canonical_formats, cheapest_first,
                                        emitted_plan, relative_costs)
from adaprec.controllers.budget import Budget
from adaprec.controllers._window import Window, summarize_step
from adaprec.controllers.base import Controller, ControllerContext, StepRecord
from adaprec.controllers.policies import POLICIES, Policy, make_policy
from adaprec.runtime.ranges import ranges, rule

__all__ = ["Bandit"]


_NONNEG = rule(ge=0)


@ranges("controller", algorithm=rule(names=POLICIES), formats=FORMATS_RULE, interval=rule(ge=1),
        cost_weight=_NONNEG, nonfinite_penalty=_NONNEG, overflow_weight=_NONNEG,
        underflow_weight=_NONNEG, err_weight=_NONNEG, output_weight=_NONNEG, spike_weight=_NONNEG, spike_tol=_NONNEG,
        baseline_decay=UNIT_RULE, block_windows=_NONNEG, range_max=UNIT_RULE,
        exploration=_NONNEG, discount=rule(gt=0, le=1), window=rule(ge=1), sigma=_NONNEG,
        exp3_gamma=UNIT_RULE, eta=_NONNEG, cost_budget=COST_BUDGET_RULE, explore_max=rule(gt=0),
        min_dwell=rule(ge=1))
class Bandit(Controller):
    """Per-layer bandits choosing each layer's format (see module docstring for the reward).

    Args:
        algorithm: ucb1 | discounted_ucb | sliding_window_ucb | thompson | exp3 | hedge.
        formats: the arms (fp16 is dropped on CPU with the native executor unless cpu_fp16).
        interval: steps per decision window.
        cost_weight: weight of the normalized cost against the numerics penalty.
        exploration, discount, window, sigma, exp3_gamma, eta: the algorithms' knobs (UCB c,
            D-UCB gamma, SW-UCB window in decisions, Thompson noise, EXP3 mixing, Hedge rate).
        seed: seeds the generator the randomized algorithms draw from (the CLI passes the
            run's ``seed``).
        explore_max: arms whose last numerics penalty reached this are not offered.
        min_dwell: windows a layer keeps an arm before the policy may move it.
    """

    def __init__(self, algorithm: str = "ucb1", formats: Sequence[str] = ("bf16", "fp16", "fp32"),
                 interval: int = 10, cost_weight: float = 1.0, nonfinite_penalty: float = 1.0,
                 overflow_weight: float = 100.0, underflow_weight: float = 10.0,
                 err_weight: float = 10.0, output_weight: float = 5.0, spike_weight: float = 1.0, spike_tol: float = 0.1,
                 baseline_decay: float = 0.8, block_windows: int = 5, range_max: float = 0.0,
                 exploration: float = 0.2, discount: float = 0.95, window: int = 20,
                 sigma: float = 0.1, exp3_gamma: float = 0.1, eta: float = 2.0, seed: int = 0,
                 cpu_fp16: bool = False, cost_budget: float | None = None, explore_max: float = 0.5,
                 min_dwell: int = 3):
        self.algorithm = str(getattr(algorithm, "value", algorithm))  # an Enum from the typed config
        self.formats = canonical_formats(formats)
        self.interval, self.cost_weight = int(interval), float(cost_weight)
        self.weights = {"nonfinite": nonfinite_penalty, "overflow": overflow_weight,
                        "underflow": underflow_weight, "err": err_weight, "output": output_weight,
                        "spike": spike_weight}
        self.spike_tol, self.baseline_decay = float(spike_tol), float(baseline_decay)
        self.block_windows, self.range_max = int(block_windows), float(range_max)
        self.explore_max, self.min_dwell = float(explore_max), int(min_dwell)
        self.params = {"ucb1": {"c": exploration}, "discounted_ucb": {"c": exploration, "gamma": discount},
                       "sliding_window_ucb": {"c": exploration, "window": window},
                       "thompson": {"sigma": sigma}, "exp3": {"gamma": exp3_gamma},
                       "hedge": {"eta": eta}}[self.algorithm]
        self.seed, self.cpu_fp16 = int(seed), bool(cpu_fp16)
        self.cost_budget = cost_budget
        self._budget: Budget | None = None
        self.reasons: dict[str, str] = {}
        self._layers: list[str] = []
        self._arms: dict[str, list[str]] = {}
        self._policy: dict[str, Policy] = {}
        self._pricer: PlanPricer | None = None
        self._rng = torch.Generator().manual_seed(self.seed)
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._fmt: dict[str, str] = {}
        self._window: dict[str, Window] = {}
        self._last_overflow: dict[str, float] = {}
        self._last_penalty: dict[str, dict[str, float]] = {}
        self._blocked: dict[str, dict[str, int]] = {}
        self._dwell: dict[str, int] = {}
        self._switched: set[str] = set()  # layers that switched into the arm they play now
        self._cum: dict[str, dict[str, float]] = {}    # summed reward per arm (regret)
        self._pulls: dict[str, dict[str, int]] = {}
        self._earned: dict[str, float] = {}
        self._trace: dict[str, dict] = {}  # per window with evidence: step, played arm, rewards
        self._loss_sum, self._loss_n, self._skipped, self._steps = 0.0, 0, 0, 0
        self._baseline: float | None = None

    # -- protocol -------------------------------------------------------------------------------
    def setup(self, context: ControllerContext) -> None:
        self._layers = list(context.layers)
        costs = relative_costs(context, self.formats)
        self._pricer = PlanPricer(context, self.formats)
        self._reset_run_state()
        for layer in self._layers:
            allowed = allowed_formats(self.formats, layer, context, self.cpu_fp16)
            self._arms[layer] = cheapest_first(allowed, costs[layer], context.cheapness)
            self._policy[layer] = make_policy(self.algorithm, len(self._arms[layer]), **self.params)
            self._blocked[layer] = {}
            self._dwell[layer] = 0
            self._cum[layer] = {f: 0.0 for f in self._arms[layer]}
            self._pulls[layer] = {f: 0 for f in self._arms[layer]}
            self._earned[layer] = 0.0
            self._trace[layer] = _empty_trace(self._arms[layer])
        if self.cost_budget is not None:
            self._budget = Budget(self.cost_budget, self._arms, context)

    def observe(self, record: StepRecord) -> None:
        self._steps += 1
        finite = record.loss == record.loss and abs(record.loss) != float("inf")
        if finite:
            self._loss_sum += record.loss
            self._loss_n += 1
        traced = summarize_step(record.stats, self._layers, record.plan,
                                record.nonfinite_layer, self.formats)
        self._skipped += record.skipped and not any(w.nonfinite for w in traced.values())
        for layer, w in traced.items():
            self._window.setdefault(layer, Window()).add(w)
            if w.samples:
                self._last_overflow[layer] = w.overflow

    def decide(self, step: int) -> Plan:
        if not self._layers:
            raise RuntimeError("Bandit.setup() must run before decide()")
        if not self._fmt:
            self.reasons = {}
            for layer in self._layers:
                self._fmt[layer] = self._select(layer, "first pick")
            self._fit_budget(set())
            self._switched = set(self._layers)
        elif step % self.interval == 0:
            before = dict(self._fmt)
            self._end_window(step)
            # pinned: layers whose numerics ruled out the arm they played (not exploration)
            self._fit_budget({n for n in self._layers if before[n] != self._fmt[n]
                              and not self._safe(n, before[n])})
            self._switched = {n for n in self._layers if before[n] != self._fmt[n]}
            for n in self._layers:
                self._dwell[n] = 0 if n in self._switched else self._dwell[n]
        return emitted_plan(self._fmt)

    def _safe(self, layer: str, fmt: str) -> bool:
        """Not blocked after non-finite values, fp16 only within its observed range, and a
        numerics penalty below ``explore_max`` in the last sampled window."""
        return fmt not in self._blocked[layer] and not (
            fmt == "fp16" and self._last_overflow.get(layer, 0.0) > self.range_max) and (
            fmt == "fp32" or self._last_penalty.get(layer, {}).get(fmt, 0.0) < self.explore_max)

    def _fit_budget(self, pinned: set[str]) -> None:
        """Keep the played arms within the cost budget; the layers moved down play (and are
        credited for) the cheaper arm. Safe = not blocked and within fp16's observed range."""
        if self._budget is None:
            return
        paid_for = ", ".join(sorted(pinned)) or "the first picks"
        for layer, old, new in self._budget.fit(self._fmt, pinned, self._safe):
            self.reasons[layer] = (f"cost budget {self._budget.budget:g}: {old} -> {new} to pay for "
                                   f"{paid_for} (plan cost {self._budget.relative(self._fmt):.3f})")

    # -- one decision ---------------------------------------------------------------------------
    def _end_window(self, step: int) -> None:
        spike = self._spike()
        self.reasons = {}
        # the quality effect lands on the layers that switched into their arm (explorers); with
        # none, on every layer that played a non-fp32 arm
        blamed = self._switched or set(self._layers)
        played_plan = dict(self._fmt)
        for layer in self._layers:
            w = self._window.get(layer)
            played = self._fmt[layer]
            if w is None or (w.samples == 0 and not w.nonfinite):
                continue  # no evidence about this arm in this window
            mine = spike if layer in blamed else 0.0
            rewards = [self._reward(layer, f, w, mine if f == played else 0.0, played_plan)
                       for f in self._arms[layer]]
            if w.samples:
                self._last_penalty[layer] = {f: self._penalty(f, w, 0.0) for f in self._arms[layer]}
            arm = self._arms[layer].index(played)
            self._account(layer, played, rewards, step)
            policy = self._policy[layer]
            if policy.full_information:
                policy.update_full(rewards, arm)
            else:
                policy.update(arm, rewards[arm])
            self._tick_blocks(layer, played if w.nonfinite == played else None)
            self._dwell[layer] += 1
            if self._dwell[layer] < self.min_dwell and self._safe(layer, played):
                continue  # a switch costs: stay on the arm until its effect could show
            new = self._select(layer, f"reward {rewards[arm]:.3f} for {played}")
            self._fmt[layer] = new
        if self._loss_n:
            mean = self._loss_sum / self._loss_n
            self._baseline = mean if self._baseline is None else (
                self.baseline_decay * self._baseline + (1 - self.baseline_decay) * mean)
        self._window.clear()
        self._loss_sum, self._loss_n, self._skipped, self._steps = 0.0, 0, 0, 0

    def _spike(self) -> float:
        skip_frac = self._skipped / self._steps if self._steps else 0.0
        if not self._loss_n or self._baseline is None or self._baseline <= 0:
            return skip_frac
        rise = self._loss_sum / self._loss_n / self._baseline - 1 - self.spike_tol
        return max(0.0, rise) + skip_frac

    def _penalty(self, fmt: str, w: Window, spike: float) -> float:
        k = self.weights
        p = k["nonfinite"] * (w.nonfinite == fmt)
        if fmt != "fp32":  # every format's own judged rates (inf, the full penalty, if unjudged)
            for weight, stat in ((k["overflow"], "overflow"), (k["underflow"], "underflow"),
                                 (k["err"], "rel_err")):
                if weight > 0:
                    p += weight * w.stat(fmt, stat)
            out = w.output_err(fmt)
            if out is not None and k["output"] > 0:
                p += k["output"] * out
            p += k["spike"] * spike
        return min(1.0, p)

    def _reward(self, layer: str, fmt: str, w: Window, spike: float,
                plan: dict[str, str] | None = None) -> float:
        cost = self._pricer.layer_cost(plan or self._fmt or {n: "fp32" for n in self._layers}, layer, fmt)
        raw = -self.cost_weight * cost - self._penalty(fmt, w, spike)
        return min(1.0, max(0.0, 1.0 + raw / (self.cost_weight + 1.0)))

    def _account(self, layer: str, played: str, rewards: list[float], step: int) -> None:
        """Regret bookkeeping: every arm's reward this window, the played arm's pull."""
        for f, r in zip(self._arms[layer], rewards):
            self._cum[layer][f] += r
        self._pulls[layer][played] += 1
        self._earned[layer] += rewards[self._arms[layer].index(played)]
        self._record(layer, played, rewards, step)

    def _record(self, layer: str, played: str, rewards: list[float], step: int) -> None:
        """The window's trace entry: copies of values already computed (nothing reads them back)."""
        trace = self._trace[layer]
        trace["step"].append(int(step))
        trace["played"].append(played)
        for f, r in zip(self._arms[layer], rewards):
            trace["rewards"][f].append(float(r))

    def summary(self) -> dict:
        """Per layer: arm pulls, mean reward per arm (over every window with evidence), the best
        fixed arm in hindsight, the regret against it and the per-window ``trace``
        (``{"step": [...], "played": [...], "rewards": {arm: [...]}}``, one entry per pull);
        totals over layers."""
        layers = {}
        for layer in self._layers:
            windows = sum(self._pulls[layer].values())
            cum = self._cum[layer]
            best = max(cum, key=lambda f: (cum[f], -self._arms[layer].index(f))) if windows else None
            layers[layer] = {
                "arms": list(self._arms[layer]), "pulls": dict(self._pulls[layer]),
                "mean_reward": {f: cum[f] / windows if windows else None for f in cum},
                "best_fixed_arm": best, "earned": self._earned[layer],
                "regret": (cum[best] - self._earned[layer]) if best is not None else 0.0,
                "trace": _copy_trace(self._trace[layer])}
        return {"controller": "bandit", "algorithm": self.algorithm, "seed": self.seed,
                "windows": max((sum(p.values()) for p in self._pulls.values()), default=0),
                "regret": sum(v["regret"] for v in layers.values()), "layers": layers}

    def _tick_blocks(self, layer: str, bad: str | None) -> None:
        blocked = self._blocked[layer]
        for f in list(blocked):
            blocked[f] -= 1
            if blocked[f] <= 0:
                del blocked[f]
        if bad is not None and self.block_windows > 0:
            blocked[bad] = self.block_windows

    def _select(self, layer: str, why: str) -> str:
        arms = self._arms[layer]
        allowed = [i for i, f in enumerate(arms) if self._safe(layer, f)]
        if not allowed:  # everything blocked: the safest format
            allowed = [arms.index("fp32")] if "fp32" in arms else [len(arms) - 1]
        choice = arms[self._policy[layer].select(allowed, self._rng)]
        if choice != self._fmt.get(layer):
            est = getattr(self._policy[layer], "means", lambda: [])()
            est_text = ", ".join(f"{f} {v:.3f}" for f, v in zip(arms, est))
            blocked = ", ".join([f"{f} blocked {n}" for f, n in self._blocked[layer].items()] + [
            f"{f} not offered (penalty {p:.3g} >= explore_max {self.explore_max:g})"
            for f, p in self._last_penalty.get(layer, {}).items()
            if f != "fp32" and p >= self.explore_max and f not in self._blocked[layer]])
            self.reasons[layer] = (f"{self.algorithm}: {why}; estimates [{est_text}]"
                                   f"{'; ' + blocked if blocked else ''} -> {choice}")
        return choice

    # -- state ----------------------------------------------------------------------------------
    @property
    def plan(self) -> Plan:
        return emitted_plan(self._fmt)

    def state_dict(self) -> dict:
        """Counts, estimates, the open window and the RNG state (torch.save-able, weights_only)."""
        return {"policies": {l: p.state_dict() for l, p in self._policy.items()},
                "formats": dict(self._fmt), "blocked": {l: dict(b) for l, b in self._blocked.items()},
                "window": {l: w.to_dict() for l, w in self._window.items()},
                "last_overflow": dict(self._last_overflow),
                "last_penalty": {l: dict(p) for l, p in self._last_penalty.items()},
                "dwell": dict(self._dwell), "switched": sorted(self._switched),
                "cum": {l: dict(c) for l, c in self._cum.items()},
                "pulls": {l: dict(c) for l, c in self._pulls.items()}, "earned": dict(self._earned),
                "trace": {l: _copy_trace(t) for l, t in self._trace.items()},
                "loss": [self._loss_sum, self._loss_n, self._skipped, self._steps],
                "baseline": self._baseline, "rng": self._rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for layer, s in state["policies"].items():
            self._policy[layer].load_state_dict(s)
        self._fmt = dict(state["formats"])
        self._blocked = {l: {f: int(n) for f, n in b.items()} for l, b in state["blocked"].items()}
        self._window = {l: Window.from_dict(w) for l, w in state["window"].items()}
        self._last_overflow = {l: float(v) for l, v in state["last_overflow"].items()}
        self._last_penalty = {l: {f: float(v) for f, v in p.items()}
                              for l, p in state.get("last_penalty", {}).items()}
        self._dwell.update({l: int(v) for l, v in state.get("dwell", {}).items()})
        self._switched = set(state.get("switched", []))
        for key, target in (("cum", self._cum), ("pulls", self._pulls)):
            for l, c in state.get(key, {}).items():
                target[l].update(c)
        self._earned.update({l: float(v) for l, v in state.get("earned", {}).items()})
        for l, t in state.get("trace", {}).items():  # a checkpoint from before the trace: empty
            self._trace[l] = {"step": [int(s) for s in t["step"]], "played": list(t["played"]),
                              "rewards": {f: [float(r) for r in v] for f, v in t["rewards"].items()}}
        loss_sum, loss_n, skipped, steps = state["loss"]
        self._loss_sum, self._loss_n, self._skipped, self._steps = float(loss_sum), int(loss_n), int(skipped), int(steps)
        self._baseline = None if state["baseline"] is None else float(state["baseline"])
        self._rng.set_state(state["rng"])


def _empty_trace(arms: Sequence[str]) -> dict:
    return {"step": [], "played": [], "rewards": {f: [] for f in arms}}


def _copy_trace(trace: dict) -> dict:
    return {"step": list(trace["step"]), "played": list(trace["played"]),
            "rewards": {f: list(v) for f, v in trace["rewards"].items()}}
