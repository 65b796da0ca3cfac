"""Per-role plan entries priced role by role: each GEMM at its operands' formats, each tensor's
bytes, casts and roundings in its role's format; a plain format prices as before, bit for bit."""
import dataclasses

import pytest
import torch
from torch import nn

from adaprec.cost import CostModel, load_profile
from adaprec.numerics.formats import BF16, get_format, register, unregister
from adaprec.runtime.plan import Plan

from .cost_models import ideal, mlp

GRADS_MX = "fprop=bf16,dgrad=mxfp8_e4m3,wgrad=mxfp8_e4m3"
PROFILES = ("bitops", "h100", "b200", "a100", "v100")


@pytest.fixture(scope="module")
def mlp_cm():
    return CostModel.count(mlp(8, 16, 4, depth=4), torch.randn(3, 8), optimizer="sgd_momentum")


@pytest.fixture(scope="module")
def wide_cm():
    """Big enough that compute and bytes, not launches, decide a step on a B200."""
    model = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512))
    return CostModel.count(model, torch.randn(256, 512), optimizer="sgd_momentum")


@pytest.fixture
def bf16_in_roles():
    """bf16 in all four roles, spelled as a per-role format (per_role() would collapse it)."""
    fmt = register(dataclasses.replace(BF16, name="bf16_roles", aliases=(), native=False, fallback="bf16",
                                       input="bf16", weight="bf16", dgrad="bf16", wgrad="bf16"))
    assert fmt.has_roles and set(fmt.roles().values()) == {"bf16"}
    yield fmt.name
    unregister(fmt.name)


def _plans(cm, fmt):
    return [Plan.uniform(fmt, cm.layers), Plan({"4": fmt}), Plan({"2": fmt, "4": "fp8_e4m3"})]


@pytest.mark.parametrize("profile", PROFILES)
def test_roles_all_bf16_price_exactly_as_plain_bf16(mlp_cm, bf16_in_roles, profile):
    for inference in (False, True):
        for roles, plain in zip(_plans(mlp_cm, bf16_in_roles), _plans(mlp_cm, "bf16")):
            a, b = mlp_cm.price(roles, profile, inference), mlp_cm.price(plain, profile, inference)
            assert (a.total, a.cast, a.rel_to_fp32) == (b.total, b.cast, b.rel_to_fp32)
            skip = {"format", "runs_as"} if profile == "bitops" else {"format"}  # bitops: the entry's name
            strip = [{k: v for k, v in r.items() if k not in skip} for r in a.per_layer]
            assert strip == [{k: v for k, v in r.items() if k not in skip} for r in b.per_layer]


def test_roles_all_bf16_on_an_emulating_profile_round_every_input(mlp_cm, bf16_in_roles):
    """The executor's per-role rounder never skips an input already on the grid (plain formats
    do): the only difference is that rounding, fwd + gradient."""
    prof = dataclasses.replace(ideal("h100"), emulated={"bf16": {"call_us": 10.0, "ns_per_elem": 2.0}})
    plain = {r["layer"]: r for r in mlp_cm.price("bf16", prof).per_layer}
    roles = {r["layer"]: r for r in mlp_cm.price(bf16_in_roles, prof).per_layer}
    for layer, c in mlp_cm._by_name.items():
        skipped = 0.0 if layer == "0" else prof.rounding_s("bf16", c.in_tensors, c.act_in_elems)
        assert roles[layer]["act_cast"] == pytest.approx(plain[layer]["act_cast"] + skipped, rel=1e-12)
        assert {k: roles[layer][k] for k in ("fwd", "bwd", "weight_cast", "round")} == \
            {k: plain[layer][k] for k in ("fwd", "bwd", "weight_cast", "round")}


def test_plain_formats_keep_the_one_format_formulas_bit_for_bit(mlp_cm):
    """What the model priced before per-role pricing, written out: fwd/bwd rooflines in one
    format, both weight passes and both activation passes equal (exact ==, no tolerance)."""
    prof = load_profile("h100")
    b, bw, k = 2, prof.bandwidth("bf16"), prof.kernel_s
    rows = {r["layer"]: r for r in mlp_cm.price(Plan({"4": "bf16"}), prof).per_layer}
    c, nxt = mlp_cm._by_name["4"], mlp_cm._by_name["6"]
    flops = lambda f: sum(n / prof.flops_per_s("bf16", kind) for kind, n in f.items())  # noqa: E731
    assert rows["4"]["fwd"] == max(flops(c.fwd_flops), (c.act_in_elems + c.param_elems + c.act_out_elems) * b / bw) \
        + c.fwd_kernels * k
    assert rows["4"]["bwd"] == max(flops(c.bwd_flops),
                                   (2 * c.act_in_elems + c.act_out_elems + 2 * c.param_elems) * b / bw) \
        + c.bwd_kernels * k
    assert rows["4"]["weight_cast"] == 2 * (c.param_elems * (4 + b) / bw + c.param_tensors * k)
    assert rows["4"]["act_cast"] == 2 * (c.act_in_elems * (4 + b) / bw + c.in_tensors * k)
    fp32_bw = prof.bandwidth("fp32")
    assert rows["6"]["act_cast"] == 2 * (nxt.act_in_elems * (b + 4) / fp32_bw + nxt.in_tensors * k)
    macs = sum(c.macs for c in mlp_cm.counts)
    for fmt, bits in (("fp32", 32), ("bf16", 16), ("mxfp8_e4m3", 8), ("nvfp4", 4)):
        assert mlp_cm.total(fmt, "bitops") == float(macs * bits * bits)


def test_bf16_forward_mxfp8_gradients_lie_between_all_bf16_and_all_mxfp8(wide_cm):
    for profile in ("bitops", "b200", ideal("b200")):
        bf16, mixed, mx = (wide_cm.total(f, profile) for f in ("bf16", GRADS_MX, "mxfp8_e4m3"))
        assert mx < mixed < bf16, profile
    # bitops: forward 16 x 16, dgrad 8 x 16 (grad x weight), wgrad 8 x 16 (grad x input), mean of three
    macs = sum(c.macs for c in wide_cm.counts)
    assert wide_cm.total(GRADS_MX, "bitops") == macs * (256 + 128 + 128) / 3
    assert wide_cm.price(GRADS_MX, "bitops").rel_to_fp32 == pytest.approx(1 / 6)


def test_each_gemm_runs_at_its_operands_formats(wide_cm):
    """wgrad names the weight gradient's format, not a GEMM operand: it moves bytes, never
    FLOPs; a GEMM with a bf16 operand runs at bf16's rate."""
    wgrad_mx, w8 = "fprop=bf16,dgrad=bf16,wgrad=mxfp8_e4m3", "input=bf16,weight=fp8_e4m3,dgrad=bf16,wgrad=bf16"
    assert wide_cm.total(wgrad_mx, "bitops") == wide_cm.total("bf16", "bitops")
    compute_bound = dataclasses.replace(ideal("b200"), bandwidth_tbps=1e6)   # bytes cost ~nothing
    rows = {f: {r["layer"]: r for r in wide_cm.price(f, compute_bound).per_layer}["0"]
            for f in ("bf16", wgrad_mx, w8, "fp8_e4m3")}
    assert rows[wgrad_mx]["bwd"] == rows["bf16"]["bwd"] and rows[wgrad_mx]["fwd"] == rows["bf16"]["fwd"]
    assert rows[w8]["fwd"] == rows["bf16"]["fwd"] and rows["fp8_e4m3"]["fwd"] < rows[w8]["fwd"]
    prof, c = ideal("b200"), wide_cm._by_name["0"]
    row = {r["layer"]: r for r in wide_cm.price(wgrad_mx, prof).per_layer}["0"]
    assert row["weight_cast"] == pytest.approx(     # master -> bf16 weight, mxfp8 weight grad -> master
        c.param_elems * (4 + 2) / prof.bandwidth("bf16")
        + c.param_elems * (4 + get_format("mxfp8_e4m3").bytes) / prof.bandwidth("mxfp8_e4m3"), rel=1e-12)


def test_activation_casts_follow_the_roles_on_each_side(mlp_cm):
    """Forward: the previous layer's output (its input role) to this layer's input role;
    backward: this layer's input gradient (dgrad) to the previous layer's dgrad."""
    prof = ideal("h100")
    plan = Plan({"2": "fprop=bf16,dgrad=fp8_e4m3,wgrad=bf16", "4": "bf16"}, default="fp32")
    rows = {r["layer"]: r for r in mlp_cm.price(plan, prof).per_layer}
    c4 = mlp_cm._by_name["4"]
    # 2 -> 4: bf16 output read as bf16 (no forward cast); 4's bf16 input gradient -> 2's fp8
    assert rows["4"]["act_cast"] == pytest.approx(c4.act_in_elems * (1 + 2) / prof.bandwidth("bf16"), rel=1e-12)
    c2 = mlp_cm._by_name["2"]   # 0 (fp32) -> 2: forward fp32 -> bf16, gradient fp8 -> fp32
    assert rows["2"]["act_cast"] == pytest.approx(
        c2.act_in_elems * (4 + 2) / prof.bandwidth("bf16") + c2.act_in_elems * (4 + 1) / prof.bandwidth("fp8_e4m3"),
        rel=1e-12)


def test_emulated_roles_round_in_their_own_formats(mlp_cm):
    prof = dataclasses.replace(ideal("h100"), emulated={"bf16": {"call_us": 10.0, "ns_per_elem": 2.0},
                                                        "fp16": {"call_us": 30.0, "ns_per_elem": 5.0}})
    row = {r["layer"]: r for r in mlp_cm.price(Plan({"4": "fprop=bf16,dgrad=fp16,wgrad=fp32"}), prof).per_layer}["4"]
    c = mlp_cm._by_name["4"]
    half = lambda f, t, n: 0.5 * prof.rounding_s(f, t, n)  # noqa: E731
    assert row["runs_as"] == "fprop=bf16,dgrad=fp16,wgrad=fp32 (emulated: input, weight, dgrad)"
    assert row["weight_cast"] == pytest.approx(half("bf16", c.param_tensors, c.param_elems))  # wgrad fp32: none
    assert row["round"] == pytest.approx(half("bf16", c.out_tensors, c.act_out_elems)
                                         + half("fp16", c.out_tensors, c.act_out_elems))
    assert row["act_cast"] == pytest.approx(half("bf16", c.in_tensors, c.act_in_elems)
                                            + half("fp16", c.in_tensors, c.act_in_elems))


@pytest.mark.parametrize("profile", ["h100", "b200", "bitops", "local"])
def test_marginal_and_layer_format_costs_agree_with_total_for_per_role_entries(mlp_cm, profile):
    formats = ["fp32", "bf16", GRADS_MX, "fp8_hybrid", "mxfp8_e4m3"]
    around = Plan({"2": GRADS_MX, "4": "fp8_hybrid"})
    costs = mlp_cm.layer_format_costs(profile, formats, around=around)
    base = mlp_cm.total(around, profile)
    for layer in mlp_cm.layers:
        for fmt in formats:
            switched = mlp_cm.total(around.with_changes({layer: fmt}), profile)
            assert mlp_cm.marginal(around, layer, fmt, profile) == switched - base
            assert costs[layer][fmt] - costs[layer][around.format_of(layer)] == pytest.approx(
                switched - base, rel=1e-9, abs=1e-15 * abs(base))


def test_per_layer_rows_report_the_roles(wide_cm):
    cost = wide_cm.price(GRADS_MX, "b200")
    assert {r["format"] for r in cost.per_layer} == {GRADS_MX}
    assert {r["runs_as"] for r in cost.per_layer} == {GRADS_MX}
    assert cost.total == pytest.approx(sum(r["total"] for r in cost.per_layer) + cost.other + cost.optimizer)
    local = {r["runs_as"] for r in wide_cm.price(GRADS_MX, "local").per_layer}
    assert local == {"fprop=bf16,dgrad=fp8_e4m3,wgrad=fp8_e4m3 (emulated)"}  # mxfp8 falls back to fp8 there
    bitops = wide_cm.price(GRADS_MX, "bitops").per_layer
    assert all(r["fwd"] == wide_cm._by_name[r["layer"]].macs * 256 / 3 for r in bitops)
    assert all(r["bwd"] == wide_cm._by_name[r["layer"]].macs * 256 / 3 for r in bitops)


def test_memory_keeps_weights_and_inputs_in_their_roles(mlp_cm):
    acts = sum(c.act_in_elems for c in mlp_cm.counts)
    n = mlp_cm.params[1]
    mem = mlp_cm.memory("input=bf16,weight=fp8_e4m3,dgrad=bf16,wgrad=bf16", "h100")
    assert mem.activations == 2 * acts and mem.weights == 4 * n + 1 * n
