"""The trainer logs modeled cost: steps.csv columns, metrics.json totals, untouched training."""
import json

import pandas as pd
import pytest

from adaprec.app.train import train


def run(make_cfg, tmp_path, name, *overrides):
    cfg = make_cfg("model=mlp", "dataset=digits", "trainer.max_steps=3", "trainer.eval_batches=1",
                   "monitor.every=0", *overrides)
    metrics = train(cfg, tmp_path / name)
    return metrics, pd.read_csv(tmp_path / name / "steps.csv")


def test_trainer_logs_modeled_cost_without_changing_training(make_cfg, tmp_path):
    on, steps_on = run(make_cfg, tmp_path, "on", "controller=bf16", "cost.profiles=[h100,bitops]")
    off, steps_off = run(make_cfg, tmp_path, "off", "controller=bf16", "cost.enabled=false")
    # counting runs one extra fwd+bwd; RNG, buffers and grads are restored, so losses match bit for bit
    assert steps_on["loss"].tolist() == steps_off["loss"].tolist()
    assert "cost_h100_s" not in steps_off and "cost_h100_s" not in off
    assert steps_on["cost_h100_s"].gt(0).all() and steps_on["cost_bitops_bops"].gt(0).all()
    assert on["cost_h100_s"] == pytest.approx(steps_on["cost_h100_s"].sum())
    assert on["rel_cost_bitops"] == pytest.approx(0.25)  # all-bf16: 16x16 / 32x32 bits
    assert on["flop_share_bf16"] == 1.0 and on["flop_share_fp32"] == 0.0
    saved = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert saved["cost_h100_s"] == pytest.approx(on["cost_h100_s"])
    # memory beside time: modeled bytes per step and the run's peak; no bytes for bitops
    assert steps_on["mem_h100_bytes"].gt(0).all() and "mem_bitops_bytes" not in steps_on
    assert saved["mem_h100_bytes"] == steps_on["mem_h100_bytes"].max()
    assert "cuda_max_mem_bytes" not in saved          # measured on CUDA only


def test_metrics_record_the_environment_and_steps_the_cpu_time(make_cfg, tmp_path):
    from adaprec.app.environment import run_environment
    metrics, steps = run(make_cfg, tmp_path, "env", "controller=bf16", "executor=auto")
    saved = json.loads((tmp_path / "env" / "metrics.json").read_text())
    assert saved["environment"] == run_environment("cpu", "auto")
    assert saved["environment"]["executors"]["fp32"] == "native"
    assert steps["cpu_ms"].gt(0).all() and steps["step_ms"].gt(0).all()
    assert 0 < saved["cpu_s"] and saved["wall_s"] > 0


def test_unknown_profile_fails_the_run_with_a_clear_error(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="no cost profile 'h1000'"):
        run(make_cfg, tmp_path, "bad", "cost.profiles=[h1000]")
    assert json.loads((tmp_path / "bad" / "metrics.json").read_text())["status"] == "failed"
