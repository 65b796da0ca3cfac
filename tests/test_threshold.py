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
