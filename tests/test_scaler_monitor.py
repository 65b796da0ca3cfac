"""Loss scaling follows GradScaler's state machine; the monitor samples only when asked."""
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import FixedPlan, Static
from adaprec.precision import needs_loss_scaling
from adaprec.numerics.scaler import LossScaler

from .loops import train_steps


def test_scaling_is_on_exactly_when_a_narrow_format_is_in_the_plan():
    assert needs_loss_scaling(Plan({"a": "bf16", "b": "fp16"}))
    assert needs_loss_scaling(Plan({"a": "fp8_e4m3"}, default="bf16"))
    assert not needs_loss_scaling(Plan({"a": "bf16", "b": "fp32"}))


def test_scaler_backs_off_skips_and_grows_like_gradscaler():
    ours = LossScaler(init_scale=1024.0, growth_interval=2)
    ours.active = True
    ref = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    ref.scale(torch.ones(()))  # GradScaler creates its state lazily on first use
    p_ours, p_ref = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt_ours, opt_ref = torch.optim.SGD([p_ours], lr=1.0), torch.optim.SGD([p_ref], lr=1.0)
    for grad in ([1.0, 2.0, 3.0], [float("inf"), 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5],
                 [float("nan"), 1.0, 1.0], [1.0, 1.0, 1.0]):
        for p, opt in ((p_ours, opt_ours), (p_ref, opt_ref)):
            opt.zero_grad()
        p_ours.grad = torch.tensor(grad) * ours.scale
        p_ref.grad = torch.tensor(grad) * ref.get_scale()
        found = ours.unscale_([p_ours.grad])
        if not found.item():
            opt_ours.step()
        ours.update(found)
        ref.step(opt_ref)
        ref.update()
        assert ours.scale == ref.get_scale()
        assert torch.equal(p_ours, p_ref)


def test_inactive_scaler_still_detects_nonfinite_and_keeps_scale():
    s = LossScaler()
    g = torch.tensor([1.0, float("nan")])
    assert s.unscale_([g]).item() == 1.0
    s.update(torch.ones(()))
    assert s.scale == 2.0**16 and s.applied_scale == 1.0


def test_nonfinite_gradient_skips_step_and_leaves_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ap = AdaptivePrecision(model, controller=Static("fp16"))
    x = torch.randn(8, 4)
    x[0, 0] = float("inf")
    with ap.autocast():
        loss = F.cross_entropy(model(x), torch.zeros(8, dtype=torch.long))
    ap.backward(loss)
    record = ap.step(opt)
    assert record.skipped and ap.scaler.scale == 2.0**15
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _run(model, ap, steps, x, y):
    return train_steps(model, ap, x, y, steps)


def test_monitor_samples_every_n_steps_with_all_kinds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    ap = AdaptivePrecision(model, controller=Static("bf16"), monitor_every=3)
    records = _run(model, ap, 7, torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
    assert [r.step for r in records if r.stats is not None] == [0, 3, 6]
    stats = records[6].stats["0"]
    assert stats.format == "bf16" and stats.step == 6
    for kind in ("act", "grad", "weight", "wgrad"):
        assert getattr(stats, kind) is not None, kind
    assert stats.weight.numel == 8 * 16 + 16  # weight and bias combined
    assert stats.wgrad.norm == pytest.approx(
        torch.cat([p.grad.flatten() for p in model[0].parameters()]).norm().item(), rel=1e-5)
    frame = pd.DataFrame(ap.latest_stats())
    assert list(frame["layer"]) == ["0", "2"] and "grad_fp16_underflow" in frame
    assert not ap.monitor._pending  # nothing left queued on unsampled steps


def test_monitor_off_and_eval_mode_record_nothing():
    model = nn.Sequential(nn.Linear(4, 2))
    ap = AdaptivePrecision(model, monitor_every=0)
    records = _run(model, ap, 2, torch.randn(3, 4), torch.tensor([0, 1, 0]))
    assert all(r.stats is None for r in records)
    ap2 = AdaptivePrecision(nn.Sequential(nn.Linear(4, 2)), monitor_every=1)
    ap2.model.eval()
    with torch.no_grad(), ap2.autocast():
        ap2.model(torch.randn(2, 4))
    assert not ap2.monitor._pending


def test_gradients_are_judged_at_the_loss_scale_fp16_would_use():
    """A bf16 run (scaler inactive) still reports fp16 gradient rates at the scaler's scale."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    bf = AdaptivePrecision(model, controller=Static("bf16"), monitor_every=1,
                           scaler={"init_scale": 2.0**30})
    rec = _run(model, bf, 1, x, y)[0]
    assert rec.loss_scale == 1.0
    # at 2^30, gradients of order 1e-2..1 overflow fp16
    assert rec.stats["1"].wgrad.fp16_overflow > 0.5
    assert rec.stats["1"].wgrad.absmax < 10  # reported at the true magnitude


def test_fixed_plan_controller_patterns():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    ap = AdaptivePrecision(model, controller=FixedPlan({"1.*": "fp16", "1.1": "fp32"}, default="bf16"))
    assert dict(ap.plan) == {"0": "bf16", "1.0": "fp16", "1.1": "fp32"}
    assert ap.scaler.active
