"""The trainer logs modeled cost: steps.csv columns, metrics.json totals, untouched training."""
import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from adaprec.schema import register_schemas
from adaprec.train import train

CONF = str(Path(__file__).resolve().parents[1] / "conf")
register_schemas()


def run(tmp_path, name, *overrides):
    base = ["model=mlp", "dataset=digits", "trainer.max_steps=3", "trainer.progress=false",
            "trainer.eval_batches=1", "monitor.every=0"]
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        cfg = compose("config", overrides=base + list(overrides))
    metrics = train(cfg, tmp_path / name)
    return metrics, pd.read_csv(tmp_path / name / "steps.csv")


def test_trainer_logs_modeled_cost_without_changing_training(tmp_path):
    on, steps_on = run(tmp_path, "on", "controller=bf16", "cost.profiles=[h100,bitops]")
    off, steps_off = run(tmp_path, "off", "controller=bf16", "cost.enabled=false")
    # counting runs one extra fwd+bwd; RNG, buffers and grads are restored, so losses match bit for bit
    assert steps_on["loss"].tolist() == steps_off["loss"].tolist()
    assert "cost_h100_s" not in steps_off and "cost_h100_s" not in off
    assert steps_on["cost_h100_s"].gt(0).all() and steps_on["cost_bitops_bops"].gt(0).all()
    assert on["cost_h100_s"] == pytest.approx(steps_on["cost_h100_s"].sum())
    assert on["rel_cost_bitops"] == pytest.approx(0.25)  # all-bf16: 16x16 / 32x32 bits
    assert on["flop_share_bf16"] == 1.0 and on["flop_share_fp32"] == 0.0
    saved = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert saved["cost_h100_s"] == pytest.approx(on["cost_h100_s"])


def test_unknown_profile_fails_the_run_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no cost profile 'h1000'"):
        run(tmp_path, "bad", "cost.profiles=[h1000]")
    assert json.loads((tmp_path / "bad" / "metrics.json").read_text())["status"] == "failed"
