"""The validation benchmark's code path (README: calibrate, then benchmarks.cost_validation) at a
tiny size: it runs, prints predicted vs measured per plan and the two summary figures. No
timing assertions; the figures themselves are in the README."""
import math

import pytest

from adaprec.tools import calibrate as cal
from benchmarks import cost_validation as bench


@pytest.mark.slow
def test_validation_benchmark_runs_after_calibrate(tmp_path, capsys):
    profile = tmp_path / "local.yaml"
    cal.main(["--matmul-sizes", "16", "--conv-shapes", "1x4x6", "--elementwise-numel", "4096",
              "--reps", "1", "--threads", "1", "--clock", "process", "--out", str(profile)])
    result = bench.main(["--profile", str(profile), "--plans", "3", "--reps", "1", "--batch", "2",
                         "--image-size", "8", "--threads", "1", "--clock", "process"])
    out = capsys.readouterr().out
    assert set(result) == {"cnn", "gpt"}
    for name, figures in result.items():
        assert f"## {name}:" in out and f"{name}: median |error|" in out
        assert figures["median_abs_error"] >= 0 and (math.isnan(figures["spearman"])
                                                     or -1 <= figures["spearman"] <= 1)
    assert out.count("%") >= 2 * 5   # one error per plan: fp32, bf16 and 3 random plans


def test_random_plans_span_the_low_precision_share():
    layers = [f"l{i}" for i in range(12)]
    plans = bench.random_plans(layers, ["fp32", "bf16", "fp16"], 20, seed=0)
    assert len(plans) == 22 and set(plans[0].values()) == {"fp32"} and set(plans[1].values()) == {"bf16"}
    shares = [sum(p[layer] != "fp32" for layer in layers) / 12 for p in plans[2:]]
    assert min(shares) < 0.3 and max(shares) > 0.7   # the share itself is drawn per plan
    assert bench.random_plans(layers, ["fp32", "bf16"], 20, seed=0) == bench.random_plans(
        layers, ["fp32", "bf16"], 20, seed=0)
