"""Pricing plans: roofline per layer, cast costs exactly at format boundaries, device orderings."""
import pandas as pd
import pytest
import torch
from torch import nn

from adaprec.cost import CostMeter, CostModel, load_profile
from adaprec.numerics.formats import FORMATS
from adaprec.runtime.plan import Plan
from .cost_models import ideal, mlp



H100 = ideal("h100")
BW = 3.35e12


@pytest.fixture(scope="module")
def mlp_cm():
    return CostModel.count(mlp(8, 16, 4, depth=4), torch.randn(3, 8), optimizer="none")  # layers 0, 2, 4, 6


@pytest.fixture(scope="module")
def conv_cm():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    return CostModel.count(model, torch.randn(4, 3, 16, 16), optimizer="none")


def casts(cost):
    return {r["layer"]: r["act_cast"] for r in cost.per_layer}


def test_uniform_fp32_has_no_cast_cost(mlp_cm):
    cost = mlp_cm.price("fp32", H100)
    assert cost.cast == 0 and cost.rel_to_fp32 == 1.0
    assert all(r["weight_cast"] == 0 for r in cost.per_layer)


def test_activation_casts_appear_exactly_at_format_boundaries(mlp_cm):
    cost = mlp_cm.price(Plan({"4": "bf16"}), H100)
    elems = 3 * 16  # activation between layers 2|4 and 4|6
    expected = 2 * elems * (4 + 2) / BW  # forward cast + gradient cast back, fp32 <-> bf16
    assert casts(cost) == {"0": 0.0, "2": 0.0, "4": pytest.approx(expected, rel=1e-12),
                           "6": pytest.approx(expected, rel=1e-12)}
    weight_cast = {r["layer"]: r["weight_cast"] for r in cost.per_layer}
    assert weight_cast == {"0": 0.0, "2": 0.0, "4": pytest.approx(2 * 272 * (4 + 2) / BW), "6": 0.0}
    assert cost.cast == pytest.approx(2 * expected + weight_cast["4"])


def test_uniform_low_precision_casts_only_at_the_fp32_input_and_loss(mlp_cm):
    cost = mlp_cm.price("bf16", H100)
    assert casts(cost) == {"0": pytest.approx(2 * 3 * 8 * 6 / BW), "2": 0.0, "4": 0.0,
                           "6": pytest.approx(2 * 3 * 4 * 6 / BW)}  # input in, logits out


def test_roofline_memory_bound_and_compute_bound_layers():
    model = nn.Sequential(nn.Linear(512, 512), nn.LayerNorm(512))
    cm = CostModel.count(model, torch.randn(512, 512))
    rows = pd.DataFrame(cm.price("fp32", H100).per_layer).set_index("layer")
    assert rows.loc["0", "fwd"] == pytest.approx(2 * 512 ** 3 / 66.9e12)  # compute-bound
    n, p = 512 * 512, 2 * 512
    assert rows.loc["1", "fwd"] == pytest.approx((2 * n + p) * 4 / BW)     # no FLOPs: bytes only
    assert rows.loc["1", "bwd"] == pytest.approx((3 * n + 2 * p) * 4 / BW)


def test_device_orderings(conv_cm):
    profiles = {p: ideal(p) for p in ("h100", "a100", "v100")}
    cost = {(p, f): conv_cm.price(f, prof).total for p, prof in profiles.items() for f in FORMATS}
    assert cost["h100", "bf16"] < cost["h100", "fp32"]
    assert cost["h100", "fp16"] == cost["h100", "bf16"]          # same peaks, same bytes
    assert cost["h100", "fp8_e4m3"] < cost["h100", "bf16"]
    assert cost["v100", "bf16"] == cost["v100", "fp32"]          # no bf16 on Volta: fp32 fallback
    assert cost["v100", "fp16"] < cost["v100", "fp32"]
    assert cost["a100", "fp8_e5m2"] == cost["a100", "bf16"]      # no fp8 on Ampere: bf16 fallback
    assert conv_cm.cheapness_order(H100)[-1] == "fp32"
    assert conv_cm.cheapness_order(H100)[:2] == ["fp8_e4m3", "fp8_e5m2"]
    assert {r["runs_as"] for r in conv_cm.price("bf16", "v100").per_layer} == {"fp32"}


def test_v100_mixed_bf16_plan_has_no_casts(conv_cm):
    plan = Plan({"2": "bf16"})
    assert conv_cm.price(plan, "v100").cast == 0
    assert conv_cm.price(plan, "v100").total == conv_cm.price("fp32", "v100").total


def test_bitops_are_macs_times_bits_squared(mlp_cm):
    macs = sum(r["macs"] for r in mlp_cm.layer_table())
    fp32 = mlp_cm.price("fp32", "bitops")
    assert fp32.total == macs * 32 * 32 and fp32.unit == "bops"
    assert mlp_cm.price("bf16", "bitops").rel_to_fp32 == 0.25
    assert mlp_cm.price("fp8_e4m3", "bitops").rel_to_fp32 == 1 / 16
    with pytest.raises(ValueError, match="prices in bops"):
        fp32.seconds


def test_flop_shares_follow_the_plan(conv_cm):
    t = pd.DataFrame(conv_cm.layer_table()).set_index("layer")
    total = (t["fwd_flops"] + t["bwd_flops"]).sum()
    shares = conv_cm.price(Plan({"2": "bf16", "5": "fp16"}), H100).flop_shares
    assert set(shares) == set(FORMATS) and sum(shares.values()) == pytest.approx(1.0)
    assert shares["bf16"] == pytest.approx((t.loc["2", "fwd_flops"] + t.loc["2", "bwd_flops"]) / total)
    assert shares["fp8_e4m3"] == 0.0


def test_layer_format_costs_and_metrics_fields(conv_cm):
    table = conv_cm.layer_format_costs(H100)
    assert list(table) == conv_cm.layers and set(table["2"]) == set(FORMATS)
    assert table["2"]["bf16"] < table["2"]["fp32"]
    assert conv_cm.layer_cost("2", "fp32", H100) == table["2"]["fp32"]
    assert set(conv_cm.price("bf16", H100).metrics()) == {"cost_h100_s", "rel_cost_h100"}


def test_price_rejects_other_types(conv_cm):
    with pytest.raises(ValueError, match="takes a Plan"):
        conv_cm.price(3, H100)


def test_cost_meter_sums_steps_and_weights_shares(conv_cm):
    meter = CostMeter(conv_cm, [H100, "bitops"])
    fp32, bf16 = Plan.uniform("fp32", conv_cm.layers), Plan.uniform("bf16", conv_cm.layers)
    row = meter.update(fp32)
    assert set(row) == {"cost_h100_s", "cost_bitops_bops"}
    meter.update(bf16)
    meter.update(bf16)
    m = meter.metrics()
    step = {f: conv_cm.price(f, H100).total for f in ("fp32", "bf16")}
    assert m["cost_h100_s"] == pytest.approx(step["fp32"] + 2 * step["bf16"])
    assert m["rel_cost_h100"] == pytest.approx((step["fp32"] + 2 * step["bf16"]) / (3 * step["fp32"]))
    assert m["rel_cost_bitops"] == pytest.approx((1 + 2 * 0.25) / 3)
    assert (m["flop_share_fp32"], m["flop_share_bf16"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert meter.step_columns(bf16)["cost_h100_s"] == step["bf16"]


def test_cost_meter_rejects_duplicate_or_missing_profiles(conv_cm):
    with pytest.raises(ValueError, match="distinct"):
        CostMeter(conv_cm, ["h100", "h100"])
    with pytest.raises(ValueError, match="at least one"):
        CostMeter(conv_cm, [])
