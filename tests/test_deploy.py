"""Deploy search: a plan within tolerance, no costlier than fp32, JSON round trip; tolerance 0
keeps a layer whose 16-bit outputs change the predictions in fp32."""
import json

import pytest
import torch
from torch import nn

from adaprec import AdaptivePrecision, Plan
from adaprec.data.bundle import DataBundle
from adaprec.tools.deploy import deploy_search, load_trained_run, quality_drop, write_result
from adaprec.app.train import train
from adaprec.tasks import evaluate
from .cost_models import ideal


def fragile_head_task():
    """Class = sign of x0; the head's logits are 1000 and 1000 + 0.04*x0, so 16-bit rounding
    (spacing 4 in bf16, 0.5 in fp16 near 1000) ties them and flips every positive example,
    while the layers before it are exact in any 16-bit format."""
    s = torch.tensor([-0.5, -0.25, 0.25, 0.5]).repeat(16)
    x = torch.stack([s, torch.zeros_like(s)], 1)
    y = (s > 0).long()
    data = DataBundle("classification", x, y, x.clone(), y.clone(), num_classes=2)
    model = nn.Sequential()
    model.add_module("inp", nn.Linear(2, 64))
    model.add_module("mid", nn.Linear(64, 64))
    model.add_module("head", nn.Linear(64, 2))
    with torch.no_grad():
        model.inp.weight.zero_(); model.inp.weight[:, 0] = 1.0; model.inp.bias.zero_()
        model.mid.weight.copy_(torch.eye(64)); model.mid.bias.zero_()
        model.head.weight.zero_(); model.head.weight[1] = 0.04 / 64
        model.head.bias.fill_(1000.0)
    return model, data


def test_tolerance_zero_keeps_the_fragile_layer_fp32():
    model, data = fragile_head_task()
    result = deploy_search(model, data, ideal("h100"), tolerance=0.0)  # casts cost no launches
    assert result.fp32_quality["val_accuracy"] == 1.0
    assert result.bf16_quality["val_accuracy"] == 0.5          # all-bf16 breaks it
    assert result.plan["head"] == "fp32"
    assert result.plan["mid"] in ("bf16", "fp16")              # the exact layers go 16-bit
    assert result.quality["val_accuracy"] == 1.0
    assert result.latency_s < result.fp32_latency_s
    assert set(result.table["stage"]) == {"uniform", "sensitivity", "greedy"}
    sens = result.table[result.table.stage == "sensitivity"].set_index(["layer", "format"])
    assert sens.loc[("head", "bf16"), "drop"] == 0.5 and not sens.loc[("head", "fp16"), "accepted"]


@pytest.mark.slow  # several seconds of training on 2 cores
def test_deploy_on_a_trained_run_meets_tolerance_and_round_trips(make_cfg, tmp_path):
    run = tmp_path / "run"
    train(make_cfg("model=mlp", "trainer.max_steps=30", "trainer.batch_size=32", "controller=fp32",
                   "monitor.every=0", "trainer.eval_every=0", "cost.enabled=false"), run)
    _, model, data = load_trained_run(run)
    result = deploy_search(model, data, "a100", tolerance=0.02)
    path = write_result(result, tmp_path / "deploy", run_dir=str(run))
    saved = json.loads(path.read_text())
    assert Plan.from_dict(saved["plan"]) == result.plan
    assert saved["modeled_latency_s"] <= saved["fp32_modeled_latency_s"]
    assert (tmp_path / "deploy" / "deploy_search.csv").exists()
    # re-evaluate from scratch: a fresh model from the run, the saved plan applied
    _, fresh, data = load_trained_run(run)
    ap = AdaptivePrecision.from_plan(fresh, path)
    assert dict(ap.plan) == dict(result.plan)
    q = evaluate(fresh, ap, data, 256, torch.device("cpu"))
    assert q == result.quality
    assert quality_drop(result.fp32_quality, q) <= 0.02
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="cannot load .*model.pt"):
        load_trained_run(run)


def test_bad_inputs(tmp_path):
    model, data = fragile_head_task()
    with pytest.raises(ValueError, match="tolerance=-1"):
        deploy_search(model, data, "h100", tolerance=-1)
    with pytest.raises(FileNotFoundError, match="finished adaprec run"):
        load_trained_run(tmp_path)


def test_inference_pricing_is_forward_only():
    from adaprec.cost import CostModel
    model, _ = fragile_head_task()
    cm = CostModel.count(model, (torch.randn(8, 2),))
    plan = Plan({"inp": "bf16", "mid": "bf16", "head": "fp32"})
    train_cost, infer_cost = cm.price(plan, "h100"), cm.price(plan, "h100", inference=True)
    assert infer_cost.total < train_cost.total
    assert all(r["bwd"] == 0 and r["weight_cast"] == 0 for r in infer_cost.per_layer)
    # activation casts are paid once (forward) instead of twice (forward + gradient)
    assert sum(r["act_cast"] for r in infer_cost.per_layer) == pytest.approx(
        sum(r["act_cast"] for r in train_cost.per_layer) / 2)


@pytest.mark.slow
def test_deploy_cli(make_cfg, tmp_path):
    import subprocess
    import sys
    from .conftest import CONF
    run = tmp_path / "run"
    train(make_cfg("model=mlp", "trainer.max_steps=10", "trainer.batch_size=32", "controller=fp32",
                   "monitor.every=0", "trainer.eval_every=0", "cost.enabled=false"), run)
    res = subprocess.run([sys.executable, "-m", "adaprec.tools.deploy", f"run_dir={run}", "profile=h100",
                          "tolerance=0.05"], cwd=CONF.parent, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    saved = json.loads((run / "deploy_h100" / "inference_plan.json").read_text())
    assert saved["profile"] == "h100" and saved["rel_latency"] <= 1.0
    assert "modeled latency on h100" in res.stdout
    report = subprocess.run([sys.executable, "-m", "analysis.report", "--run", str(run), "--out",
                             str(tmp_path / "fig")], cwd=CONF.parent, capture_output=True, text=True,
                            timeout=600)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "fig" / "sensitivity_deploy_h100.pdf").stat().st_size > 0
