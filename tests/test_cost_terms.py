"""The step-cost terms: kernels (launch / dispatch), the optimizer step, per-class efficiency,
TF32 per op kind, emulated roundings, memory; and one pricing function for controllers,
budgets and plans."""
import dataclasses

import pytest
import torch
from torch import nn

from adaprec import AdaptivePrecision
from adaprec.controllers import Bandit, Threshold
from adaprec.controllers.budget import Budget
from adaprec.controllers.base import ControllerContext
from adaprec.controllers._common import emitted_plan
from adaprec.cost import CostMeter, CostModel, DeviceProfile, load_profile
from adaprec.cost.optimizer import OPTIMIZERS, optimizer_spec
from adaprec.cost.profiles import torch_tf32
from adaprec.runtime.plan import Plan

from .cost_models import AttentionBlock, ideal, mlp

H100 = load_profile("h100")


@pytest.fixture(scope="module")
def mlp_cm():
    return CostModel.count(mlp(8, 16, 4, depth=4), torch.randn(3, 8), optimizer="sgd_momentum")


def test_kernels_are_counted_per_layer_and_views_are_not():
    cm = CostModel.count(nn.Sequential(nn.Linear(4, 3)), torch.randn(2, 4))
    (lin,) = cm.counts
    assert lin.fwd_kernels == 1                 # addmm (the weight transpose is a view)
    assert lin.bwd_kernels == 2                 # weight grad mm, bias grad sum (no input grad)
    assert (lin.in_tensors, lin.out_tensors, lin.param_tensors) == (1, 1, 2)


def test_launch_and_optimizer_terms_make_a_tiny_mlp_cost_microseconds(mlp_cm):
    cost = mlp_cm.price("fp32", H100)
    roofline = mlp_cm.price("fp32", dataclasses.replace(ideal("h100"), optimizer_foreach=True))
    assert cost.total > 5e-6 and roofline.total < 1e-7    # launches, not FLOPs, price a tiny model
    kernels = mlp_cm._kernel_count(Plan.uniform("fp32", mlp_cm.layers), H100, False)
    assert cost.kernels == pytest.approx(kernels * 5e-6)
    # optimizer: foreach on H100 -> 3 launches for SGD with momentum, 8 fp32 passes of the params
    n = mlp_cm.params[1]
    assert cost.optimizer == pytest.approx(3 * 5e-6 + 8 * 4 * n / (3.35e12 * 0.9))
    assert cost.total == pytest.approx(sum(r["total"] for r in cost.per_layer) + cost.other + cost.optimizer)


def test_optimizer_kernels_per_tensor_without_foreach(mlp_cm):
    prof = dataclasses.replace(H100, optimizer_foreach=False)
    assert mlp_cm.price("fp32", prof).optimizer == pytest.approx(
        3 * 8 * 5e-6 + 8 * 4 * mlp_cm.params[1] / (3.35e12 * 0.9))  # 8 parameter tensors


def test_optimizer_spec_reads_torch_optimizers():
    p = [nn.Parameter(torch.zeros(2))]
    assert optimizer_spec(torch.optim.SGD(p, lr=0.1)).name == "sgd"
    assert optimizer_spec(torch.optim.SGD(p, lr=0.1, momentum=0.9)) == OPTIMIZERS["sgd_momentum"]
    wd = optimizer_spec(torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4))
    assert (wd.kernels, wd.passes, wd.states) == (4, 11, 1)
    assert optimizer_spec(torch.optim.AdamW(p)).states == 2
    with pytest.raises(ValueError, match="one of"):
        optimizer_spec("lbfgs")


def test_efficiency_scales_gemm_and_bandwidth_separately():
    prof = DeviceProfile.from_dict({"name": "x", "peak_tflops": {"fp32": 10}, "bandwidth_tbps": 2,
                                    "efficiency": {"gemm": 0.5, "elementwise": 0.8},
                                    "fallback": {f: "fp32" for f in ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")}})
    assert prof.flops_per_s("fp32", "matmul") == 5e12 and prof.bandwidth("fp32") == pytest.approx(1.6e12)
    with pytest.raises(ValueError, match="efficiency"):
        DeviceProfile.from_dict({**dataclasses.asdict(prof), "efficiency": {"gemm": 1.5}})


def test_tf32_per_op_kind_follows_torch_defaults():
    assert H100.tf32 == {"matmul": False, "conv": True}
    assert H100.flops_per_s("fp32", "conv") == pytest.approx(494.7e12 * 0.75)   # cuDNN: TF32
    assert H100.flops_per_s("fp32", "matmul") == pytest.approx(66.9e12 * 0.75)  # matmul: IEEE
    assert torch_tf32()["conv"] == torch.backends.cudnn.allow_tf32
    legacy = {"name": "x", "peak_tflops": {"fp32": 1, "tf32": 8}, "bandwidth_tbps": 1, "fp32_uses_tf32": True,
              "fallback": {f: "fp32" for f in ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")}}
    assert DeviceProfile.from_dict(legacy).flops_per_s("fp32", "matmul") == 8e12


def _emulating(base: DeviceProfile) -> DeviceProfile:
    return dataclasses.replace(base, emulated={"bf16": {"call_us": 10.0, "ns_per_elem": 2.0}})


def test_emulated_format_computes_as_fp32_plus_roundings(mlp_cm):
    prof = _emulating(ideal("h100"))
    fp32 = {r["layer"]: r for r in mlp_cm.price("fp32", prof).per_layer}
    rows = {r["layer"]: r for r in mlp_cm.price(Plan({"4": "bf16"}), prof).per_layer}
    c = mlp_cm._by_name["4"]
    assert rows["4"]["runs_as"] == "bf16 (emulated)"
    assert rows["4"]["fwd"] == fp32["4"]["fwd"] and rows["4"]["bwd"] == fp32["4"]["bwd"]
    assert rows["4"]["weight_cast"] == pytest.approx(2 * 10e-6 + c.param_elems * 2e-9)
    assert rows["4"]["act_cast"] == pytest.approx(10e-6 + c.act_in_elems * 2e-9)    # input rounded
    assert rows["4"]["round"] == pytest.approx(10e-6 + c.act_out_elems * 2e-9)      # output rounded
    assert rows["6"]["act_cast"] == 0.0            # an fp32 layer reads the fp32-held values as is
    # a second bf16 layer in a row skips the input rounding (already on the grid)
    both = {r["layer"]: r for r in mlp_cm.price(Plan({"4": "bf16", "6": "bf16"}), prof).per_layer}
    assert both["6"]["act_cast"] == 0.0 and both["6"]["round"] > 0


def test_custom_layer_pays_op_level_rounding():
    cm = CostModel.count(AttentionBlock(8), torch.randn(2, 5, 8))
    core = cm._by_name["core"]
    assert not core.stock and core.inner_ops >= 3   # two matmuls, the scale, the softmax
    prof = _emulating(ideal("h100"))
    row = {r["layer"]: r for r in cm.price(Plan({"core": "bf16"}), prof).per_layer}["core"]
    assert row["round"] == pytest.approx(prof.rounding_s("bf16", core.out_tensors, core.act_out_elems)
                                         + prof.rounding_s("bf16", core.inner_ops, core.inner_out_elems))


def test_memory_by_format_with_fp32_masters(mlp_cm):
    n = mlp_cm.params[1]
    fp32, bf16 = mlp_cm.memory("fp32", H100), mlp_cm.memory("bf16", H100)
    acts = sum(c.act_in_elems for c in mlp_cm.counts)
    assert (fp32.weights, fp32.grads, fp32.optimizer, fp32.activations) == (4 * n, 4 * n, 4 * n, 4 * acts)
    assert bf16.weights == 6 * n and bf16.activations == 2 * acts     # master + bf16 copy
    assert bf16.total == bf16.weights + bf16.grads + bf16.optimizer + bf16.activations
    assert mlp_cm.memory("bf16", "v100").activations == 4 * acts       # bf16 runs as fp32 on Volta
    assert mlp_cm.price("bf16", H100).memory == bf16


def test_layer_format_costs_differences_are_plan_price_differences(mlp_cm):
    costs = mlp_cm.layer_format_costs(H100)
    fp32 = Plan.uniform("fp32", mlp_cm.layers)
    for layer in mlp_cm.layers:
        for fmt in ("bf16", "fp8_e4m3"):
            switched = mlp_cm.price(fp32.with_changes({layer: fmt}), H100).total
            assert costs[layer][fmt] - costs[layer]["fp32"] == pytest.approx(
                switched - mlp_cm.price(fp32, H100).total, rel=1e-12, abs=1e-18)
    assert mlp_cm.marginal(fp32, "4", "fp32", H100) == 0.0


def _wide():
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


@pytest.mark.parametrize("make", [
    lambda: Threshold(interval=1, patience=1, cooldown=0, start="bf16", cost_budget=0.99),
    lambda: Bandit(algorithm="ucb1", interval=1, cost_budget=0.99, seed=0),
], ids=["threshold", "bandit"])
def test_what_controllers_see_is_what_plans_are_priced_at(make):
    """The budget prices the controller's emitted plan with the cost model's one function."""
    model, x = _wide(), torch.randn(512, 64)
    cm = CostModel.count(model, x)
    meter = CostMeter(cm, [ideal("h100")])
    controller = make()
    ap = AdaptivePrecision(model, controller=controller, monitor_every=0, plan_cost=meter.plan_cost,
                           layer_costs=meter.layer_format_costs(), executor="emulated")
    plan = ap.plan
    budget = controller._budget
    assert budget.relative(dict(plan)) == pytest.approx(cm.price(plan, ideal("h100")).rel_to_fp32, rel=1e-12)
    assert budget.relative(dict(plan)) <= 0.99 + 1e-12
    assert emitted_plan(dict(plan)) == plan
    ap.remove()


def test_budget_with_plan_cost_uses_exact_marginal_savings():
    cm = CostModel.count(_wide(), torch.randn(512, 64))
    ctx = ControllerContext(layers=cm.layers, plan_cost=lambda p: cm.total(p, ideal("h100")))
    b = Budget(0.9, {n: ["bf16", "fp32"] for n in cm.layers}, ctx)
    plan = {n: "fp32" for n in cm.layers}
    trades = b.fit(plan)
    assert trades and b.relative(plan) <= 0.9
    assert b.relative(plan) == pytest.approx(cm.price(emitted_plan(plan), ideal("h100")).rel_to_fp32)
    # the first trade is the biggest exact saving from all-fp32
    savings = {n: -cm.marginal(emitted_plan({m: "fp32" for m in cm.layers}), n, "bf16", ideal("h100"))
               for n in cm.layers}
    assert trades[0][0] == max(savings, key=savings.get)
