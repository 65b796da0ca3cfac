"""torch.compile around an adaprec model: names, numerics, graph counts, plan switches."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import FixedPlan

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 4))


LAYERS = ["0", "2", "3", "4"]
MIXED = Plan({"0": "bf16", "2": "fp16", "3": "fp32", "4": "bf16"}, default="bf16")


class Switching:
    """Alternates two plans every ``every`` steps (a controller that keeps switching)."""

    def __init__(self, plans, every=2):
        self.plans, self.every = plans, every

    def setup(self, ctx):
        pass

    def decide(self, step):
        return self.plans[(step // self.every) % len(self.plans)]

    def observe(self, record):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _train(controller, executor, compiled, steps=6, monitor_every=1, compile_first=False):
    torch._dynamo.reset()
    counters.clear()
    model = _model()
    x, y = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 4
    if compile_first:
        run = torch.compile(model, backend="aot_eager")
        ap = AdaptivePrecision(run, controller=controller, executor=executor, monitor_every=monitor_every)
    else:
        ap = AdaptivePrecision(model, controller=controller, executor=executor, monitor_every=monitor_every)
        run = torch.compile(model, backend="aot_eager") if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        with ap.autocast():
            loss = F.cross_entropy(run(x).float(), y)
        ap.backward(loss)
        losses.append(ap.step(opt).loss)
    return losses, ap, dict(counters["stats"]), sum(counters["graph_break"].values())


@pytest.mark.slow  # a few seconds: keeps the default suite under 3 minutes
def test_layer_names_of_a_compiled_model_have_no_orig_mod_prefix():
    _, ap, _, _ = _train(FixedPlan(MIXED), "native", compiled=True, steps=1, compile_first=True)
    assert ap.layers == LAYERS
    assert {n: ap.plan.format_of(n) for n in LAYERS} == {n: MIXED.format_of(n) for n in LAYERS}


@pytest.mark.parametrize("executor", [pytest.param("native", marks=pytest.mark.slow), "emulated", "auto"])
def test_compiled_training_is_eager_training_bit_for_bit(executor):
    eager, _, _, _ = _train(FixedPlan(MIXED), executor, compiled=False)
    compiled, ap, stats, _ = _train(FixedPlan(MIXED), executor, compiled=True)
    assert compiled == eager
    assert ap.scaler.active  # fp16 in the plan: loss scaling on, as in eager mode


@pytest.mark.slow
def test_sampled_steps_and_plan_switches_do_not_recompile_per_step():
    """The monitor samples every other step and the plan flips every 2 steps: after each plan
    has been seen once, no step compiles a new graph (hooks run outside the graph)."""
    plans = [Plan.uniform("bf16", LAYERS), MIXED]
    _, _, first, _ = _train(Switching(plans), "native", compiled=True, steps=4, monitor_every=2)
    _, _, later, _ = _train(Switching(plans), "native", compiled=True, steps=16, monitor_every=2)
    assert later["unique_graphs"] == first["unique_graphs"]
    # at most one graph per layer region and plan, never one per step
    assert later["unique_graphs"] <= len(LAYERS) * len(plans) + 2
