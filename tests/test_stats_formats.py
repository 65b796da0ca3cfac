"""Every registered format is judged, and its statistics equal a direct fake-quantization."""
import math

import pytest
import torch

from adaprec.numerics.formats import format_names, get_format
from adaprec.numerics.stats import format_for_kind, tensor_stats


def _direct(fmt, x, scale=1.0):
    """overflow, flush, rel_err and mse of ``fmt`` on ``x`` (true magnitude) at loss scale ``scale``."""
    f = get_format(fmt)
    xs = x.float() * scale
    q = f.fake_quantize(xs)  # per-tensor: this tensor's amax (the `current` recipe)
    finite = torch.isfinite(xs)
    lim = f.max + 2.0 ** (math.floor(math.log2(f.max)) - f.element.mbits - 1)
    if f.scaling == "none":
        deq = torch.ones_like(xs)
    else:  # the dequantization multiplier of each element's block, from the stored scales
        stored = f.quantize(xs)
        deq = stored.scale.float()
        if stored.tensor_scale is not None:
            deq = deq * stored.tensor_scale
        if deq.dim():
            deq = deq.reshape(*xs.shape[:-1], -1)
            size = xs.shape[-1] // deq.shape[-1]
            deq = deq.repeat_interleave(size, -1)
    over = finite & ((xs / deq).abs() >= lim)
    ok = finite & ~over
    err = torch.where(ok, q - xs, torch.zeros_like(xs))
    flush = finite & (xs != 0) & (q == 0)
    n = x.numel()
    rel = (err.double().norm() / torch.where(ok, xs, 0).double().norm()).item()
    return over.sum().item() / n, flush.sum().item() / n, rel, (err.double() ** 2).sum().item() / n / scale**2


@pytest.mark.parametrize("fmt", format_names())
def test_every_registered_format_has_an_error_statistic(fmt):
    torch.manual_seed(0)
    x = torch.randn(8, 256) * torch.logspace(-6, 2, 256)  # a wide dynamic range, blocks of mixed scale
    s = tensor_stats(x, formats=[fmt])
    name = get_format(fmt).name
    assert name in s.formats
    e = s.formats[name]
    plain = get_format(format_for_kind(name, "input"))
    if plain.name == "fp32":
        assert (e.overflow, e.underflow, e.rel_err, e.mse) == (0.0, 0.0, 0.0, 0.0)
        return
    over, flush, rel, mse = _direct(plain.name, x)
    assert e.overflow == pytest.approx(over, abs=1e-12)
    assert e.underflow == pytest.approx(flush, abs=1e-12)
    assert e.rel_err == pytest.approx(rel, rel=1e-5)
    assert e.mse == pytest.approx(mse, rel=1e-5)
    assert e.rel_err > 0  # nothing but fp32 is exact on these values


def test_fp8_is_not_exact_and_block_formats_beat_per_tensor_on_wide_range():
    torch.manual_seed(0)
    x = torch.randn(16, 128) * torch.logspace(-8, 0, 128)
    s = tensor_stats(x, formats=["bf16", "fp8_e4m3", "mxfp8_e4m3"])
    assert s.formats["fp8_e4m3"].rel_err > s.formats["bf16"].rel_err > 0
    # one per-tensor scale flushes the small end; a scale per 32-block keeps it
    assert s.formats["fp8_e4m3"].underflow > 0.1 > s.formats["mxfp8_e4m3"].underflow
    assert s.dyn_range == pytest.approx(math.log2(x.abs().max() / x.abs()[x != 0].min()), rel=1e-6)


def test_gradient_formats_are_judged_at_the_loss_scale():
    g = torch.tensor([1e-9, 1e-6, 1e-2, 1.0] * 8)
    plain = tensor_stats(g, formats=["fp16"]).formats["fp16"]
    scaled = tensor_stats(g * 2.0**16, scale=2.0**16, prescaled=2.0**16, formats=["fp16"]).formats["fp16"]
    assert plain.underflow == pytest.approx(1 / 4) and scaled.underflow == 0.0
    assert scaled.overflow == pytest.approx(1 / 4)   # 65536 rounds to inf in fp16
    over, flush, rel, mse = _direct("fp16", g, 2.0**16)
    assert (scaled.overflow, scaled.underflow) == (over, flush)
    assert scaled.mse == pytest.approx(mse, rel=1e-6)  # at the true magnitude


def test_hybrid_formats_are_judged_by_the_format_of_each_role():
    from adaprec.numerics.stats import derive, probe, reduce_probes
    torch.manual_seed(0)
    g = torch.randn(4, 64) * 1e-3
    fmts = ["fp8_hybrid", "fp8_e4m3", "fp8_e5m2"]
    row = reduce_probes([probe(g)], fmts)[0].tolist()
    as_grad, as_input = derive(row, fmts, kind="grad"), derive(row, fmts, kind="input")
    assert as_grad.formats["fp8_hybrid"] == as_grad.formats["fp8_e5m2"]
    assert as_input.formats["fp8_hybrid"] == as_input.formats["fp8_e4m3"]


def test_chunked_samples_hold_whole_blocks_of_large_tensors():
    torch.manual_seed(0)
    x = torch.randn(512, 96) * torch.logspace(-4, 0, 96)  # 96 is not a multiple of 32
    s = tensor_stats(x, sample=1 << 12, formats=["mxfp8_e4m3", "fp16"])
    full = tensor_stats(x, sample=1 << 20, formats=["mxfp8_e4m3", "fp16"])
    assert s.formats["mxfp8_e4m3"].rel_err == pytest.approx(full.formats["mxfp8_e4m3"].rel_err, rel=0.1)
    _, _, rel, _ = _direct("mxfp8_e4m3", x)
    assert full.formats["mxfp8_e4m3"].rel_err == pytest.approx(rel, rel=1e-5)


def test_monitor_measures_gemm_operands_before_casts_and_a_shadow_equal_to_fp32_recompute():
    import torch.nn.functional as Fn
    from torch import nn

    from adaprec import AdaptivePrecision
    from adaprec.controllers import Static
    from adaprec.numerics.stats import tensor_stats as ts

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        model[2].bias.fill_(1000.0)  # outputs far from 0: bf16's spacing there is 4
    ap = AdaptivePrecision(model, controller=Static("bf16"), executor="emulated", monitor_every=1,
                           scaler={"init_scale": 1.0})
    x = torch.randn(64, 16) * 1e3
    captured = {}
    model[0].register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0].clone()))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with ap.autocast():
        out = model(x)
        loss = Fn.mse_loss(out.squeeze(-1), torch.full((64,), 1000.0))
    ap.backward(loss)
    rec = ap.step(opt)
    s0, s2 = rec.stats["0"], rec.stats["2"]
    # the input is judged raw (fp32), so bf16 reports its rounding error rather than 0
    direct = ts(x, formats=["bf16"]).formats["bf16"]
    assert direct.rel_err > 0
    assert s0.input.formats["bf16"].rel_err == pytest.approx(direct.rel_err, rel=1e-6)
    assert s0.input.formats["bf16"].mse == pytest.approx(direct.mse, rel=1e-6)
    # the head's input comes out of a bf16 layer: already on the grid, bf16 is exact on it
    assert s2.input.formats["bf16"].rel_err == 0.0
    # shadow: the head's bf16 output against fp32 recomputed on the same (raw) input
    rows = ap.monitor.shadow_rows
    with torch.no_grad():
        h = torch.relu(model[0](captured["x"][:rows]).bfloat16().float())  # what layer 2 received
        y32 = Fn.linear(h[:rows], model[2].weight, model[2].bias).double()
    y = out[:rows].detach().double()
    rmse = ((y - y32) ** 2).mean().sqrt().item()
    assert s2.shadow.numel == rows
    assert s2.shadow.rmse == pytest.approx(rmse, rel=1e-9)
    assert s2.shadow.rel_err == pytest.approx(((y - y32).norm() / y32.norm()).item(), rel=1e-9)
    assert s2.shadow.spread == pytest.approx(y32.std(unbiased=False).item(), rel=1e-6)
    assert s2.shadow.rel_err < 2e-3 < s2.shadow.rel_spread  # tiny per element, large against the spread
    row = rec.stats["2"].as_row()
    assert {"input_bf16_rel_err", "grad_fp16_underflow", "shadow_rel_spread"} <= set(row)


def test_output_gradient_is_judged_before_the_layers_own_rounding_flushes_it():
    from torch import nn

    from adaprec import AdaptivePrecision
    from adaprec.controllers import Static

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1))
    from adaprec.controllers import FixedPlan
    # layers in fp16, the code around them (the loss) in fp32
    ap = AdaptivePrecision(model, controller=FixedPlan({"*": "fp16"}, default="fp32"), executor="emulated",
                           monitor_every=1, scaler={"init_scale": 1.0, "growth_interval": 1000})
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with ap.autocast():
        loss = model(torch.randn(16, 8)).sum() * 1e-9  # output gradients 1e-9: fp16 flushes them
    ap.backward(loss)
    g = ap.step(opt).stats["1"].grad
    assert g.absmax == pytest.approx(1e-9, rel=1e-3) and g.formats["fp16"].underflow == 1.0
    assert g.formats["bf16"].underflow == 0.0


def test_shadow_predicts_each_formats_output_error_from_the_fp32_output():
    from torch import nn

    from adaprec import AdaptivePrecision
    from adaprec.controllers import Threshold

    torch.manual_seed(0)
    head = nn.Linear(16, 1)
    with torch.no_grad():
        head.bias.fill_(1000.0)
    model = nn.Sequential(head)
    ap = AdaptivePrecision(model, controller=Threshold(start="fp32"), executor="emulated", monitor_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with ap.autocast():
        loss = model(torch.randn(32, 16)).sum()
    ap.backward(loss)
    sh = ap.step(opt).stats["0"].shadow
    assert sh.rmse == 0.0 and sh.reference is not None  # fp32 against fp32
    # spacing near 1000: bf16 4, fp16 0.5; the outputs spread less than bf16's spacing
    assert sh.predicted("bf16") > 2 * sh.predicted("fp16") > 0
    assert sh.reference.formats["bf16"].rel_err > sh.reference.formats["fp16"].rel_err > 0  # judged like any tensor
    assert sh.predicted("fp32") == 0.0


@pytest.mark.parametrize("executor", ["emulated", "auto"])
def test_monitoring_never_changes_training(executor):
    """Input probes, gradient taps and shadow recomputes leave every number of training as it
    is without the monitor, also inside a custom layer whose ops the executor rounds."""
    import torch.nn.functional as Fn
    from torch import nn

    from adaprec import AdaptivePrecision
    from adaprec.controllers import Static

    class Block(nn.Module):  # a layer of its own (a parameter) around a child layer
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(16))
            self.inner = nn.Linear(16, 16)

        def forward(self, x):
            return self.inner(x) + x * self.scale

    def losses(every):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), Block(), nn.ReLU(), nn.Linear(16, 4))
        ap = AdaptivePrecision(model, controller=Static("fp16"), executor=executor, monitor_every=every)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
        out = []
        for _ in range(3):
            opt.zero_grad()
            with ap.autocast():
                loss = Fn.cross_entropy(model(x), y)
            ap.backward(loss)
            out.append(ap.step(opt).loss)
        return out, [p.detach().clone() for p in model.parameters()]

    (off, p_off), (on, p_on) = losses(0), losses(1)
    assert off == on and all(torch.equal(a, b) for a, b in zip(p_off, p_on))


def test_monitor_sample_sets_the_elements_behind_rates_while_absmax_stays_exact():
    """``monitor.sample``: a smaller strided sample estimates the rates (within its standard
    error) and errors; absmax, and so the presence of an overflow, still sees every element."""
    from torch import nn

    from adaprec.runtime.monitor import Monitor

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1024, generator=g) * 2.0 ** -13  # ~37% below fp16's smallest normal
    x[17, 5] = 1e6  # one fp16 overflow, off the sample's stride
    layer = nn.Linear(1024, 4)
    mon = Monitor(nn.Sequential(layer), ["0"], every=1, sample=512, shadow=False)
    mon.begin_step(0, 1.0, 1.0)
    layer(x)
    got = mon.collect(0, lambda _: "fp32")["0"].input
    whole = tensor_stats(x, exact_norm=False)
    assert got.absmax == whole.absmax == 1e6
    assert got.fp16_overflow > 0  # presence kept although the sample missed it
    p = whole.fp16_underflow
    assert abs(got.fp16_underflow - p) < 4 * (p * (1 - p) / 512) ** 0.5
    assert got.fp16_underflow != p  # estimated from 512 elements, not all 65536
    with pytest.raises(ValueError, match="monitor.sample must be >= 64"):
        Monitor(nn.Sequential(nn.Linear(2, 2)), ["0"], sample=8)
