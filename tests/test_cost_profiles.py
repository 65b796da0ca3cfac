"""Device profiles: every shipped YAML loads and prices every format; fallbacks; bad input."""
import pytest

from adaprec.cost import DeviceProfile, load_profile, profile_names
from adaprec.numerics.formats import FORMATS


@pytest.mark.parametrize("name", profile_names())
def test_every_shipped_profile_loads_and_prices_every_format(name):
    prof = load_profile(name)
    assert prof.name == name
    if prof.metric == "seconds":
        for fmt in FORMATS:
            eff = prof.compute_format(fmt)  # an emulated format computes in fp32
            assert prof.flops_per_s(eff) > 0 and prof.bandwidth(eff) > 0


def test_shipped_profiles_include_the_datasheet_devices():
    assert {"h100", "a100", "v100", "bitops"} <= set(profile_names())


def test_datasheet_numbers():
    h100, a100, v100 = load_profile("h100"), load_profile("a100"), load_profile("v100")
    assert dict(h100.peak_tflops) == {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4,
                                      "fp8_e4m3": 1978.9, "fp8_e5m2": 1978.9}
    assert h100.bandwidth_tbps == 3.35
    assert [a100.peak_tflops[f] for f in ("fp32", "tf32", "fp16", "bf16")] == [19.5, 156.0, 312.0, 312.0]
    assert a100.bandwidth_tbps == 2.04
    assert (v100.peak_tflops["fp32"], v100.peak_tflops["fp16"], v100.bandwidth_tbps) == (15.7, 125.0, 0.9)
    assert "bf16" not in v100.peak_tflops


def test_fallbacks_name_what_a_format_runs_as():
    v100, a100, h100 = load_profile("v100"), load_profile("a100"), load_profile("h100")
    assert v100.resolve("bf16") == "fp32" and v100.resolve("fp8_e5m2") == "fp16"
    assert a100.resolve("fp8_e4m3") == "bf16" and a100.resolve("bfloat16") == "bf16"
    assert all(h100.resolve(f) == f for f in ("fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2"))
    # block formats by the registry's chain: Hopper has fp8 tensor cores, no MX/fp6/fp4 ones
    assert h100.resolve("mxfp8_e5m2") == "fp8_e5m2" and h100.resolve("nvfp4") == "fp8_e4m3"
    assert a100.resolve("mxfp4") == "bf16" and v100.resolve("mxfp8") == "fp16"


def test_width_peaks_price_every_format_of_that_width():
    b200 = load_profile("b200")
    eff = b200.efficiency["gemm"]  # the datasheet peak times the achievable fraction
    assert b200.resolve("nvfp4") == "nvfp4" and b200.resolve("mxfp6_e3m2") == "mxfp6_e3m2"
    assert b200.flops_per_s("mxfp4") == b200.flops_per_s("nvfp4") == 9000e12 * eff
    assert b200.flops_per_s("mxfp8_e4m3") == b200.flops_per_s("fp8_e5m2") == 4500e12 * eff
    assert b200.flops_per_s("bf16") == 2250e12 * eff


def test_tf32_switch_prices_fp32_at_the_tf32_peak():
    data = {"name": "x", "peak_tflops": {"fp32": 10, "tf32": 80, "bf16": 160}, "bandwidth_tbps": 1,
            "fallback": {"fp16": "bf16", "fp8_e4m3": "bf16", "fp8_e5m2": "bf16"}}
    assert DeviceProfile.from_dict(data).flops_per_s("fp32") == 10e12
    assert DeviceProfile.from_dict({**data, "fp32_uses_tf32": True}).flops_per_s("fp32") == 80e12


def test_per_op_kind_rates_override_the_peak():
    prof = DeviceProfile.from_dict({"name": "x", "peak_tflops": {"fp32": 2.0}, "bandwidth_tbps": {"fp32": 0.5},
                                    "op_tflops": {"conv": {"fp32": 1.0}},
                                    "fallback": {f: "fp32" for f in ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")}})
    assert prof.flops_per_s("fp32", "conv") == 1e12
    assert prof.flops_per_s("fp32", "matmul") == 2e12
    assert prof.bandwidth("fp32") == 0.5e12


@pytest.mark.parametrize("data,match", [
    ({"name": "x", "peak_tflops": {"fp32": 1}, "bandwidth_tbps": 1}, "no positive peak_tflops for 'bf16'"),
    ({"name": "x", "peak_tflops": {"fp32": 1}, "bandwidth_tbps": 1, "fallback": {"bf16": "fp16", "fp16": "bf16"}},
     "fallback cycle"),
    ({"name": "x", "metric": "joules"}, "metric must be one of"),
    ({"name": "x", "peak_tflop": {}}, "unknown profile keys"),
])
def test_bad_profiles_are_clear_errors(data, match):
    with pytest.raises(ValueError, match=match):
        DeviceProfile.from_dict(data)


def test_unknown_profile_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="h100"):
        load_profile("h200x")


def test_load_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("peak_tflops: {fp32: 1.0, bf16: 4.0}\nbandwidth_tbps: 0.1\n"
                    "fallback: {fp16: bf16, fp8_e4m3: bf16, fp8_e5m2: bf16}\n")
    prof = load_profile(path)
    assert prof.name == "mine" and prof.resolve("fp16") == "bf16"
