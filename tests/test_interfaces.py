"""The explicit interfaces between floors: the Executor and Controller protocols, a plan's
region, and the public run state of executors and the cost meter."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import Autocast, Controller, Static
from adaprec.controllers.base import with_defaults
from adaprec.cost import CostMeter, CostModel
from adaprec.runtime.executors import EXECUTORS, Executor

from .loops import train_steps


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)


@pytest.mark.parametrize("name", sorted(EXECUTORS))
def test_every_executor_satisfies_the_protocol_and_detaches(name):
    model = mlp()
    ex = EXECUTORS[name](model, ["0", "2"], "cpu")
    assert isinstance(ex, Executor) and ex.name == name
    ex.set_plan(Plan({"0": "fp32", "2": "fp32"}))
    assert ex.format_of("2").name == "fp32"
    ex.load_state_dict(ex.state_dict())
    ex.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_global_region_is_a_plan_property():
    layers = ["0", "2"]
    per_layer, one_region = Plan.uniform("bf16", layers), Autocast("bf16")
    one_region.setup(type("Ctx", (), {"layers": layers})())
    glob = one_region.decide(0)
    assert glob.region == "global" and per_layer.region == "layer"
    assert glob.hash != per_layer.hash and not glob.diff(per_layer)  # same formats, other contract
    assert Plan.from_dict(glob.to_dict()) == glob and "region" not in per_layer.to_dict()
    with pytest.raises(ValueError, match="global-region plan runs every layer in its default"):
        Plan({"0": "bf16", "2": "fp32"}, default="bf16", region="global")
    with pytest.raises(ValueError, match="region must be one of layer, global"):
        Plan.uniform("bf16", layers, region="everywhere")


def test_native_executor_runs_a_global_plan_as_one_region():
    model = mlp()
    ex = EXECUTORS["native"](model, ["0", "2"], "cpu")
    seen = []
    model[2].register_forward_hook(lambda m, a, o: seen.append(o.dtype))
    ex.set_plan(Plan.uniform("bf16", ["0", "2"], region="global"))
    with ex.region():
        out = model(torch.randn(2, 8))
    # no per-layer region casts the last layer's output back to fp32: autocast's own dtype
    assert seen == [torch.bfloat16] and out.dtype == torch.bfloat16
    ex.set_plan(Plan.uniform("bf16", ["0", "2"]))
    with ex.region():
        assert model(torch.randn(2, 8)).dtype == torch.bfloat16


def test_optional_controller_members_have_declared_defaults():
    class Minimal:  # only the required members
        def observe(self, record):
            self.seen = record.gradients

        def decide(self, step):
            return Plan({"0": "fp32", "2": "fp32"})

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    minimal = Minimal()
    view = with_defaults(minimal)
    assert not isinstance(minimal, Controller) and view.reasons == {}
    assert view.wants_gradients(0) is False and view.setup(None) is None
    assert with_defaults(Static("bf16")) is not None and isinstance(Static("bf16"), Controller)
    model = mlp()
    ap = AdaptivePrecision(model, controller=minimal)
    train_steps(model, ap, *batch(), 2)
    assert minimal.seen is None and ap.controller is minimal
    with pytest.raises(TypeError, match="lacks decide, state_dict, load_state_dict"):
        AdaptivePrecision(mlp(), controller=type("Half", (), {"observe": lambda s, r: None})())


def test_a_controller_that_asks_for_gradients_gets_the_runtime_measured_ones():
    class Wants(Static):
        def wants_gradients(self, step):
            return step == 1

        def observe(self, record):
            self.got = getattr(self, "got", {})
            self.got[record.step] = record.gradients

    model, ctl = mlp(), Wants("fp32")
    ap = AdaptivePrecision(model, controller=ctl, monitor_every=0)
    x, y = batch()
    train_steps(model, ap, x, y, 1, opt=torch.optim.SGD(model.parameters(), lr=0.0))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()  # the same gradient as step 1's (lr 0)
    expected = {n: torch.cat([p.grad.reshape(-1) for p in model.get_submodule(n).parameters()])
                for n in ("0", "2")}
    train_steps(model, ap, x, y, 1, opt=torch.optim.SGD(model.parameters(), lr=0.0))
    assert ctl.got[0] is None and set(ctl.got[1]) == {"0", "2"}
    for n, g in expected.items():
        assert torch.equal(ctl.got[1][n], g)


def test_cost_meter_state_round_trips():
    model = mlp()
    cm = CostModel.count(model, torch.randn(4, 8))
    a, b = CostMeter(cm, ["h100", "bitops"]), CostMeter(cm, ["h100", "bitops"])
    for plan in (Plan.uniform("bf16", cm.layers), Plan.uniform("fp32", cm.layers)):
        a.update(plan)
    b.load_state_dict(a.state_dict())
    assert b.metrics() == a.metrics() and b.steps == 2
    b.update(Plan.uniform("bf16", cm.layers))
    assert b.metrics()["cost_h100_s"] > a.metrics()["cost_h100_s"]
    assert a.state_dict()["steps"] == 2  # a copy: b's update did not reach a
