"""Non-finite guard: a step with an inf/NaN loss or gradient is skipped, the master weights and
optimizer state stay untouched, and the culprit layer is named (forward order, then loss, then
backward order) in the StepRecord, steps.csv and events.jsonl; a run that stays non-finite
stops as ``diverged``."""
import json

import pandas as pd
import pytest
import torch
from torch import nn

from adaprec import AdaptivePrecision
from adaprec.controllers.static import Static
from adaprec.runtime.diagnose import LOSS_CULPRIT
from adaprec.app.train import train

from tests.conftest import compose_config


class Recorder(Static):
    """A static controller that keeps every StepRecord it observes."""

    def __init__(self, format="fp32"):
        super().__init__(format)
        self.seen = []

    def observe(self, record):
        self.seen.append(record)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 4))


def _snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters() if p in opt.state]
    return params, bufs


def _run(model, ap, opt, steps, loss_fn=None):
    g = torch.Generator().manual_seed(1)
    records = []
    for _ in range(steps):
        x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)

        def fwd_bwd():
            with ap.autocast():
                out = model(x)
                loss = loss_fn(out, y) if loss_fn else nn.functional.cross_entropy(out, y)
            ap.backward(loss)

        opt.zero_grad(set_to_none=True)
        fwd_bwd()
        before = _snapshot(model, opt)
        records.append((ap.step(opt, replay=fwd_bwd), before, _snapshot(model, opt)))
    return records


def _assert_untouched(before, after):
    for a, b in zip(before[0] + before[1], after[0] + after[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("layer", ["0", "2"])
def test_nan_in_one_layer_output_is_skipped_and_named(layer, fmt):
    model = _mlp()
    ctrl = Recorder(fmt)
    ap = AdaptivePrecision(model, controller=ctrl, monitor_every=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bad_step = 2

    def inject(module, args, out):  # the step is read from ap, so the replay sees it too
        return out * float("nan") if ap.step_count == bad_step else out

    dict(model.named_modules())[layer].register_forward_hook(inject)
    records = _run(model, ap, opt, 4)
    for rec, before, after in records:
        if rec.step == bad_step:
            assert rec.skipped and rec.nonfinite_layer == layer  # later layers are NaN too
            _assert_untouched(before, after)
        else:
            assert not rec.skipped and rec.nonfinite_layer is None
            assert not torch.equal(before[0][0], after[0][0])  # clean steps do update
    assert [r.nonfinite_layer for r in ctrl.seen] == [None, None, layer, None]


def test_nan_in_output_gradient_names_that_layer_in_backward_order():
    model = _mlp()
    ap = AdaptivePrecision(model, controller=Static("fp32"), monitor_every=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def poison_grad(module, args, out):
        if ap.step_count == 1:
            out.register_hook(lambda g: g * float("nan"))

    model[2].register_forward_hook(poison_grad)
    records = _run(model, ap, opt, 3)
    rec, before, after = records[1]
    assert rec.skipped and rec.nonfinite_layer == "2"  # not "4": its output grad is finite
    _assert_untouched(before, after)
    assert not records[2][0].skipped


def test_nonfinite_loss_with_finite_outputs_blames_the_loss():
    model = _mlp()
    ap = AdaptivePrecision(model, controller=Static("fp32"), monitor_every=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = _run(model, ap, opt, 1, loss_fn=lambda out, y: out.sum() * float("inf"))
    rec, before, after = records[0]
    assert rec.skipped and rec.nonfinite_layer == LOSS_CULPRIT
    _assert_untouched(before, after)


def test_replay_leaves_the_rng_stream_as_the_step_left_it():
    """Dropout draws random numbers; the culprit replay re-draws the step's masks and must
    leave the global stream where the original step left it."""
    def run(inject: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 4))
        ap = AdaptivePrecision(model, controller=Static("fp32"), monitor_every=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if inject:
            model[2].register_forward_hook(
                lambda m, a, o: o * float("nan") if ap.step_count == 1 else o)
        records = [r for r, _, _ in _run(model, ap, opt, 2)]
        return records, torch.get_rng_state()

    (clean, clean_rng), (bad, bad_rng) = run(False), run(True)
    assert bad[1].skipped and bad[1].nonfinite_layer == "2" and not clean[1].skipped
    assert clean[0].loss == bad[0].loss
    assert torch.equal(clean_rng, bad_rng)


def test_run_that_stays_nonfinite_stops_as_diverged_naming_the_layer(tmp_path):
    cfg = compose_config(
        "model=mlp", "controller=fp32", "dataset.image_size=8", "trainer.max_steps=20",
        "trainer.progress=false", "trainer.max_consecutive_skips=3", "monitor.every=0",
        "optimizer.lr=1e30", "optimizer.momentum=0", "optimizer.nesterov=false",
        "trainer.checkpoint_every=1")  # one update blows the weights up
    metrics = train(cfg, tmp_path)
    culprit = _first_nonfinite_layer_by_hand(cfg, tmp_path, step=1)
    assert metrics["status"] == "diverged"
    steps = pd.read_csv(tmp_path / "steps.csv", keep_default_na=False)
    bad = steps[steps.skipped == 1]
    assert len(bad) == 3 and metrics["steps"] == int(bad.step.max()) + 1
    assert set(bad.culprit) == {culprit} and (steps[steps.skipped == 0].culprit == "").all()
    assert f"culprit layer: {culprit}" in metrics["error"] and "diverged" in metrics["error"]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["nonfinite_step"] * 3 + ["diverged"]
    assert all(e["layer"] == culprit for e in events)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


def _first_nonfinite_layer_by_hand(cfg, run_dir, step):
    """Reference: the skipped steps left the weights as the checkpoint holds them; run the
    step's batch through plain PyTorch and return the first layer with a non-finite output."""
    from adaprec.app.batching import train_batch_indices
    from adaprec.app.checkpoint import load_checkpoint
    from adaprec.app.instantiate import instantiate
    from adaprec.runtime.layers import discover_layers

    data, model = instantiate(cfg.dataset), instantiate(cfg.model)
    model.load_state_dict(load_checkpoint(run_dir)["model"])
    x, _ = data.get_batch("train", train_batch_indices(data.num_train_examples,
                                                       cfg.trainer.batch_size, cfg.seed, step))
    order = []
    modules = dict(model.named_modules())
    for name in discover_layers(model):
        modules[name].register_forward_hook(
            lambda m, a, o, name=name: order.append(name) if not torch.isfinite(o).all() else None)
    model(x)
    assert order, "the reference forward should overflow"
    return order[0]


def test_culprit_replay_leaves_fp8_scaling_state_untouched():
    """The replay re-runs casts; the emulated executor's amax histories must not record them."""
    def run(replay: bool):
        model = _mlp()
        ap = AdaptivePrecision(model, controller=Static("fp8_e4m3"), executor="emulated",
                               monitor_every=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model[2].register_forward_hook(lambda m, a, o: o * float("nan") if ap.step_count == 1 else o)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)

            def fwd_bwd():
                with ap.autocast():
                    loss = nn.functional.cross_entropy(model(x), y)
                ap.backward(loss)

            opt.zero_grad(set_to_none=True)
            fwd_bwd()
            rec = ap.step(opt, replay=fwd_bwd if replay else None)
            if rec.step == 1:
                assert rec.skipped and rec.nonfinite_layer == ("2" if replay else None)
        return ap.executor.state_dict()["fp8"], [p.detach().clone() for p in model.parameters()]

    (with_replay, w1), (without, w2) = run(True), run(False)
    assert len(with_replay) == len(without) > 0
    for a, b in zip(with_replay, without):
        assert a["pos"] == b["pos"] and torch.equal(a["history"], b["history"])
    assert all(torch.equal(a, b) for a, b in zip(w1, w2))
