"""Per-role plan entries (issue 18 item 3): a plan entry is one format or separate formats for
the fprop operands (input, weight), dgrad and wgrad; both shapes through Plan, controllers, the
executors, the loss scaler and the run directory's tables."""
import csv
import dataclasses
import gzip
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import FixedPlan, Static
from adaprec.numerics.emulation import round_to
from adaprec.numerics.formats import BF16, FP16, FP32, format_names, get_format, per_role

from .cli_inprocess import TINY, cli_run  # noqa: F401 (fixture)

HYBRID16 = {"fprop": "bf16", "dgrad": "fp16", "wgrad": "bf16"}


# -- the entry ------------------------------------------------------------------------------------
def test_a_mapping_and_its_canonical_string_are_one_entry():
    f = per_role(HYBRID16)
    assert f.name == "fprop=bf16,dgrad=fp16,wgrad=bf16"
    assert get_format(f.name) is f and get_format(dict(HYBRID16)) is f
    assert get_format("wgrad=bf16, FPROP=bf16,dgrad=half") is f  # any order, aliases, spaces
    assert f.roles() == {"input": "bf16", "weight": "bf16", "dgrad": "fp16", "wgrad": "bf16"}
    assert not f.native and f.fallback == "bf16"
    assert f.name not in format_names()  # entries are not registered formats


def test_role_defaults_and_equal_roles_give_the_plain_format():
    assert per_role({"fprop": "bf16"}) is BF16
    assert per_role({"input": "fp16", "weight": "fp16", "dgrad": "fp16", "wgrad": "fp16"}) is FP16
    # weight <- input, dgrad <- input, wgrad <- dgrad
    assert per_role({"fprop": "bf16", "dgrad": "fp16"}).roles()["wgrad"] == "fp16"
    split = per_role({"input": "fp8_e4m3", "weight": "bf16", "dgrad": "fp8_e5m2"})
    assert split.name == "input=fp8_e4m3,weight=bf16,dgrad=fp8_e5m2,wgrad=fp8_e5m2"
    assert split.role_format("weight:weight").name == "bf16"
    assert split.role_format("input:0").name == "fp8_e4m3"


@pytest.mark.parametrize("spec,match", [
    ({"fprop": "bf16", "bwd": "fp16"}, "unknown role"),
    ({"fprop": "bf16", "input": "fp16"}, "not both"),
    ({"dgrad": "fp16"}, "needs fprop"),
    ({"fprop": "fp8_hybrid", "dgrad": "fp16"}, "has roles itself"),
    ({"fprop": "fp12"}, "unknown format"),
    ("fprop=bf16,dgrad", "role=format pairs"),
])
def test_bad_entries_fail_in_one_line_naming_the_fix(spec, match):
    with pytest.raises(ValueError, match=match):
        get_format(spec)


def test_gradients_decide_loss_scaling():
    assert per_role(HYBRID16).needs_loss_scaling            # fp16 dgrad: gradients need the scaler
    assert not per_role({"fprop": "fp16", "dgrad": "bf16"}).needs_loss_scaling
    assert get_format("fp8_hybrid").needs_loss_scaling and FP16.needs_loss_scaling
    assert not BF16.needs_loss_scaling


# -- the plan ---------------------------------------------------------------------------------
def test_plan_takes_both_shapes_and_stores_one_string():
    by_map = Plan({"fc1": HYBRID16, "fc2": "fp16"}, default="bf16")
    by_str = Plan({"fc1": "fprop=bf16,dgrad=fp16,wgrad=bf16", "fc2": "half"}, default="bf16")
    assert by_map == by_str and by_map.hash == by_str.hash
    assert by_map["fc1"] == "fprop=bf16,dgrad=fp16,wgrad=bf16"
    assert by_map.roles_of("fc1")["dgrad"] == "fp16" and by_map.roles_of("fc2")["wgrad"] == "fp16"
    assert Plan.from_json(by_map.to_json()) == by_map
    assert json.loads(by_map.to_json())["entries"]["fc1"] == by_map["fc1"]
    assert by_map.diff(Plan({"fc1": "bf16", "fc2": "fp16"}, default="bf16")) == {
        "fc1": ("fprop=bf16,dgrad=fp16,wgrad=bf16", "bf16")}
    # an entry whose roles are all one format is that format: the plain plan, the plain hash
    assert Plan({"fc1": {"fprop": "bf16"}}).hash == Plan({"fc1": "bf16"}).hash
    changed = by_map.with_changes({"fc2": {"fprop": "fp8_e4m3", "dgrad": "fp8_e5m2"}})
    assert changed["fc2"] == "fprop=fp8_e4m3,dgrad=fp8_e5m2,wgrad=fp8_e5m2"


def test_static_controllers_take_per_role_entries():
    layers = ["0", "2"]
    ctx = _context(layers)
    fixed = FixedPlan({"0": HYBRID16}, default="bf16")
    fixed.setup(ctx)
    assert fixed.decide(0)["0"] == per_role(HYBRID16).name
    static = Static("fprop=bf16,dgrad=fp16,wgrad=bf16")
    static.setup(ctx)
    assert set(static.decide(0).values()) == {per_role(HYBRID16).name}


def _context(layers):
    from adaprec.controllers.base import ControllerContext
    return ControllerContext(layers=layers)


# -- execution --------------------------------------------------------------------------------
def _linear_step(executor: str, entry, x, g, seed=3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 8))
    ap = AdaptivePrecision(model, device_type="cpu", executor=executor, monitor_every=0)
    ap.set_plan(Plan({"0": entry}))
    xx = x.clone().requires_grad_()
    with ap.autocast():
        out = model(xx)
    out.backward(g)
    lin = model[0]
    return out.detach(), xx.grad, lin.weight.grad, lin.bias.grad, lin


def test_emulated_rounds_each_operand_and_gradient_in_its_role_format():
    """input bf16, weight fp16, dgrad fp16, wgrad bf16: against F.linear on operands rounded by
    hand, bit for bit (the same fp32 kernels)."""
    gen = torch.Generator().manual_seed(1)
    x, g = torch.randn(4, 16, generator=gen) * 3, torch.randn(4, 8, generator=gen) * 1e-3
    entry = {"input": "bf16", "weight": "fp16", "dgrad": "fp16", "wgrad": "bf16"}
    out, gx, gw, gb, lin = _linear_step("emulated", entry, x, g)
    xr = round_to(x, BF16).requires_grad_()
    wr = round_to(lin.weight.detach(), FP16).requires_grad_()
    br = round_to(lin.bias.detach(), FP16).requires_grad_()
    ref = F.linear(xr, wr, br)
    ref.backward(round_to(g, FP16))
    assert torch.equal(out, round_to(ref.detach(), BF16))           # output held in fprop's format
    assert torch.equal(gx, round_to(xr.grad, FP16))                  # dgrad
    assert torch.equal(gw, round_to(wr.grad, BF16))                  # wgrad
    assert torch.equal(gb, round_to(br.grad, BF16))
    # and it is not the plain bf16 layer
    plain = _linear_step("emulated", "bf16", x, g)
    assert not torch.equal(plain[2], gw) or not torch.equal(plain[1], gx)


def test_native_refuses_a_per_role_entry_and_auto_emulates_it():
    gen = torch.Generator().manual_seed(2)
    x, g = torch.randn(4, 16, generator=gen), torch.randn(4, 8, generator=gen)
    with pytest.raises(ValueError, match="use executor=emulated"):
        _linear_step("native", HYBRID16, x, g)
    auto = _linear_step("auto", HYBRID16, x, g)
    emulated = _linear_step("emulated", HYBRID16, x, g)
    for a, b in zip(auto[:4], emulated[:4]):
        assert torch.equal(a, b)


def test_a_per_role_entry_with_fp16_gradients_turns_the_loss_scaler_on():
    model = nn.Sequential(nn.Linear(4, 4))
    ap = AdaptivePrecision(model, controller=FixedPlan({"0": HYBRID16}), executor="emulated",
                           monitor_every=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ap.autocast():
        loss = model(torch.randn(2, 4)).sum()
    ap.backward(loss)
    ap.step(opt)
    assert ap.is_enabled()


@pytest.mark.slow  # a few seconds: keeps the default suite under 3 minutes
# -- the run directory --------------------------------------------------------------------------
def test_cli_run_records_per_role_entries_in_its_tables(tmp_path, cli_run):
    run = tmp_path / "run"
    entry = "fprop=bf16,dgrad=fp16,wgrad=bf16"
    code, _, err = cli_run(*[a for a in TINY if a != "monitor.every=0"], "monitor.every=1",
                           "executor=emulated", "controller=plan", "controller.default=fp32",
                           f"+controller.patterns={{net.1: '{entry}'}}", f"hydra.run.dir={run}")
    assert code == 0, err
    decisions = list(csv.DictReader((run / "decisions.csv").open()))
    assert {(d["layer"], d["new"]) for d in decisions if d["new"] != "fp32"} == {("net.1", entry)}
    with gzip.open(run / "layers.csv.gz", "rt") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["format"] for r in rows if r["layer"] == "net.1"} == {entry}
    metrics = json.loads((run / "metrics.json").read_text())
    assert entry in json.dumps(metrics)


# -- downstream: analysis, cost -------------------------------------------------------------------
def test_timeline_draws_per_role_entries_after_the_registered_formats():
    import pandas as pd
    from matplotlib.colors import to_hex
    from analysis.figures import precision_timeline, timeline_codes
    from analysis.style import FORMAT_ORDER, format_color
    entry = per_role(HYBRID16).name
    table = pd.DataFrame({"step": [0, 0, 10, 10], "layer": ["a", "b", "a", "b"],
                          "format": ["bf16", entry, "bf16", "fp16"]})
    fig, ax = precision_timeline(table)
    n = len(FORMAT_ORDER)
    idx = {f: i for i, f in enumerate(FORMAT_ORDER)}
    assert timeline_codes(table).tolist() == [[idx["bf16"], idx["bf16"]], [n, idx["fp16"]]]
    mesh = next(c for c in ax.collections if c.get_gid() == "timeline")
    assert to_hex(mesh.cmap(mesh.norm(n))) == format_color(entry).lower()
    assert entry in [t.get_text() for t in ax.get_legend().get_texts()]
    with pytest.raises(ValueError, match="unknown formats"):
        precision_timeline(table.assign(format=["bf16", "fprop=bf16,dgrad=fp17", "bf16", "fp16"]))


def test_cost_model_prices_a_per_role_entry_role_by_role():
    """Each role in its own format (tests/test_cost_roles.py has the rules): on an H100 e4m3 and
    e5m2 share peaks and bytes; emulated, gradients round as e5m2 and every input is rounded."""
    from adaprec.cost import CostModel, load_profile
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    cm = CostModel.count(model, torch.randn(3, 8), optimizer="none")
    entry = per_role({"fprop": "fp8_e4m3", "dgrad": "fp8_e5m2"}).name
    roles, plain = Plan({"0": entry, "2": entry}), Plan({"0": "fp8_e4m3", "2": "fp8_e4m3"})
    assert cm.total(roles, "h100") == cm.total(plain, "h100")
    local = load_profile("local")
    assert cm.total(roles, local) != cm.total(plain, local)      # e5m2 rounds at its own cost
    same = dataclasses.replace(local, emulated={**local.emulated, "fp8_e5m2": local.emulated["fp8_e4m3"]})
    c = cm._by_name["2"]  # fed by layer 0 through ReLU: a plain fp8 layer skips its input rounding
    assert cm.total(roles, same) == pytest.approx(
        cm.total(plain, same) + same.rounding_s("fp8_e4m3", c.in_tensors, c.act_in_elems), rel=1e-12)
