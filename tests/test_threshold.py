"""Threshold rules on hand-built LayerStats: each escalation path, hysteresis, cooldown, interval."""
import pytest

from adaprec import Plan
from adaprec.controllers import Threshold
from tests.synth_stats import clean_stats, context, layer_stats, run, tensor

LAYERS = ["a", "b", "c"]


def make(cheapness=("fp16", "bf16", "fp32"), layer_types=None, **kw):
    kw = {"interval": 1, "cooldown": 0, "patience": 2, "start": "fp16", "cpu_fp16": True, **kw}
    c = Threshold(**kw)
    c.setup(context(LAYERS, cheapness=cheapness, layer_types=layer_types))
    return c


def const(**overrides):
    return lambda step, plan: clean_stats(plan, step, **overrides)


def test_fp16_overflow_goes_to_bf16_when_bf16_rounding_is_fine():
    c = make()
    plans = run(c, 1, const(b=dict(overflow=1e-3)), LAYERS)
    assert dict(plans[-1]) == {"a": "fp16", "b": "bf16", "c": "fp16"}
    assert "overflow rate 0.001 > overflow_max" in c.reasons["b"] and c.reasons["b"].endswith("bf16")


def test_fp16_overflow_goes_to_fp32_when_bf16_rounding_error_is_too_large():
    c = make(rounding_err_max=1e-3)
    plans = run(c, 1, const(b=dict(overflow=1e-3, bf16_err=2e-3)), LAYERS)
    assert plans[-1]["b"] == "fp32"


def test_overflow_at_or_below_the_limit_keeps_fp16():
    c = make(overflow_max=1e-3)
    plans = run(c, 3, const(b=dict(overflow=1e-3)), LAYERS)
    assert all(p["b"] == "fp16" for p in plans)


def test_gradient_overflow_at_the_loss_scale_counts_too():
    c = make()
    stats = lambda step, plan: {**clean_stats(plan, step),
                                "c": layer_stats("c", plan["c"], step, grad=tensor(overflow=0.02))}
    assert run(c, 1, stats, LAYERS)[-1]["c"] == "bf16"


def test_nonfinite_values_are_traced_to_the_first_layer_and_downstream_is_not_blamed():
    c = make()
    # b's output is inf; c inherits inf (and would show fp16 overflow) but is downstream
    plans = run(c, 1, const(b=dict(nonfinite=0.5, overflow=0.5), c=dict(nonfinite=1.0, overflow=1.0)), LAYERS)
    assert dict(plans[-1]) == {"a": "fp16", "b": "bf16", "c": "fp16"}
    assert "non-finite" in c.reasons["b"]


def test_fp16_flush_to_zero_prefers_bf16():
    c = make(underflow_max=0.05)
    plans = run(c, 1, const(a=dict(flush=0.2)), LAYERS)
    assert plans[-1]["a"] == "bf16" and "flush-to-zero" in c.reasons["a"]


def test_bf16_rounding_error_goes_to_fp16_when_fp16_range_is_safe():
    c = make(start="bf16", rounding_err_max=2e-3)
    plans = run(c, 1, const(a=dict(bf16_err=5e-3)), LAYERS)
    assert plans[-1]["a"] == "fp16" and "bf16 rounding error" in c.reasons["a"]


def test_bf16_rounding_error_goes_to_fp32_when_fp16_range_is_unsafe():
    c = make(start="bf16", rounding_err_max=2e-3, cheapness=("bf16", "fp16", "fp32"))
    plans = run(c, 1, const(a=dict(bf16_err=5e-3, overflow=0.01)), LAYERS)
    assert plans[-1]["a"] == "fp32"


def test_hysteresis_moves_back_only_after_patience_clean_windows():
    c = make(start="fp32", patience=3)
    dirty_until = 4  # a's fp16 overflows, bf16 too inaccurate: nothing cheaper is safe
    stats = lambda step, plan: clean_stats(
        plan, step, a=dict(overflow=0.01, bf16_err=0.1) if step < dirty_until else {})
    plans = run(c, 7, stats, LAYERS)
    a = [p["a"] for p in plans]
    assert "3 clean windows >= patience 3" in c.reasons["a"]
    plans += run(c, 10, stats, LAYERS, start=7)[1:]
    # decision at step s uses step s-1's stats: clean windows from step 4 -> counts 1,2,3 at 5,6,7
    assert a[:7] == ["fp32"] * 7 and a[7] == "fp16"
    assert [p["b"] for p in plans][:3] == ["fp32", "fp32", "fp32"] and plans[3]["b"] == "fp16"


def test_a_dirty_window_resets_the_clean_count():
    c = make(start="fp32", patience=2)
    dirty = {1, 3, 5}
    stats = lambda step, plan: clean_stats(plan, step, a=dict(overflow=0.01, bf16_err=0.1) if step in dirty else {})
    plans = run(c, 7, stats, LAYERS)
    assert all(p["a"] == "fp32" for p in plans)


def test_cooldown_blocks_a_second_switch_but_not_a_nonfinite_escape():
    c = make(cooldown=5, cheapness=("bf16", "fp16", "fp32"), rounding_err_max=2e-3)
    # step 0: b overflows in fp16 -> bf16 at step 1; then bf16 too inaccurate from step 1 on
    stats = lambda step, plan: clean_stats(plan, step, b=dict(overflow=0.01) if step == 0 else dict(bf16_err=0.01, overflow=0.01))
    plans = run(c, 8, stats, LAYERS)
    b = [p["b"] for p in plans]
    assert b[1] == "bf16" and b[1:6] == ["bf16"] * 5 and b[6] == "fp32"
    # a non-finite escape ignores the cooldown
    c2 = make(cooldown=100, start="fp16")
    stats2 = lambda step, plan: clean_stats(plan, step, a=dict(overflow=0.01) if step == 0 else {},
                                            b=dict(nonfinite=0.1) if step == 1 else {})
    plans2 = run(c2, 2, stats2, LAYERS)
    assert plans2[1]["a"] == "bf16" and plans2[2]["b"] == "bf16"


def test_decisions_happen_only_every_interval_steps():
    c = make(interval=4)
    plans = run(c, 9, const(b=dict(overflow=0.01)), LAYERS)
    assert [p["b"] for p in plans] == ["fp16"] * 4 + ["bf16"] * 6


def test_unsampled_steps_change_nothing():
    c = make()
    plans = run(c, 5, lambda step, plan: None, LAYERS)
    assert all(p == plans[0] for p in plans)


def test_convolutions_get_no_fp16_on_cpu_with_the_native_executor():
    c = make(layer_types={"a": "Conv2d", "b": "Linear", "c": "LayerNorm"})
    assert c.decide(0)["a"] == "bf16" and c.decide(0)["b"] == "fp16"
    default = Threshold(start="fp16")  # without cpu_fp16 no layer gets fp16 on CPU
    default.setup(context(LAYERS, layer_types={"a": "Conv2d", "b": "Linear"}))
    assert set(default.decide(0).values()) == {"bf16"}
    cuda = Threshold(start="fp16")
    cuda.setup(context(LAYERS, device_type="cuda", layer_types={"a": "Conv2d"}))
    assert cuda.decide(0)["a"] == "fp16"


def test_state_dict_round_trip_continues_identically():
    stats = lambda step, plan: clean_stats(plan, step, b=dict(overflow=0.01) if step % 3 == 0 else {})
    full = run(make(patience=1, cooldown=2), 12, stats, LAYERS)
    first = make(patience=1, cooldown=2)
    run(first, 6, stats, LAYERS)
    resumed = make(patience=1, cooldown=2)
    resumed.load_state_dict(first.state_dict())
    assert run(resumed, 12, stats, LAYERS, start=6) == full[6:]


@pytest.mark.parametrize("key,value,allowed", [("overflow_max", -1, "[0, 1]"), ("interval", 0, ">= 1"),
                                               ("patience", -2, ">= 0")])
def test_bad_values_name_the_key_and_the_range(key, value, allowed):
    with pytest.raises(ValueError, match=rf"controller.{key}={value} is out of range; allowed: {allowed}".replace("[", r"\[").replace("]", r"\]")):
        Threshold(**{key: value})


def test_unknown_format_gets_a_one_line_message():
    # the one message of the formats rule, at compose time and here (tests/test_config_validation.py)
    with pytest.raises(ValueError, match=r"controller.formats=\['fp17'\] is out of range; allowed: each value a format name"):
        Threshold(formats=["fp17"])


def test_fp8_is_judged_not_taken_for_exact():
    """A terrible window: bf16 unsafe by rounding error, fp8 never judged -> unknown, unsafe."""
    from adaprec.controllers._window import Window
    c = Threshold(formats=("bf16", "fp8_e4m3", "fp32"))
    bad = Window(samples=1, bf16_err=0.5, fp16_err=0.5)
    assert not c._safe("bf16", bad) and not c._safe("fp8_e4m3", bad)
    judged = Window(samples=1, errors={"fp8_e4m3": [0.0, 0.0, 0.03, 1e-3]})
    assert not c._safe("fp8_e4m3", judged)  # 3% rounding error > rounding_err_max
    fine = Window(samples=1, errors={"fp8_e4m3": [0.0, 0.0, 1e-3, 1e-9]})
    assert c._safe("fp8_e4m3", fine)


def _w(**kw):
    from adaprec.controllers._window import Window
    return Window(samples=1, **kw)


def test_output_error_measured_in_the_running_format_sends_a_layer_up():
    """head on mixed_needs: bf16 rounds outputs near 1000 to a spacing of 4 -- tiny per-element
    error, large against the output's spread; fp16's predicted error is within the limit."""
    c = make(start="bf16", output_err_max=0.1)
    w = _w(bf16_err=1e-3, fp16_err=1e-4, shadow=[0.55, 1e-3], shadow_format="bf16",
           shadow_pred={"bf16": 0.5, "fp16": 0.06})
    assert "bf16 output error 0.55 (measured" in c._problem("bf16", w)
    assert c._problem("fp16", w) is None  # predicted max(0.06, 0.55 / 8) = 0.069
    assert w.output_err("fp16") == pytest.approx(0.55 / 8)
    plans = run(c, 1, lambda s, p: {n: layer_stats(n, p.format_of(n), s) for n in LAYERS}, LAYERS)
    c._decide_layer("a", w, 1)
    assert c._fmt["a"] == "fp16" and "output error" in c.reasons["a"]
    too_far = _w(shadow=[3.0, 1e-3], shadow_format="bf16", shadow_pred={"fp16": 0.06})
    c._decide_layer("b", too_far, 1)  # fp16 predicted 3/8 > 0.1: nothing cheaper is enough
    assert c._fmt["b"] == "fp32"


def test_input_side_range_is_judged_for_every_format_at_its_scale():
    c = make(start="fp16", formats=("fp16", "bf16", "fp8_e4m3", "fp32"), cheapness=("fp8_e4m3", "fp16", "bf16", "fp32"))
    w = _w(overflow=0.6, errors={"fp16": [0.6, 0.0, 1e-4, 1.0], "bf16": [0.0, 0.0, 2e-3, 1.0],
                                 "fp8_e4m3": [0.0, 0.3, 0.03, 1.0]})
    assert "fp16 overflow rate 0.6" in c._problem("fp16", w)
    assert "fp8_e4m3 flush-to-zero rate 0.3" in c._problem("fp8_e4m3", w)
    c._decide_layer("a", w, 1)
    assert c._fmt["a"] == "bf16"  # fp8 would be cheaper but flushes 30% at its per-tensor scale


def test_measured_start_picks_the_cheapest_safe_format_after_an_fp32_warmup():
    c = make(start="measured", warmup=2, interval=1, cheapness=("fp16", "bf16", "fp32"))
    assert dict(c.decide(0)) == {n: "fp32" for n in LAYERS}
    stats = const(a=dict(overflow=0.5), b=dict(bf16_err=0.02, fp16_err=0.02))
    plans = run(c, 2, stats, LAYERS)
    assert dict(plans[1]) == {n: "fp32" for n in LAYERS}  # still warming up at step 1
    assert dict(plans[2]) == {"a": "bf16", "b": "fp32", "c": "fp16"}
    assert "not fp16: fp16 overflow rate 0.5" in c.reasons["a"]
    assert "fp32 in the cheapest plan of safe formats" in c.reasons["b"]


def test_moving_down_needs_a_margin_below_the_limits():
    c = make(start="bf16", patience=1, margin=0.5, rounding_err_max=1e-3, cheapness=("fp16", "bf16", "fp32"))
    near = _w(errors={"fp16": [0.0, 0.0, 8e-4, 0.0], "bf16": [0.0, 0.0, 8e-4, 0.0]})
    c._decide_layer("a", near, 1)
    assert c._fmt["a"] == "bf16"  # fp16 safe (8e-4 <= 1e-3) but not within 0.5 x the limit
    clear = _w(errors={"fp16": [0.0, 0.0, 1e-4, 0.0], "bf16": [0.0, 0.0, 8e-4, 0.0]})
    c._decide_layer("a", clear, 2)
    assert c._fmt["a"] == "fp16"


def test_switches_are_priced_at_plan_level():
    """With casts between neighbours, moving one layer alone to bf16 costs more than fp32."""
    def plan_cost(plan):
        f = [plan.format_of(n) for n in LAYERS]
        return sum(1.0 if x == "fp32" else 0.5 for x in f) + 0.8 * sum(a != b for a, b in zip(f, f[1:]))
    c = Threshold(start="cheapest", formats=("bf16", "fp32"), interval=1, cooldown=0, patience=1)
    c.setup(context(LAYERS, plan_cost=plan_cost, layer_costs={n: {"fp32": 1.0, "bf16": 0.5} for n in LAYERS}))
    # one layer alone in bf16 adds boundaries (+0.8 each, -0.5): greedy from all-fp32 stays
    # there (3.0), the plan search finds all-bf16 (1.5)
    assert dict(c.decide(0)) == {n: "bf16" for n in LAYERS}
    from adaprec.controllers._common import PlanPricer
    pricer = PlanPricer(context(LAYERS, plan_cost=plan_cost, layer_costs={n: {"fp32": 1.0, "bf16": 0.5}
                                                                          for n in LAYERS}), ["bf16"])
    assert pricer.cheapest({n: "fp32" for n in LAYERS}, "a", ["bf16", "fp32"])[0] == "fp32"
    only_a = pricer.best({"a": ["bf16", "fp32"], "b": ["fp32"], "c": ["fp32"]})
    assert only_a == {n: "fp32" for n in LAYERS}  # a alone in bf16 would cost 3.3
