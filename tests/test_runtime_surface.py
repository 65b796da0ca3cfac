"""What a new user runs into on real models: changing controller mid-run, evaluation forwards
between steps, layers the device cannot run natively, honest run summaries, bare modules."""
import json
import logging

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import Bandit, Static, Threshold
from adaprec.numerics.formats import get_format

from .cli_inprocess import TINY
from .loops import train_steps


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


class Recording(Static):
    """Static bf16 that keeps the context its setup was given."""

    def __init__(self, fmt="bf16"):
        super().__init__(fmt)
        self.contexts = []

    def setup(self, context):
        self.contexts.append(context)
        super().setup(context)


# -- 5. changing controller mid-run --------------------------------------------------------------

@pytest.mark.parametrize("how", ["set_controller", "assignment"])
def test_a_new_controller_gets_the_same_context_and_the_switch_is_logged(how, caplog):
    model, (x, y) = mlp(), batch()
    first = Recording("fp32")
    ap = AdaptivePrecision(model, controller=first, monitor_every=1, layer_costs={"0": {"fp32": 1.0}})
    train_steps(model, ap, x, y, 2)
    ap.pop_decisions()
    second = Recording("bf16")
    with caplog.at_level(logging.INFO, logger="adaprec.precision"):
        if how == "set_controller":
            ap.set_controller(second)
        else:
            ap.controller = second
    assert second.contexts == [first.contexts[0]] and second.contexts[0] is first.contexts[0]
    assert ap.controller is second and set(ap.plan.values()) == {"bf16"}
    rows = ap.pop_decisions()
    assert {r["layer"] for r in rows} == {"0", "2"} and all(r["step"] == 2 for r in rows)
    assert all(r["reason"].endswith("(controller Recording -> Recording)") for r in rows)
    assert "controller Recording -> Recording at step 2" in caplog.text
    records = train_steps(model, ap, x, y, 2)  # the new controller decides from here on
    assert [r.plan.format_of("0") for r in records] == ["bf16", "bf16"]


def test_an_adaptive_controller_set_mid_run_decides_without_error():
    model, (x, y) = mlp(), batch()
    ap = AdaptivePrecision(model, controller=Static("fp32"), monitor_every=1)
    train_steps(model, ap, x, y, 2)
    ap.controller = Threshold(interval=1, cpu_fp16=True, start="cheapest")  # no fp32 warm-up
    records = train_steps(model, ap, x, y, 3)
    assert all(r.stats is not None for r in records)
    assert {r.plan.format_of("0") for r in records} == {"bf16"}  # Threshold's start, not fp32
    assert ap.state_dict()["controller"] == ap.controller.state_dict()


def test_set_controller_in_the_middle_of_a_step_is_refused():
    model, (x, y) = mlp(), batch()
    ap = AdaptivePrecision(model, controller=Static("fp32"))
    with ap.autocast():
        loss = F.cross_entropy(model(x), y)
    ap.backward(loss)
    with pytest.raises(RuntimeError, match="middle of a step"):
        ap.set_controller(Static("bf16"))


# -- 7. statistics only from the step's training forwards -------------------------------------

def counts_after(eval_between: bool):
    model, (x, y) = mlp(), batch()
    ap = AdaptivePrecision(model, controller=Static("bf16"), monitor_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    for _ in range(2):
        if eval_between:  # an evaluation forward without model.eval()
            with torch.no_grad(), ap.autocast():
                model(torch.randn(32, 8))
        opt.zero_grad()
        with ap.autocast():
            loss = F.cross_entropy(model(x), y)
        ap.backward(loss)
        records.append(ap.step(opt))
    return [{n: (s.act.numel, s.grad.numel) for n, s in r.stats.items()} for r in records], records


def test_a_no_grad_forward_between_steps_is_not_measured():
    with_eval, records = counts_after(True)
    without, plain = counts_after(False)
    assert with_eval == without
    assert with_eval[1]["0"] == (8 * 16, 8 * 16)
    assert [r.loss for r in records] == [r.loss for r in plain]


# -- 8. capabilities known per layer type and device ------------------------------------------

class NoBF16(nn.Linear):
    """A layer type whose kernels fail in 16-bit (as nn.LSTM's do on some CPUs)."""

    def forward(self, x):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("could not create a primitive descriptor")
        return super().forward(x)


@pytest.fixture
def no_bf16_probe(monkeypatch):
    from adaprec.runtime.executors import capability
    monkeypatch.setitem(capability._PROBES, NoBF16, (lambda: NoBF16(4, 4), (2, 4)))
    capability._probe.cache_clear()
    yield
    capability._probe.cache_clear()


def with_failing_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), NoBF16(16, 4))


def test_native_refuses_a_layer_its_device_cannot_run_naming_layer_and_format(no_bf16_probe):
    with pytest.raises(ValueError) as err:
        AdaptivePrecision(with_failing_layer(), controller=Static("bf16"), executor="native")
    msg = str(err.value)
    assert "\n" not in msg and "'2' (NoBF16)" in msg and "cannot run bf16 natively" in msg
    assert "executor=auto" in msg and "primitive descriptor" in msg


def test_auto_emulates_a_layer_its_device_cannot_run(no_bf16_probe, monkeypatch):
    from adaprec.runtime.executors import auto
    monkeypatch.setattr(auto, "native_is_fast", lambda fmt, family, device: True)  # a bf16 CPU
    model, (x, y) = with_failing_layer(), batch()
    ap = AdaptivePrecision(model, controller=Static("bf16"), executor="auto")
    assert ap.executor.choices == {"0": "native", "2": "emulated"}
    records = train_steps(model, ap, x, y, 2)
    assert all(torch.isfinite(torch.tensor(r.loss)) for r in records)


@pytest.mark.parametrize("make", [lambda: Threshold(interval=1, rounding_err_max=1.0, cpu_fp16=True, start="cheapest"),
                                  lambda: Bandit(interval=1, cpu_fp16=True)], ids=["threshold", "bandit"])
def test_controllers_never_choose_a_format_the_executor_cannot_run(no_bf16_probe, make):
    model, (x, y) = with_failing_layer(), batch()
    ap = AdaptivePrecision(model, controller=make(), executor="native", monitor_every=1)
    plans = [ap.plan]
    train_steps(model, ap, x, y, 6, plans=plans)
    assert {p.format_of("2") for p in plans} == {"fp32"}
    assert {p.format_of("0") for p in plans} - {"fp32"}  # the other layer does leave fp32


def test_the_probe_runs_once_per_layer_type_and_leaves_the_random_stream_alone():
    from adaprec.runtime.executors.capability import _probe, native_error
    _probe.cache_clear()
    a, b = nn.Linear(3, 3), nn.Linear(5, 2)
    before = torch.get_rng_state()
    native_error(a, get_format("bf16"), "cpu")
    assert torch.equal(torch.get_rng_state(), before)
    native_error(b, get_format("bf16"), "cpu")
    info = _probe.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_lstm_natively_in_16_bit_fails_here_or_runs():
    """nn.LSTM in bf16 fails on the AVX2 CPUs here (oneDNN); wherever it fails the native executor
    refuses it and auto emulates it, wherever it runs both run it."""
    from adaprec.runtime.executors.capability import native_error
    error = native_error(nn.LSTM(4, 4), get_format("bf16"), "cpu")
    torch.manual_seed(0)
    if error is None:
        AdaptivePrecision(nn.LSTM(4, 4), controller=Static("bf16"), executor="native")
        return
    with pytest.raises(ValueError, match="LSTM.*cannot run bf16 natively"):
        AdaptivePrecision(nn.LSTM(4, 4), controller=Static("bf16"), executor="native")
    ap = AdaptivePrecision(nn.LSTM(4, 4), controller=Threshold(), executor="native")
    assert set(ap.plan.values()) == {"fp32"}


def test_the_start_plan_is_logged_as_it_runs():
    ap = AdaptivePrecision(mlp(), controller=Threshold(start="fp16"), executor="native")
    rows = ap.pop_decisions()  # native on CPU without cpu_fp16: fp16 is left out
    assert {r["new"] for r in rows} == {"bf16"}
    assert all(r["reason"].startswith("threshold start (bf16;") for r in rows)
    assert not any("start (fp16)" in r["reason"] for r in rows)


# -- 9. summaries from what ran ------------------------------------------------------------------

class EveryStep:
    """Switches layer 0 between bf16 and fp32 every step (so step max_steps gets a decision too)."""

    def setup(self, context):
        self.layers = list(context.layers)

    def observe(self, record):
        pass

    def decide(self, step):
        return Plan({n: "bf16" if step % 2 == 0 or n != self.layers[0] else "fp32" for n in self.layers})

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_summary_reports_the_plan_that_ran_last(make_cfg, tmp_path):
    from adaprec.app.train import train
    cfg = make_cfg(*TINY, "trainer.max_steps=3", "controller=plugin",
                   "controller._target_=tests.test_runtime_surface.EveryStep")
    metrics = train(cfg, tmp_path)
    steps = pd.read_csv(tmp_path / "steps.csv")
    decisions = pd.read_csv(tmp_path / "decisions.csv")
    # step 2 (the last) ran bf16 everywhere; the plan decided for step 3 never ran
    assert set(metrics["final_plan"].values()) == {"bf16"}
    assert metrics["format_shares"] == {"bf16": 1.0} and steps["share_bf16"].iloc[-1] == 1.0
    assert decisions["step"].max() == 2
    assert metrics["plan_changes"] == (decisions["step"] > 0).sum() == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["final_plan"] == metrics["final_plan"]
    # the layers alone do not name the plan: its default (fp32 here) is part of the hash
    ran = Plan(metrics["final_plan"], default=metrics["final_plan_default"], region=metrics["final_plan_region"])
    assert ran.hash == metrics["final_plan_hash"] == steps["plan_hash"].iloc[-1]
    assert metrics["final_plan_default"] == "fp32" and Plan(metrics["final_plan"], default="bf16").hash != ran.hash


# -- 10. a bare module with parameters is one layer ---------------------------------------------

@pytest.mark.parametrize("executor", ["emulated", "auto"])
def test_a_bare_module_with_parameters_is_one_layer(executor):
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 8, batch_first=True)
    ap = AdaptivePrecision(lstm, controller=Static("bf16"), executor=executor, monitor_every=1)
    assert ap.layers == [""]
    opt = torch.optim.SGD(lstm.parameters(), lr=0.1)
    with ap.autocast():
        out, _ = lstm(torch.randn(2, 3, 4))
    ap.backward(out.float().pow(2).mean())
    record = ap.step(opt)
    assert record.stats[""].act.numel == 2 * 3 * 8 and record.stats[""].format == "bf16"
    assert record.stats[""].wgrad is not None


def test_a_bare_linear_runs_in_its_planned_format_natively():
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    ap = AdaptivePrecision(layer, controller=Static("bf16"), executor="native")
    assert ap.layers == [""]
    with ap.autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    ap.set_plan(Plan({"": "fp32"}, default="bf16"))
    with ap.autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float32
