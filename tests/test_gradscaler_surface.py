"""GradScaler's surface on AdaptivePrecision: unscale_ for clipping, several optimizers per
step, get_scale / is_enabled — each compared with torch.amp.GradScaler doing the same."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision
from adaprec.controllers import Static


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(),
                         nn.Linear(64, 5))


def data(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


MAX_NORM = 0.3


def clip_with_gradscaler(model, x, y, steps, init_scale):
    """The torch.amp recipe: scale, backward, unscale_, clip, step, update."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    losses, norms, scales = [], [], []
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)))
        scales.append(scaler.get_scale())
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses, norms, scales


def clip_with_adaprec(model, x, y, steps, init_scale):
    """The same recipe, spelled with ap.* in place of scaler.*."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ap = AdaptivePrecision(model, controller=Static("fp16"), executor="native",
                           monitor_every=0, scaler={"init_scale": init_scale})
    losses, norms, scales = [], [], []
    for _ in range(steps):
        opt.zero_grad()
        with ap.autocast():
            loss = F.cross_entropy(model(x), y)
        ap.backward(loss)
        ap.unscale_(opt)
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)))
        scales.append(ap.get_scale())
        ap.step(opt)
        ap.update()  # GradScaler's habit; after a step that finished the step it changes nothing
        losses.append(loss.item())
    return losses, norms, scales


@pytest.mark.parametrize("init_scale", [2.0**16, 2.0**22])  # 2^22 overflows fp16: skipped steps
def test_unscale_clip_step_matches_gradscaler(init_scale):
    x, y = data()
    ref, ours = mlp(), mlp()
    ref_losses, ref_norms, ref_scales = clip_with_gradscaler(ref, x, y, 8, init_scale)
    our_losses, our_norms, our_scales = clip_with_adaprec(ours, x, y, 8, init_scale)
    finite = [n for n in ref_norms if n == n and n != float("inf")]
    assert max(finite) > MAX_NORM  # clipping really acted on true (unscaled) norms
    assert our_scales == ref_scales
    if init_scale > 2.0**16:
        assert our_scales[0] > our_scales[-1]  # the overflow backed the scale off, in both
    torch.testing.assert_close(our_norms, ref_norms, rtol=1e-6, atol=0, equal_nan=True)
    torch.testing.assert_close(our_losses, ref_losses, rtol=1e-6, atol=0)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_unscale_clip_step_is_bit_identical_to_gradscaler():
    # the native fp16 plan is one autocast region and both use the same fused kernels
    x, y = data()
    ref, ours = mlp(), mlp()
    ref_out, our_out = clip_with_gradscaler(ref, x, y, 6, 2.0**16), clip_with_adaprec(ours, x, y, 6, 2.0**16)
    assert our_out == ref_out
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def _step(ap, model, opt, x, y):
    opt.zero_grad()
    with ap.autocast():
        loss = F.cross_entropy(model(x), y)
    ap.backward(loss)


def test_unscale_twice_in_a_step_raises_and_step_does_not_unscale_again():
    x, y = data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ap = AdaptivePrecision(model, controller=Static("fp16"), monitor_every=0)
    _step(ap, model, opt, x, y)
    ap.unscale_(opt)
    unscaled = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="already been called on this optimizer"):
        ap.unscale_(opt)
    before = [p.detach().clone() for p in model.parameters()]
    ap.step(opt)
    for p, b, g in zip(model.parameters(), before, unscaled):
        torch.testing.assert_close(p, b - 0.1 * g, rtol=1e-6, atol=1e-9)  # not unscaled twice
    with pytest.raises(RuntimeError, match="before ap.backward"):
        ap.unscale_(opt)


def test_get_scale_and_is_enabled_follow_the_plan_as_gradscaler_reports_them():
    model = mlp()
    ap = AdaptivePrecision(model, controller=Static("fp16"), monitor_every=0)
    on = torch.amp.GradScaler("cpu")
    assert ap.is_enabled() is on.is_enabled() is True
    assert ap.get_scale() == on.get_scale() == 2.0**16
    ap.set_plan({name: "bf16" for name in ap.layers})  # bf16 has fp32's range: no scaling
    off = torch.amp.GradScaler("cpu", enabled=False)
    assert ap.is_enabled() is off.is_enabled() is False
    assert ap.get_scale() == off.get_scale() == 1.0


class TwoHeads(nn.Module):
    """A body and a head with an optimizer each (GAN-like or per-part learning rates)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.body(x))


def _poison(model, steps_with_inf):
    """Turn the head's weight gradient into inf on the given steps (counted per backward)."""
    count = {"n": -1}

    def hook(grad):
        count["n"] += 1
        return torch.full_like(grad, float("inf")) if count["n"] in steps_with_inf else grad
    model.head.weight.register_hook(hook)


def two_optimizers_with_gradscaler(x, y, steps, inf_at):
    model = TwoHeads()
    _poison(model, inf_at)
    opts = torch.optim.SGD(model.body.parameters(), lr=0.1), torch.optim.Adam(model.head.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    scales = []
    for _ in range(steps):
        for o in opts:
            o.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        for o in opts:
            scaler.step(o)
        scaler.update()
        scales.append(scaler.get_scale())
    return model, scales


def two_optimizers_with_adaprec(x, y, steps, inf_at):
    model = TwoHeads()
    _poison(model, inf_at)
    opts = torch.optim.SGD(model.body.parameters(), lr=0.1), torch.optim.Adam(model.head.parameters(), lr=0.01)
    ap = AdaptivePrecision(model, controller=Static("fp16"), monitor_every=1,
                           scaler={"init_scale": 2.0**8, "growth_interval": 2})
    scales, records = [], []
    for _ in range(steps):
        for o in opts:
            o.zero_grad()
        with ap.autocast():
            loss = F.cross_entropy(model(x), y)
        ap.backward(loss)
        first = ap.step(opts[0])
        assert first is None  # the head still holds unstepped gradients: the step is not over
        ap.step(opts[1])
        records.append(ap.update())
        scales.append(ap.get_scale())
    return model, scales, records


def test_several_optimizers_per_step_match_gradscaler_bit_for_bit():
    x, y = data()
    inf_at = {2}  # only the head's optimizer sees inf at step 2: it alone skips, the scale backs off
    ref, ref_scales = two_optimizers_with_gradscaler(x, y, 6, inf_at)
    ours, our_scales, records = two_optimizers_with_adaprec(x, y, 6, inf_at)
    assert our_scales == ref_scales
    assert ref_scales[2] < ref_scales[1]
    assert [r.skipped for r in records] == [False, False, True, False, False, False]
    assert [r.step for r in records] == list(range(6))
    assert all(r.stats is not None for r in records)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name


def test_step_twice_on_one_optimizer_and_update_before_step_raise():
    x, y = data()
    model = TwoHeads()
    body, head = torch.optim.SGD(model.body.parameters(), lr=0.1), torch.optim.SGD(model.head.parameters(), lr=0.1)
    ap = AdaptivePrecision(model, monitor_every=0)
    with pytest.raises(RuntimeError, match="before ap.step"):
        ap.update()
    _step(ap, model, body, x, y)
    ap.step(body)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        ap.step(body)
    with pytest.raises(RuntimeError, match="after step"):
        ap.unscale_(body)
    assert ap.step(head) is not None  # every gradient stepped: the step finished by itself


def test_parameters_no_optimizer_steps_finish_the_step_at_the_next_one_with_a_warning():
    x, y = data()
    model = TwoHeads()
    head_only = torch.optim.SGD(model.head.parameters(), lr=0.1)  # the body trains nothing
    ap = AdaptivePrecision(model, monitor_every=0)
    _step(ap, model, head_only, x, y)
    assert ap.step(head_only) is None
    with pytest.warns(UserWarning, match="'body.0.weight'.*stepped by no optimizer"):
        _step(ap, model, head_only, x, y)
    assert ap.step_count == 1
    record = ap.step(head_only)  # the body's gradients are known orphans now
    assert record is not None and record.step == 1 and ap.step_count == 2


def test_weight_gradient_statistics_are_the_same_with_or_without_unscale():
    # the monitor measures weight gradients still scaled, whichever call unscales them
    x, y = data()
    stats = []
    for explicit in (False, True):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ap = AdaptivePrecision(model, controller=Static("fp16"), monitor_every=1)
        _step(ap, model, opt, x, y)
        if explicit:
            ap.unscale_(opt)
        stats.append({n: s.as_row() for n, s in ap.step(opt).stats.items()})
    assert stats[0] == stats[1]


def test_cli_grad_clip_clips_the_unscaled_norm(make_cfg, tmp_path):
    """Two one-step fp16 runs from the same weights, clipped at c1 and c2 (both below the true
    norm): SGD without momentum moves the weights by lr * c * g/|g|, so the runs' weights differ
    by exactly lr * (c2 - c1) in norm; clipping scaled gradients would give that / loss scale."""
    from adaprec.app.train import train

    weights, lrs = [], []
    for i, clip in enumerate((1e-3, 2e-3)):
        cfg = make_cfg("model=mlp", "controller=fp16", "executor=emulated", "trainer.max_steps=1",
                       "trainer.batch_size=16", "trainer.eval_batches=1", "monitor.every=0",
                       "cost.enabled=false", "optimizer.momentum=0", "optimizer.nesterov=false",
                       "optimizer.weight_decay=0", f"trainer.grad_clip={clip}")
        train(cfg, tmp_path / str(i))
        weights.append(torch.load(tmp_path / str(i) / "model.pt", weights_only=True))
        lrs.append(float((tmp_path / str(i) / "steps.csv").read_text().splitlines()[1].split(",")[2]))
    assert lrs[0] == lrs[1]
    diff = torch.cat([(weights[1][k] - weights[0][k]).flatten() for k in weights[0]])
    torch.testing.assert_close(float(diff.norm()), lrs[0] * 1e-3, rtol=1e-3, atol=0)


def test_cli_grad_clip_must_not_be_negative(make_cfg):
    from adaprec.app.schema import ConfigError, validate

    with pytest.raises(ConfigError, match="trainer.grad_clip=-1.0 is out of range; allowed: >= 0"):
        validate(make_cfg("trainer.grad_clip=-1"))
