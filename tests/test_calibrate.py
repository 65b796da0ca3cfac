"""Calibration on tiny sizes: it writes a loadable profile that prices plans (no timing asserts)."""
import pytest
import torch

from adaprec.tools import calibrate as cal
from adaprec.cost import CostModel, load_profile
from .cost_models import mlp

TINY = dict(formats=("fp32", "bf16"), matmul_sizes=(16, 32), conv_shapes=((1, 4, 6),),
            elementwise_numel=(4096,), reps=1, executor="native")  # no fp16: native fp16 conv training is very slow on CPU


def test_calibrate_writes_a_profile_that_prices_plans(tmp_path):
    prof = cal.calibrate("cpu", name="tiny", **TINY)
    assert set(prof["op_tflops"]) == {"matmul", "conv"}
    assert set(prof["measurements"]["matmul"]["bf16"]) == {"16", "32"}
    points = prof["measurements"]["matmul"]["fp32"]  # pooled rate: total FLOPs / total time
    pooled = (6 * 16 ** 3 + 6 * 32 ** 3) / (6 * 16 ** 3 / points["16"] + 6 * 32 ** 3 / points["32"])
    assert prof["op_tflops"]["matmul"]["fp32"] == pytest.approx(pooled, rel=1e-3)
    assert min(points.values()) <= prof["op_tflops"]["matmul"]["fp32"] <= max(points.values())
    assert prof["fallback"] == {"fp16": "fp32", "fp8_e4m3": "bf16", "fp8_e5m2": "bf16"}
    path = cal.write_profile(prof, tmp_path / "tiny.yaml")
    assert path.read_text().startswith("# Calibrated cost profile 'tiny'")
    loaded = load_profile(path)
    assert loaded.name == "tiny" and loaded.resolve("fp8_e4m3") == "bf16"
    assert all(r > 0 for r in loaded.peak_tflops.values())
    cost = CostModel.count(mlp(), torch.randn(2, 8)).price("bf16", loaded)
    assert cost.total > 0 and cost.unit == "s"


@pytest.mark.slow
def test_auto_calibrates_what_the_auto_executor_runs(tmp_path):
    from adaprec.numerics.formats import FORMATS, get_format
    from adaprec.runtime.executors.auto import native_is_fast
    prof = cal.calibrate("cpu", name="auto", **{**TINY, "executor": "auto"})
    slow = {f for f in FORMATS if get_format(f).scaling in ("none", "per_tensor")
            and not native_is_fast(get_format(f), "matmul", "cpu")}
    assert {"fp8_e4m3", "fp8_e5m2"} <= slow and set(prof["emulated"]) == slow
    assert set(prof["measurements"]["matmul"]) == {"fp32", "bf16"} - slow
    assert all(set(r) == {"call_us", "ns_per_elem"} for r in prof["emulated"].values())
    assert prof["kernel_us"] > 0 and not any(f in prof["fallback"] for f in slow)
    loaded = load_profile(cal.write_profile(prof, tmp_path / "auto.yaml"))
    assert loaded.is_emulated("fp8_e4m3") and loaded.compute_format("fp8_e4m3") == "fp32"
    assert loaded.resolve("mxfp8_e4m3") == "fp8_e4m3"   # block formats: the registry's fallback
    cm = CostModel.count(mlp(), torch.randn(2, 8))
    # an emulated format costs its fp32 compute plus roundings: never less than fp32 here
    assert cm.price("fp8_e4m3", loaded).total > cm.price("fp32", loaded).total


def test_count_kernels_skips_views():
    x = torch.randn(4, 4)
    assert cal.count_kernels(lambda: (x.t() @ x).view(-1).relu()) == 2   # mm, relu


def test_cli_writes_the_named_output(tmp_path):
    out = tmp_path / "p.yaml"
    cal.main(["--formats", "fp32", "bf16", "--executor", "native", "--matmul-sizes", "16", "--conv-shapes", "1x4x6",
              "--elementwise-numel", "1024", "--reps", "1", "--name", "box", "--out", str(out)])
    assert load_profile(out).name == "box"


@pytest.mark.parametrize("formats,match", [(("bf16",), "needs fp32"), (("fp32", "fp8_e4m3"), "only native")])
def test_bad_format_lists_are_clear_errors(formats, match):
    with pytest.raises(ValueError, match=match):
        cal.calibrate("cpu", **{**TINY, "formats": formats})


def test_bad_conv_shape_is_a_clear_error():
    with pytest.raises(SystemExit):
        cal.main(["--conv-shapes", "16x64"])
