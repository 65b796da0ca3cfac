"""Emulated executor: rounding primitives against torch's casts, fidelity against native
torch.autocast, exactness of an all-fp32 plan, monitor statistics, loss scaling, fp8 scaling."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import FixedPlan, Static
from adaprec.numerics.emulation import AmaxState, FP8Config, RoundFn, round_scaled, round_to
from adaprec.numerics.formats import BF16, FP16, FP8_E4M3, FP8_E5M2, get_format


def ulp(v: torch.Tensor, fmt) -> torch.Tensor:
    """One unit in the last place of ``fmt`` at magnitude |v| (subnormal spacing below normal)."""
    _, e = torch.frexp(v.abs().clamp(min=fmt.smallest_normal))
    return torch.ldexp(torch.ones_like(v), e - 1 - fmt.mantissa_bits)


def max_ulps(a: torch.Tensor, b: torch.Tensor, fmt) -> float:
    return ((a - b).abs() / ulp(torch.maximum(a.abs(), b.abs()), fmt)).max().item()


# -- rounding primitives ------------------------------------------------------------------------
def test_fp16_rounding_overflows_subnormals_and_flushes_like_the_format():
    tiny = FP16.smallest_subnormal
    assert tiny == 2.0**-24
    x = torch.tensor([65504.0, 65519.0, 65520.0, -7e4, 2**-24, 2**-25, 3 * 2**-26, 2**-14 * 1.5, 1 / 3])
    r = round_to(x, FP16)
    assert r.dtype == torch.float32
    assert r[:2].tolist() == [FP16.max, FP16.max]
    assert r[2].item() == math.inf and r[3].item() == -math.inf  # beyond max after RNE: inf
    assert r[4].item() == tiny and r[5].item() == 0.0           # 2^-25 ties to even: zero
    assert r[6].item() == tiny                                  # 0.75 ulp rounds up
    assert torch.equal(r, x.half().float())


def test_round_fn_rounds_the_gradient_too():
    x = torch.tensor([1.0 + 2**-12, 2.0], requires_grad=True)
    y = RoundFn.apply(x, FP16)
    assert y.tolist() == [1.0, 2.0]
    y.backward(torch.tensor([7e4, 1.0 + 2**-12]))
    assert x.grad.tolist() == [math.inf, 1.0]


def test_fp8_current_scaling_maps_amax_to_the_format_max():
    x = torch.tensor([0.001, -0.5, 3.0, 0.0])
    state = AmaxState(FP8Config("current"), FP8_E4M3, x.device)
    y = round_scaled(x, FP8_E4M3, state)
    assert y[2].item() == 3.0 and y[3].item() == 0.0
    assert state.last_scale.item() == 128.0  # largest power of two with 3 * scale <= 448
    # every value is on e4m3's grid once scaled
    scaled = y * state.last_scale
    assert torch.equal(scaled, scaled.to(torch.float8_e4m3fn).float())


def test_fp8_delayed_scaling_uses_history_margin_and_saturates():
    cfg = FP8Config("delayed", amax_history_len=2, margin=1)
    state = AmaxState(cfg, FP8_E5M2, torch.device("cpu"))
    # scale = 2^floor(log2(57344 / amax)) / 2^margin
    round_scaled(torch.tensor([4.0]), FP8_E5M2, state)     # empty history: current amax
    assert state.last_scale.item() == 2.0**13 / 2
    y = round_scaled(torch.tensor([100.0, 1.0]), FP8_E5M2, state)  # history max 4: stale scale
    assert state.last_scale.item() == 2.0**13 / 2
    assert y.tolist() == [FP8_E5M2.max / 2**12, 1.0]        # 100 saturates at max / scale
    round_scaled(torch.tensor([1.0]), FP8_E5M2, state)      # history [4, 100]
    assert state.last_scale.item() == 2.0**9 / 2
    round_scaled(torch.tensor([1.0]), FP8_E5M2, state)      # history [1, 100]: 4 fell out
    round_scaled(torch.tensor([1.0]), FP8_E5M2, state)      # history [1, 1]
    assert state.last_scale.item() == 2.0**15 / 2


def test_fp8_keeps_inf_and_nan_and_zero_tensors():
    state = AmaxState(FP8Config("current"), FP8_E4M3, torch.device("cpu"))
    y = round_scaled(torch.tensor([1.0, math.inf, math.nan]), FP8_E4M3, state)
    assert y[1].item() == math.inf and math.isnan(y[2].item())
    assert torch.equal(round_scaled(torch.zeros(3), FP8_E4M3, state), torch.zeros(3))


@pytest.mark.parametrize("kw,match", [({"scaling": "just"}, "scaling"),
                                      ({"amax_history_len": 0}, "amax_history_len"),
                                      ({"margin": -1}, "margin")])
def test_fp8_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        FP8Config(**kw)


# -- fidelity against native autocast -----------------------------------------------------------
def linear_pass(executor, fmt, x, g, scaler=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48))
    ap = AdaptivePrecision(model, controller=Static(fmt), executor=executor, monitor_every=1,
                           scaler=scaler)
    xx = x.clone().requires_grad_()
    ap.monitor.begin_step(0, 1.0, 1.0)
    with ap.autocast():
        out = model(xx)
    with ap._backward_region():  # emulated: backward's 16-bit kernels compute in fp32 too
        out.float().backward(g)
    ap.monitor.measure_parameters()
    stats = ap.monitor.collect(0, ap.plan.format_of)
    return out.float().detach(), xx.grad, model[0].weight.grad, model[0].bias.grad, stats


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_linear_matches_native_autocast_within_one_ulp(fmt):
    f = get_format(fmt)
    g = torch.Generator().manual_seed(5)
    x, grad = torch.randn(32, 64, generator=g), torch.randn(32, 48, generator=g)
    native = linear_pass("native", fmt, x, grad)
    emulated = linear_pass("emulated", fmt, x, grad)
    # measured on this CPU: bf16 bit-identical; fp16 one input-gradient element 1 ulp apart
    # (fp32 accumulation order differs between the fp16 reference kernel and fp32 sgemm)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), native, emulated):
        assert max_ulps(a, b, f) <= 1.0, name
    assert torch.equal(native[0], emulated[0])


def test_monitor_stats_under_emulation_equal_native():
    g = torch.Generator().manual_seed(6)
    x, grad = torch.randn(32, 64, generator=g), torch.randn(32, 48, generator=g)
    native = linear_pass("native", "bf16", x, grad)[-1]["0"]
    emulated = linear_pass("emulated", "bf16", x, grad)[-1]["0"]
    assert native.act == emulated.act and native.input == emulated.input
    assert native.weight == emulated.weight and native.wgrad == emulated.wgrad
    # the output gradient is measured as it arrives, before the layer's own rounding: here the
    # code around the layer (the root region, bf16) already hands it over in bf16, natively and
    # emulated alike
    from adaprec.numerics.stats import tensor_stats
    formats = ["fp32", "bf16", "fp16"]  # judged at the loss scale fp16 would use (2^16 to start)
    assert native.grad == emulated.grad
    assert native.grad == tensor_stats(grad.bfloat16(), 2.0**16, exact_norm=False, formats=formats)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_range_events_match_native(fmt):
    """Overflow to inf, underflow to subnormals, flush to zero and NaN happen in the same
    places natively and emulated, in outputs and in gradients."""
    f = get_format(fmt)
    torch.manual_seed(0)
    w = nn.Linear(64, 48).weight.detach()  # the weight linear_pass's model gets
    g = torch.Generator().manual_seed(7)
    x = torch.randn(32, 64, generator=g)
    x[0] = f.max / 2 * torch.sign(w[0])  # output 0 of row 0 sums 64 aligned big terms: inf
    x[1, 0] = min(f.max * 1.01, torch.finfo(torch.float32).max)  # rounds to inf
    x[2, 0] = math.nan
    grad = torch.randn(32, 48, generator=g)
    grad[10] = f.max / 2 * torch.sign(w[:, 0])  # input-gradient 0 of row 10 overflows
    grad[11] *= f.smallest_normal / 64  # input gradients of this row underflow and flush
    native = linear_pass("native", fmt, x, grad)
    emulated = linear_pass("emulated", fmt, x, grad)
    events = {"inf": torch.isinf, "nan": torch.isnan, "zero": lambda t: t == 0,
              "subnormal": lambda t: (t != 0) & (t.abs() < f.smallest_normal)}
    for what, a, b in zip(("output", "input grad", "weight grad", "bias grad"), native[:4], emulated[:4]):
        # measured: bf16's subnormals are fp32's, and the native oneDNN bf16 GEMM flushes them
        # to zero (FTZ) where emulation keeps the format's subnormal; nothing else differs
        ftz = (a == 0) & events["subnormal"](b) if fmt == "bf16" else torch.zeros_like(a, dtype=torch.bool)
        for event, fn in events.items():
            assert torch.equal(fn(a)[~ftz], fn(b)[~ftz]), (what, event)
    out, xgrad = emulated[0], emulated[1]
    assert torch.isinf(out[0, 0]) and torch.isinf(xgrad[10, 0]) and torch.isnan(out[2]).all()
    assert (xgrad[11] == 0).any() and ((xgrad[11] != 0) & (xgrad[11].abs() < f.smallest_normal)).any()


class Core(nn.Module):
    """Attention core: functional matmul / softmax inside one parameterless layer."""

    adaprec_layer = True

    def forward(self, q, k, v):
        att = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * 0.25, dim=-1)
        return torch.matmul(att, v)


class CoreNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.core = Core()
        self.unused = nn.Parameter(torch.zeros(1))  # AdaptivePrecision wants a parameter

    def forward(self, q, k, v):
        return self.core(q, k, v)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_functional_matmul_layer_matches_native(fmt):
    f = get_format(fmt)
    g = torch.Generator().manual_seed(8)
    qkv = [torch.randn(2, 4, 8, 16, generator=g) for _ in range(3)]
    grad = torch.randn(2, 4, 8, 16, generator=g)
    results = {}
    for executor in ("native", "emulated"):
        net = CoreNet()
        ap = AdaptivePrecision(net, controller=Static(fmt), executor=executor, monitor_every=0)
        ins = [t.clone().requires_grad_() for t in qkv]
        with ap.autocast():
            out = net(*ins)
        out.float().backward(grad)
        results[executor] = [out.float().detach()] + [t.grad for t in ins]
    # measured on this CPU: bit-identical (softmax backward uses the rounded softmax output,
    # as the native kernel uses its low-precision result); one ulp allows other GEMM orders
    for a, b in zip(results["native"], results["emulated"]):
        assert max_ulps(a, b, f) <= 1.0
    out = results["emulated"][0]
    assert torch.equal(out, round_to(out, f))


# -- training-level exactness ---------------------------------------------------------------------
def convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))


def data(shape, classes, n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def train(model, x, y, steps, controller=None, executor="emulated", plain=False, **ap_kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ap = None if plain else AdaptivePrecision(model, controller=controller, executor=executor,
                                              monitor_every=1, **ap_kw)
    losses, skipped = [], []
    for _ in range(steps):
        opt.zero_grad()
        if plain:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            continue
        with ap.autocast():
            loss = F.cross_entropy(model(x), y)
        ap.backward(loss)
        rec = ap.step(opt)
        losses.append(rec.loss)
        skipped.append(rec.skipped)
    return losses, skipped, ap


@pytest.mark.parametrize("factory,shape,classes", [(mlp, (16,), 5), (convnet, (3, 8, 8), 4)])
def test_all_fp32_plan_under_emulation_is_bit_identical_to_plain_training(factory, shape, classes):
    x, y = data(shape, classes)
    ref, ours = factory(), factory()
    ref_losses = train(ref, x, y, 6, plain=True)[0]
    assert train(ours, x, y, 6, Static("fp32"))[0] == ref_losses
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_skipping_already_rounded_inputs_changes_nothing():
    x, y = data((3, 8, 8), 4)
    a, b = convnet(), convnet()
    la, _, ap = train(a, x, y, 4, Static("fp16"))
    lb, _, _ = train(b, x, y, 4, Static("fp16"), executor_options={"skip_rounded": False})
    assert la == lb
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "nvfp4", pytest.param("fp16", marks=pytest.mark.slow)])
def test_skipping_views_of_rounded_outputs_changes_nothing(fmt):
    # the attention core's q, k, v are views of the qkv projection's rounded output: on its
    # grid (MX blocks, elementwise fp16) they are not rounded again; NVFP4's per-tensor scale
    # follows the view's amax, so there they are
    from adaprec.models.gpt import GPT

    torch.manual_seed(0)
    idx = torch.randint(0, 32, (4, 16))
    runs = {}
    for skip in (True, False):
        torch.manual_seed(1)
        model = GPT(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=64)
        ap = AdaptivePrecision(model, controller=Static(fmt), executor="emulated",
                               executor_options={"skip_rounded": skip, "sixteen_bit": "boundary"})
        seen = {}  # hooks registered after adaprec's see the tensors it passes on
        attn = model.blocks[0].attn
        attn.qkv.register_forward_hook(lambda m, a, out: seen.update(qkv=out.untyped_storage().data_ptr()))
        attn.core.register_forward_pre_hook(lambda m, a: seen.update(q=a[0].untyped_storage().data_ptr()))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(3):
            opt.zero_grad()
            with ap.autocast():
                loss = F.cross_entropy(model(idx[:, :-1]).reshape(-1, 32), idx[:, 1:].reshape(-1))
            ap.backward(loss)
            losses.append(ap.step(opt).loss)
        runs[skip] = losses, [p.detach().clone() for p in model.parameters()], seen["q"] == seen["qkv"]
    assert runs[True][0] == runs[False][0]
    assert all(torch.equal(p, q) for p, q in zip(runs[True][1], runs[False][1]))
    assert runs[True][2] == (fmt != "nvfp4") and not runs[False][2]


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "fp16"])
def test_identity_dropout_and_an_op_rounded_output_are_not_rounded_again(fmt, monkeypatch):
    # inside the attention core (op-level rounding), dropout with p=0 or in eval mode hands on
    # softmax's rounded values and the core's output is its last matmul's rounded output: neither
    # is rounded a second time; a dropout that scales (p>0, training) still is
    import adaprec.runtime.executors.emulated as emulated
    from adaprec.models.gpt import GPT

    roles, block, plain = [], emulated.FakeQuantFn, emulated.RoundFn
    counting = type("Counting", (block,), {"forward": staticmethod(
        lambda ctx, x, f, role, *rest: roles.append(role) or block.forward(ctx, x, f, role, *rest))})
    rounding = type("Rounding", (plain,), {"forward": staticmethod(
        lambda ctx, *args: roles.append("?") or plain.forward(ctx, *args))})
    monkeypatch.setattr(emulated, "FakeQuantFn", counting)
    monkeypatch.setattr(emulated, "RoundFn", rounding)
    idx = torch.randint(0, 32, (4, 16))

    def run(dropout, train, skip):
        torch.manual_seed(1)
        model = GPT(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=64, dropout=dropout).train(train)
        ap = AdaptivePrecision(model, controller=Static(fmt), executor="emulated",
                               executor_options={"skip_rounded": skip, "sixteen_bit": "boundary"})
        roles.clear()
        with ap.autocast():
            out = model(idx)
        return out, list(roles)

    (same, skipped), (ref, every) = run(0.0, True, True), run(0.0, True, False)
    assert torch.equal(same, ref)
    (same, in_eval), (ref, _) = run(0.1, False, True), run(0.1, False, False)
    assert torch.equal(same, ref) and len(in_eval) == len(skipped)
    assert len(run(0.1, True, True)[1]) == len(skipped) + 1  # a scaling dropout's output is rounded
    if fmt == "mxfp8_e4m3":  # the core's ops: matmul, scale, softmax, dropout, matmul
        assert "op4" in every and "op4" not in skipped and "op5" in skipped
        assert every.count("output") == skipped.count("output") + 1  # the core's output


def test_a_view_is_on_its_base_grid_only_on_whole_aligned_blocks():
    from adaprec.runtime.executors.emulated import _on_grid, _set_tag

    base = torch.randn(4, 96)
    _set_tag(base, ("k", base._version))
    assert _on_grid(base[:, 32:64], "k", 32) and _on_grid(base.view(4, 3, 32).transpose(0, 1), "k", 32)
    assert not _on_grid(base[:, 16:48], "k", 32)        # blocks straddle the base's blocks
    assert not _on_grid(base[:, 32:48], "k", 32)        # half a block
    assert not _on_grid(base.t(), "k", 32)              # blocks over the other dimension
    assert _on_grid(base[:, 16:48], "k", 1) and not _on_grid(base[:, 32:64], "k", 0)
    assert not _on_grid(base[:, 32:64], "other", 32)
    base[0, 0] += 1                                     # written since: off the grid
    assert not _on_grid(base[:, 32:64], "k", 32)


def test_master_weights_stay_fp32_and_untouched_by_forward():
    model = convnet()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    # boundary emulation rounds every gradient leaving a layer (under autocast's semantics batch
    # norm's weight gradient stays fp32, as natively: tests/test_autocast_emulation.py)
    ap = AdaptivePrecision(model, controller=Static("fp16"), executor="emulated",
                           executor_options={"sixteen_bit": "boundary"})
    with ap.autocast():
        out = model(torch.randn(2, 3, 8, 8))
    out.sum().backward()
    state = model.state_dict()
    for k, v in before.items():
        assert torch.equal(state[k], v), k
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
        assert torch.equal(p.grad, round_to(p.grad, FP16)), name  # gradients arrive rounded
    assert all(n not in m.__dict__ for m in model.modules() for n, _ in m.named_parameters(recurse=False))


def test_fp16_emulation_scales_the_loss_and_skips_on_overflow_like_native():
    x, y = data((16,), 5)
    # a scale so large that the scaled gradients overflow fp16 for the first steps
    scaler = {"init_scale": 2.0**24}
    native = train(mlp(), x, y, 10, Static("fp16"), executor="native", scaler=scaler)
    emulated = train(mlp(), x, y, 10, Static("fp16"), scaler=scaler)
    assert emulated[2].scaler.active
    assert any(emulated[1]) and not all(emulated[1])
    assert emulated[1] == native[1]
    assert emulated[2].scaler.scale == native[2].scaler.scale


def test_bf16_emulated_training_tracks_native_closely():
    x, y = data((16,), 5)
    native = train(mlp(), x, y, 10, Static("bf16"), executor="native")[0]
    emulated = train(mlp(), x, y, 10, Static("bf16"))[0]
    torch.testing.assert_close(torch.tensor(emulated), torch.tensor(native), rtol=2e-2, atol=1e-3)


# -- fp8 arms -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("scaling", ["current", "delayed"])
def test_fp8_arms_train_with_both_scalings(fmt, scaling):
    x, y = data((16,), 5, n=64)
    losses, skipped, ap = train(mlp(), x, y, 15, Static(fmt),
                                executor_options={"fp8": {"scaling": scaling, "amax_history_len": 4}})
    assert ap.scaler.active  # fp8's range is narrower than fp16's: loss scaling on
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    roles = {role for layer, role in ap.executor.fp8_states if layer == "0"}
    assert {"input:0", "weight:weight", "weight:bias", "output", "grad_output",
            "grad_weight:weight"} <= roles
    hist = ap.executor.fp8_states[("0", "weight:weight")].history
    assert (hist > 0).all() if scaling == "delayed" else (hist == 0).all()


def test_native_executor_rejects_fp8():
    model = mlp()
    with pytest.raises(ValueError, match="executor=emulated"):  # refused when the plan is set
        ap = AdaptivePrecision(model, controller=Static("fp8_e4m3"))
        with ap.autocast():
            model(torch.randn(2, 16))


def test_mixed_plan_with_fp8_bf16_and_fp32_layers():
    x, y = data((16,), 5)
    plan = {"0": "fp8_e4m3", "2": "bf16"}
    losses, _, ap = train(mlp(), x, y, 3, FixedPlan(plan, default="fp32"))
    assert ap.executor.format_of("0") == FP8_E4M3 and ap.executor.format_of("2") == BF16
    assert all(math.isfinite(v) for v in losses)


# -- auto -----------------------------------------------------------------------------------------
def test_auto_runs_fast_formats_natively_and_the_rest_emulated(monkeypatch, caplog):
    from adaprec.runtime.executors import capability
    # as on an AMX-BF16 CPU without fp16 support (this machine); fixed so the test is portable
    monkeypatch.setattr(capability, "_cpu_has_fast", lambda fmt: fmt.name == "bf16")
    model = convnet()
    plan = {"0": "fp16", "1": "fp16", "3": "bf16", "4": "fp32", "8": "fp8_e4m3"}
    seen = {}
    model[3].register_forward_hook(lambda m, a, o: seen.update(conv_bf16=o.dtype))
    model[0].register_forward_hook(lambda m, a, o: seen.update(conv_fp16=o.dtype))
    with caplog.at_level("INFO", logger="adaprec.runtime.executors.auto"):
        ap = AdaptivePrecision(model, controller=FixedPlan(plan, default="fp32"), executor="auto")
    assert ap.executor.choices == {"0": "emulated", "1": "emulated", "3": "native", "4": "native",
                                   "8": "emulated"}
    assert sum("auto executor:" in r.message for r in caplog.records) == 5
    with ap.autocast():
        out = model(torch.randn(4, 3, 8, 8))
    out.sum().backward()
    # emulated fp16 follows autocast: its conv output is a real fp16 tensor (fp32 kernels inside)
    assert seen == {"conv_bf16": torch.bfloat16, "conv_fp16": torch.float16}
    assert out.dtype == torch.float32
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_auto_capability_rule():
    from adaprec.runtime.executors import auto as ee
    assert ee.native_is_fast(get_format("fp32"), "conv", "cpu")
    assert not ee.native_is_fast(FP8_E4M3, "matmul", "cpu")
    assert not ee.native_is_fast(FP8_E5M2, "matmul", "cuda")
    cpu_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert ee.native_is_fast(BF16, "conv", "cpu") == cpu_bf16
    assert ee.native_is_fast(FP16, "conv", "cpu") == torch.ops.mkldnn._is_mkldnn_fp16_supported()


def test_auto_with_global_autocast_controller_is_native_where_fast(monkeypatch):
    from adaprec.runtime.executors import capability
    from adaprec.controllers import Autocast
    monkeypatch.setattr(capability, "_cpu_has_fast", lambda fmt: fmt.name == "bf16")
    x, y = data((16,), 5)
    ref = train(mlp(), x, y, 3, Autocast("bf16"), executor="native")[0]
    assert train(mlp(), x, y, 3, Autocast("bf16"), executor="auto")[0] == ref


class _OutsideOps(nn.Module):
    """Two planned Linear layers and, between them, matmuls of activations: ops outside every
    layer (like attention's functional q @ kᵀ), which only a global autocast region runs in
    16 bits."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 5)
        self.seen = set()

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = (h @ h.transpose(0, 1)) @ h / 32
        self.seen.add(h.dtype)
        return self.fc2(h)


def test_auto_with_global_autocast_where_slow_is_one_emulated_autocast_region(monkeypatch, caplog):
    from adaprec.runtime.executors import capability
    from adaprec.controllers import Autocast
    monkeypatch.setattr(capability, "_cpu_has_fast", lambda fmt: False)  # as on an AVX2-only CPU
    x, y = data((16,), 5)
    with caplog.at_level("INFO", logger="adaprec.runtime.executors.auto"):
        auto_model = _OutsideOps()
        auto, _, ap = train(auto_model, x, y, 3, Autocast("bf16"), executor="auto")
    assert ap.executor.choices == {"fc1": "emulated", "fc2": "emulated"}
    assert any("fc1 (matmul) runs bf16 emulated" in r.message for r in caplog.records)
    assert auto_model.seen == {torch.bfloat16}  # the op outside the layers ran under autocast
    # the same region as the emulated executor's global plan, bit for bit
    assert auto == train(_OutsideOps(), x, y, 3, Autocast("bf16"), executor="emulated")[0]
    # ... and not the per-layer uniform plan, where the outside op computes in fp32
    per_layer_model = _OutsideOps()
    per_layer = train(per_layer_model, x, y, 3, Static("bf16"), executor="auto")[0]
    assert per_layer_model.seen == {torch.float32} and per_layer != auto
    # real torch.autocast with bf16 kernels (slow here, fine for a tiny model) agrees closely:
    # the emulation computes each 16-bit op in fp32 and rounds its result
    native = train(_OutsideOps(), x, y, 3, Autocast("bf16"), executor="native")[0]
    assert native == pytest.approx(auto, rel=1e-2)


# -- config and the training loop ------------------------------------------------------------------
from tests.conftest import compose_config as compose  # noqa: E402


def test_config_selects_executor_and_validates_fp8_keys():
    from hydra.errors import ConfigCompositionException
    from adaprec.app.schema import ConfigError, validate
    cfg = compose("executor=emulated", "emulation.fp8_scaling=current", "emulation.amax_history_len=4")
    assert cfg.executor.value == "emulated" and cfg.emulation.fp8_scaling.value == "current"
    validate(cfg)
    with pytest.raises(ConfigCompositionException, match="executor"):
        compose("executor=magic")
    with pytest.raises(ConfigCompositionException, match="fp8_scaling"):
        compose("emulation.fp8_scaling=sometimes")
    with pytest.raises(ConfigError, match="amax_history_len"):
        validate(compose("emulation.amax_history_len=0"))


@pytest.mark.parametrize("controller,executor", [
    ("fp16", "emulated"),
    pytest.param("fp8_e4m3", "emulated", marks=pytest.mark.slow),
    pytest.param("bf16", "auto", marks=pytest.mark.slow)])
def test_train_runs_emulated_and_auto_executors(tmp_path, controller, executor):
    import json
    from adaprec.app.train import train as train_run
    cfg = compose(f"executor={executor}", f"controller={controller}", "model=mlp",
                  "trainer.max_steps=4", "trainer.eval_every=0", "trainer.progress=false",
                  "trainer.batch_size=16", "trainer.eval_batches=1", "monitor.every=2",
                  "emulation.fp8_scaling=current")
    metrics = train_run(cfg, tmp_path)
    assert metrics["status"] == "ok" and math.isfinite(metrics["val_loss"])
    assert set(json.loads((tmp_path / "metrics.json").read_text())["final_plan"].values()) == {controller}
