"""The per-layer bandit controller on hand-built statistics: rewards, safe exploration,
learning the cheap safe format, and exact resumption from a saved state."""
import io

import pytest
import torch

from adaprec.controllers import Bandit
from adaprec.controllers.policies import POLICIES
from tests.synth_stats import clean_stats, context, run

LAYERS = ["a", "b", "c"]


def make(cheapness=("bf16", "fp16", "fp32"), **kw):
    kw = {"interval": 2, "cpu_fp16": True, **kw}
    c = Bandit(**kw)
    c.setup(context(LAYERS, cheapness=cheapness))
    return c


def wobbly(step, plan):
    """Deterministic but varied statistics: c's fp16 range is marginal every third step."""
    return clean_stats(plan, step, c=dict(flush=0.03 * (step % 3 == 0), bf16_err=1e-3 + 1e-4 * (step % 5)))


def test_reward_is_normalized_cost_plus_penalty():
    c = make(cost_weight=1.0, err_weight=10.0)
    from adaprec.controllers._window import Window
    w = Window(samples=1, overflow=0.0, flush=0.0, bf16_err=0.002, fp16_err=0.0)
    # bf16: cost 0.5, penalty 10 * 0.002 = 0.02 -> raw -0.52 -> 1 - 0.52 / 2
    assert c._reward("a", "bf16", w, 0.0) == pytest.approx(1 - 0.52 / 2)
    assert c._reward("a", "fp32", w, 0.0) == pytest.approx(0.5)
    w.nonfinite = "fp16"
    assert c._reward("a", "fp16", w, 0.0) == pytest.approx(1 - 1.5 / 2)


@pytest.mark.parametrize("algorithm", sorted(POLICIES))
def test_the_bandit_settles_on_a_cheap_format_when_numerics_are_clean(algorithm):
    c = make(algorithm=algorithm)
    plans = run(c, 200, lambda s, p: clean_stats(p, s), LAYERS)
    late = [p[l] for p in plans[-40:] for l in LAYERS]
    assert late.count("fp32") / len(late) < 0.2


@pytest.mark.parametrize("algorithm", sorted(POLICIES))
def test_fp16_is_not_explored_where_the_range_exceeds_fp16(algorithm):
    c = make(algorithm=algorithm)
    plans = run(c, 60, lambda s, p: clean_stats(p, s, b=dict(overflow=0.01, absmax=1e5)), LAYERS)
    assert all(p["b"] != "fp16" for p in plans[2:])  # after the first sampled window


def test_an_arm_that_went_non_finite_is_blocked_for_block_windows_decisions():
    c = make(algorithm="ucb1", block_windows=3, cheapness=("fp16", "bf16", "fp32"))
    plans = run(c, 2, lambda s, p: clean_stats(p, s, a=dict(nonfinite=0.5)), LAYERS)
    assert plans[0]["a"] == "fp16" and plans[2]["a"] != "fp16"
    assert c._blocked["a"] == {"fp16": 3}
    assert "fp16 blocked 3" in c.reasons["a"]
    plans = run(c, 8, lambda s, p: clean_stats(p, s), LAYERS, start=2)
    assert all(p["a"] != "fp16" for p in plans[:5])  # blocked through the decisions at 4 and 6
    assert "fp16" not in c._blocked["a"]


def test_hedge_learns_from_every_arm_each_window():
    c = make(algorithm="hedge", formats=["bf16", "fp16", "fp32"])
    run(c, 2, lambda s, p: clean_stats(p, s, a=dict(overflow=0.005)), LAYERS)
    log_w = c._policy["a"].log_w  # fp16 (not played) penalized by the overflow it would see
    arms = c._arms["a"]
    assert log_w[arms.index("fp16")] < log_w[arms.index("bf16")]
    assert c._policy["b"].log_w[arms.index("fp16")] > log_w[arms.index("fp16")]


def test_a_loss_spike_is_shared_by_the_16bit_arms_that_were_played():
    c = make(algorithm="ucb1", interval=1, formats=["bf16", "fp32"], spike_weight=1.0)
    losses = [1.0, 1.0, 3.0]
    plan = c.decide(0)
    from tests.synth_stats import record
    for step, loss in enumerate(losses):
        c.observe(record(step, plan, clean_stats(plan, step), loss=loss))
        if step == 2:
            assert c._spike() == pytest.approx(3.0 / 1.0 - 1 - 0.1)
        plan = c.decide(step + 1)


@pytest.mark.parametrize("algorithm", sorted(POLICIES))
def test_a_resumed_bandit_decides_exactly_as_the_uninterrupted_one(algorithm, tmp_path):
    full = run(make(algorithm=algorithm, interval=3), 90, wobbly, LAYERS)
    first = make(algorithm=algorithm, interval=3)
    run(first, 43, wobbly, LAYERS)  # stop mid-window
    path = tmp_path / "ctl.pt"
    torch.save(first.state_dict(), path)
    resumed = make(algorithm=algorithm, interval=3)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert run(resumed, 90, wobbly, LAYERS, start=43) == full[43:]
    assert len({p.hash for p in full}) > 1  # the comparison covers real switching


def test_fp16_is_dropped_on_cpu_with_the_native_executor_by_default():
    c = Bandit()
    c.setup(context(LAYERS, layer_types={"a": "Conv2d", "b": "Linear", "c": "LayerNorm"}))
    assert all("fp16" not in arms for arms in c._arms.values())
    gpu = Bandit()
    gpu.setup(context(LAYERS, device_type="cuda"))
    assert all(arms[-1] == "fp32" and "fp16" in arms for arms in gpu._arms.values())


@pytest.mark.parametrize("kw,msg", [({"algorithm": "ucb9"}, "controller.algorithm='ucb9' is unknown"),
                                    ({"interval": 0}, "controller.interval=0 is out of range; allowed: >= 1"),
                                    ({"discount": 0}, r"controller.discount=0 is out of range; allowed: \(0, 1\]"),
                                    ({"cost_weight": -1}, "controller.cost_weight=-1 is out of range")])
def test_bad_values_are_one_line_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Bandit(**kw)


def test_the_run_seed_seeds_the_bandit_and_different_seeds_draw_differently():
    from tests.conftest import compose_config
    from adaprec.app.controller_schemas import register_controller_schemas  # noqa: F401
    from hydra.utils import instantiate
    cfg = compose_config("controller=bandit_thompson", "seed=7")
    assert instantiate(cfg.controller).seed == 7
    picks = {}
    for seed in (0, 1, 2):
        c = make(algorithm="thompson", seed=seed, sigma=0.5, min_dwell=1)
        picks[seed] = [tuple(p.values()) for p in run(c, 40, lambda s, p: clean_stats(p, s), LAYERS)]
    assert picks[0] == [tuple(p.values()) for p in run(make(algorithm="thompson", seed=0, sigma=0.5,
                                                            min_dwell=1), 40,
                                                       lambda s, p: clean_stats(p, s), LAYERS)]
    assert len({tuple(v) for v in picks.values()}) == 3


def test_pulls_and_regret_against_the_best_fixed_arm():
    c = make(algorithm="ucb1", min_dwell=1, formats=["bf16", "fp32"])
    run(c, 40, lambda s, p: clean_stats(p, s), LAYERS)
    summary = c.summary()
    a = summary["layers"]["a"]
    assert sum(a["pulls"].values()) == 20 and a["pulls"]["fp32"] >= 1  # every arm tried once
    assert a["best_fixed_arm"] == "bf16"  # cheaper, clean numerics
    mean = a["mean_reward"]
    expected_regret = 20 * mean["bf16"] - a["earned"]
    assert a["regret"] == pytest.approx(expected_regret) and a["regret"] > 0
    assert summary["regret"] == pytest.approx(sum(v["regret"] for v in summary["layers"].values()))


def test_min_dwell_keeps_an_arm_for_several_windows_unless_it_turns_unsafe():
    c = make(algorithm="ucb1", min_dwell=3, formats=["bf16", "fp16", "fp32"])
    plans = run(c, 24, lambda s, p: clean_stats(p, s), LAYERS)
    a = [p["a"] for p in plans[::2]]  # one entry per window (interval 2)
    runs = [len(list(g)) for _, g in __import__("itertools").groupby(a)]
    assert all(r >= 3 for r in runs[:-1])
    # an arm that turns unsafe is left at the next decision, dwell or not
    c = make(algorithm="ucb1", min_dwell=10, formats=["fp16", "fp32"], cheapness=("fp16", "fp32"))
    plans = run(c, 4, lambda s, p: clean_stats(p, s, a=dict(flush=0.5)), LAYERS)
    assert plans[0]["a"] == "fp16" and plans[-1]["a"] == "fp32"


def test_arms_with_bad_measured_numerics_are_not_explored():
    # fp16 flushes half of b's values: its measured penalty (10 * 0.5, capped at 1) >= explore_max
    c = make(algorithm="ucb1", min_dwell=1, cheapness=("bf16", "fp16", "fp32"))
    plans = run(c, 60, lambda s, p: clean_stats(p, s, b=dict(flush=0.5)), LAYERS)
    assert all(p["b"] != "fp16" for p in plans[3:])
    assert any(p["a"] == "fp16" for p in plans)  # a explores it
    assert c._last_penalty["b"]["fp16"] == 1.0 and not c._safe("b", "fp16")


def test_an_unjudged_format_is_the_full_penalty_not_free():
    from adaprec.controllers._window import Window
    c = make(formats=["bf16", "fp8_e4m3", "fp32"])
    w = Window(samples=1)
    assert c._penalty("fp8_e4m3", w, 0.0) == 1.0  # never judged: unknown is unsafe
    w = Window(samples=1, errors={"fp8_e4m3": [0.0, 0.0, 0.02, 1e-6]})
    assert c._penalty("fp8_e4m3", w, 0.0) == pytest.approx(10 * 0.02)


def test_cost_is_priced_at_plan_level_with_the_casts_a_switch_causes():
    from adaprec.controllers._common import PlanPricer, emitted_plan
    # a toy plan cost: each layer 1.0 in fp32, 0.5 in bf16, plus 0.3 per fp32<->bf16 boundary
    def plan_cost(plan):
        f = [plan.format_of(n) for n in LAYERS]
        return sum(1.0 if x == "fp32" else 0.5 for x in f) + 0.3 * sum(a != b for a, b in zip(f, f[1:]))
    ctx = context(LAYERS, plan_cost=plan_cost, layer_costs={n: {"fp32": 1.0, "bf16": 0.5} for n in LAYERS})
    pricer = PlanPricer(ctx, ["bf16", "fp32"])
    all32 = {n: "fp32" for n in LAYERS}
    # b alone in bf16 saves 0.5 but adds two boundaries: 1 + (-0.5 + 0.6) / 1 = 1.1
    assert pricer.layer_cost(all32, "b", "bf16") == pytest.approx(1.1)
    mixed = {"a": "bf16", "b": "fp32", "c": "bf16"}
    assert pricer.layer_cost(mixed, "b", "bf16") == pytest.approx(1 + (-0.5 - 0.6))
    assert pricer.cheapest(all32, "b", ["bf16", "fp32"])[0] == "fp32"
    assert pricer.cheapest(mixed, "b", ["bf16", "fp32"])[0] == "bf16"
    c = Bandit(formats=["bf16", "fp32"], cpu_fp16=True)
    c.setup(ctx)
    from adaprec.controllers._window import Window
    clean = Window(samples=1)
    assert c._reward("b", "bf16", clean, 0.0, all32) < c._reward("b", "fp32", clean, 0.0, all32)


def test_the_trace_has_one_entry_per_window_and_sums_to_the_regret_totals():
    c = make(algorithm="ucb1", min_dwell=1, interval=3)
    run(c, 45, wobbly, LAYERS)
    summary = c.summary()
    for layer, v in summary["layers"].items():
        t = v["trace"]
        assert len(t["step"]) == len(t["played"]) == sum(v["pulls"].values()) == 15  # 45 steps / 3
        assert t["step"] == list(range(3, 46, 3))  # the decision that closed each window
        assert {f: t["played"].count(f) for f in v["arms"]} == v["pulls"]
        for f in v["arms"]:  # the same values the regret summed, in the same order: exact
            assert sum(t["rewards"][f]) == c._cum[layer][f]
            assert len(t["rewards"][f]) == 15
        earned = sum(t["rewards"][f][i] for i, f in enumerate(t["played"]))
        assert earned == pytest.approx(v["earned"], abs=1e-12)
        best = v["best_fixed_arm"]
        assert sum(t["rewards"][best]) - earned == pytest.approx(v["regret"], abs=1e-12)
    assert len({f for v in summary["layers"].values() for f in v["trace"]["played"]}) > 1
    summary["layers"]["a"]["trace"]["step"].clear()  # the summary is a copy
    assert len(c.summary()["layers"]["a"]["trace"]["step"]) == 15


@pytest.mark.parametrize("algorithm", sorted(POLICIES))
def test_the_trace_changes_no_decision(algorithm, monkeypatch):
    """The same run with the trace recording switched off: identical plans, policy states,
    regret bookkeeping and generator state (the trace only copies values)."""
    traced = make(algorithm=algorithm, interval=3, min_dwell=1)
    plans = run(traced, 60, wobbly, LAYERS)
    monkeypatch.setattr(Bandit, "_record", lambda *a, **k: None)
    plain = make(algorithm=algorithm, interval=3, min_dwell=1)
    assert run(plain, 60, wobbly, LAYERS) == plans
    assert len({p.hash for p in plans}) > 1
    a, b = traced.state_dict(), plain.state_dict()
    assert len(a.pop("trace")["a"]["step"]) == 20 and b.pop("trace")["a"]["step"] == []
    rng_a, rng_b = a.pop("rng"), b.pop("rng")
    assert torch.equal(rng_a, rng_b) and a == b


def test_a_resumed_bandit_keeps_its_complete_trace(tmp_path):
    full = make(algorithm="thompson", interval=3, min_dwell=1)
    run(full, 90, wobbly, LAYERS)
    first = make(algorithm="thompson", interval=3, min_dwell=1)
    run(first, 43, wobbly, LAYERS)  # stop mid-window
    torch.save(first.state_dict(), tmp_path / "ctl.pt")
    resumed = make(algorithm="thompson", interval=3, min_dwell=1)
    resumed.load_state_dict(torch.load(tmp_path / "ctl.pt", weights_only=True))
    assert len(resumed.summary()["layers"]["a"]["trace"]["step"]) == 14  # windows closed by step 42
    run(resumed, 90, wobbly, LAYERS, start=43)
    assert resumed.summary() == full.summary()  # trace, pulls and regret: the uninterrupted run's
    assert len(full.summary()["layers"]["a"]["trace"]["step"]) == 30


def test_a_checkpoint_from_before_the_trace_still_loads():
    c = make(algorithm="ucb1", interval=3)
    run(c, 30, wobbly, LAYERS)
    state = c.state_dict()
    del state["trace"]
    resumed = make(algorithm="ucb1", interval=3)
    resumed.load_state_dict(state)
    v = resumed.summary()["layers"]["a"]
    assert v["trace"]["step"] == [] and sum(v["pulls"].values()) == 10  # incomplete, visibly
