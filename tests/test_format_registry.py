"""The format registry: element facts, one-entry registration (a new format trains), the
emulated executor's block rounding against fake_quantize, every format from the CLI."""
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision, Plan, get_format
from adaprec.controllers import FixedPlan, Static
from adaprec.numerics.elements import E2M1, E2M3, E3M2, E4M3, E5M2, E8M0
from adaprec.numerics.formats import FORMATS, Format, register, unregister
from adaprec.numerics.recipes import Block

from tests.conftest import compose_config


def test_element_limits_of_the_ocp_formats():
    assert (E4M3.max, E5M2.max, E3M2.max, E2M3.max, E2M1.max) == (448.0, 57344.0, 28.0, 7.5, 6.0)
    assert (E3M2.smallest_subnormal, E2M3.smallest_subnormal, E2M1.smallest_subnormal) == (2.0**-4, 2.0**-3, 0.5)
    assert (E8M0.max, E8M0.smallest_normal) == (2.0**127, 2.0**-127)
    for e in (E4M3, E5M2):
        assert e.max == torch.finfo(e.dtype).max and e.smallest_subnormal == torch.finfo(e.dtype).smallest_normal * torch.finfo(e.dtype).eps


def test_e2m1_grid_and_codes():
    x = torch.tensor([0.0, 0.25, 0.26, 0.75, 1.25, 2.5, 3.5, 5.0, 5.1, 7.0, -0.3, -100.0])
    y = E2M1.round(x)
    assert y.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 4.0, 4.0, 6.0, 6.0, -0.5, -6.0]
    assert torch.equal(E2M1.decode(E2M1.encode(y)), y)
    assert E2M1.encode(torch.tensor([6.0, -0.5])).tolist() == [0b0111, 0b1001]


def test_formats_expose_element_and_recipe():
    mx = get_format("mxfp8")
    assert mx.name == "mxfp8_e4m3" and mx.scaling == "block" and mx.recipe.size == 32
    assert mx.bytes == (8 + 8 / 32) / 8 and not mx.needs_loss_scaling
    assert get_format("fp16").needs_loss_scaling and get_format("fp8_e5m2").needs_loss_scaling
    assert not get_format("bf16").needs_loss_scaling
    assert get_format("nvfp4").recipe.tensor_scale and get_format("nvfp4").recipe.size == 16
    assert {"mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "nvfp4",
            "fp8_e4m3_tiles"} <= set(FORMATS)


def test_quantize_gives_torch_dtypes_where_torch_has_them():
    x = torch.randn(4, 64)
    assert get_format("mxfp8_e4m3").quantize(x).data.dtype == torch.float8_e4m3fn
    assert get_format("mxfp8_e4m3").quantize(x).scale.dtype == torch.float8_e8m0fnu
    q = get_format("nvfp4").quantize(x)
    assert q.data.dtype == torch.float4_e2m1fn_x2 and q.data.shape == (4, 32)
    assert q.scale.dtype == torch.float8_e4m3fn and q.tensor_scale.dtype == torch.float32
    assert get_format("mxfp6_e2m3").quantize(x).data.dtype == torch.uint8


def test_tiles_scale_each_row_tile_and_weight_block():
    fmt = get_format("fp8_e4m3_tiles")
    x = torch.randn(3, 256)
    x[0, :128] *= 1000
    y = fmt.fake_quantize(x)
    for r, c in ((0, 0), (0, 128), (1, 0)):  # each 1x128 tile is its own amax -> 448
        tile = x[r, c:c + 128]
        s = tile.abs().max() / 448
        assert torch.equal(y[r, c:c + 128], (tile / s).to(torch.float8_e4m3fn).float() * s)
    w = torch.randn(256, 200)
    yw = fmt.fake_quantize(w, role="weight")
    s = w[128:, 128:].abs().max() / 448
    assert torch.equal(yw[128:, 128:], (w[128:, 128:] / s).to(torch.float8_e4m3fn).float() * s)
    assert torch.equal(fmt.dequantize(fmt.recipe.quantize(w, fmt.element, fmt.name, role="weight")), yw)


def test_registering_a_format_is_one_entry_and_it_trains():
    fmt = register(Format("mxfp8_e4m3_b16", E4M3, Block(16), fallback="mxfp8_e4m3",
                          aliases=("mx16",)))
    try:
        assert get_format("mx16") is fmt and Plan({"0": "mx16"})["0"] == "mxfp8_e4m3_b16"
        x = torch.rand(2, 64, generator=torch.Generator().manual_seed(0)) * 1.5 + 0.1  # no saturation
        x[0, 20] = 1e5  # an outlier in the second 16-block: pushes its 32-block into subnormals
        y16, y32 = fmt.fake_quantize(x), get_format("mxfp8_e4m3").fake_quantize(x)
        err16, err32 = ((y - x)[0, :16].abs().max() for y in (y16, y32))
        assert err16 < err32  # the first 16 values keep their own scale, away from the outlier
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ap = AdaptivePrecision(model, controller=Static("mx16"), executor="emulated")
        xb, yb = torch.randn(64, 16), torch.randint(0, 4, (64,))
        losses = []
        for _ in range(30):
            with ap.autocast():
                loss = F.cross_entropy(model(xb), yb)
            ap.backward(loss)
            ap.step(opt)
            opt.zero_grad()
            losses.append(loss.item())
        assert ap.plan.format_of("0") == "mxfp8_e4m3_b16" and losses[-1] < 0.9 * losses[0]
        with pytest.raises(ValueError, match="already registered"):
            register(Format("mxfp8_e4m3_b16", E4M3, Block(16)))
    finally:
        unregister("mxfp8_e4m3_b16")
    with pytest.raises(ValueError, match="unknown format"):
        get_format("mx16")


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4", "nvfp4", "fp8_e4m3_tiles"])
def test_emulated_linear_is_a_gemm_of_fake_quantized_operands(name):
    fmt = get_format(name)
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(8, 64, requires_grad=True)
    model = nn.Sequential(lin)
    ap = AdaptivePrecision(model, controller=FixedPlan(Plan({"0": name}, default=name)),
                           executor="emulated", layers=["0"])
    with ap.autocast():
        y = model(x)
    fq = fmt.fake_quantize
    ref = fq(F.linear(fq(x.detach()), fq(lin.weight.detach(), role="weight"), fq(lin.bias.detach(), role="weight")))
    assert torch.equal(y.detach(), ref)
    g = torch.randn_like(y)
    y.backward(g)
    # dX = round(round(g) @ W_q) (the input's gradient in the format, as a native layer returns it)
    w_q = fq(lin.weight.detach(), role="weight")
    assert torch.equal(x.grad, fq(fq(g) @ w_q))
    assert torch.equal(lin.weight.grad, fq(fq(g).t() @ fq(x.detach())))  # a gradient: activation tiles


@pytest.mark.parametrize("name,fwd,bwd", [("fp8_hybrid", "fp8_e4m3", "fp8_e5m2"),
                                          ("mxfp8_hybrid", "mxfp8_e4m3", "mxfp8_e5m2")])
def test_hybrid_formats_round_forward_and_gradients_in_their_own_formats(name, fwd, bwd):
    """TE's HYBRID: e4m3 inputs and weights, e5m2 output/input/weight gradients (first step:
    delayed scaling has no history yet, so per-tensor scales come from the current amax)."""
    f, b = get_format(fwd).fake_quantize, get_format(bwd).fake_quantize
    assert get_format(name).role_format("weight:weight") is get_format(name)
    assert get_format(name).role_format("input:0", grad=True).name == bwd
    assert get_format(name).role_format("weight:weight", grad=True).name == bwd
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    model = nn.Sequential(lin)
    x = torch.randn(8, 64, requires_grad=True)
    ap = AdaptivePrecision(model, controller=Static(name), executor="emulated", layers=["0"])
    with ap.autocast():
        y = model(x)
    w_q = f(lin.weight.detach(), role="weight")
    assert torch.equal(y.detach(), f(F.linear(f(x.detach()), w_q, f(lin.bias.detach(), role="weight"))))
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, b(b(g) @ w_q))
    assert torch.equal(lin.weight.grad, b(b(g).t() @ f(x.detach())))
    assert ap.scaler.active == get_format(name).needs_loss_scaling


def test_conv_activations_are_blocked_over_channels():
    fmt = get_format("mxfp8_e4m3")
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 32, 3, padding=1)
    x = torch.randn(2, 64, 5, 5)
    model = nn.Sequential(conv)
    ap = AdaptivePrecision(model, controller=FixedPlan(Plan({"0": "mxfp8_e4m3"}, default="mxfp8_e4m3")),
                           executor="emulated", layers=["0"])
    with ap.autocast():
        y = model(x)
    xq = fmt.fake_quantize(x, axis=1)
    assert not torch.equal(xq, fmt.fake_quantize(x))  # the axis matters
    wq = fmt.fake_quantize(conv.weight.detach(), role="weight")
    ref = fmt.fake_quantize(F.conv2d(xq, wq, fmt.fake_quantize(conv.bias.detach()), padding=1), axis=1)
    assert torch.equal(y.detach(), ref)


def test_stochastic_gradient_rounding_changes_gradients_not_forward():
    def run(stochastic, seed):
        torch.manual_seed(0)
        lin = nn.Linear(64, 16)
        model = nn.Sequential(lin)
        ap = AdaptivePrecision(model, controller=Static("mxfp4"), executor="emulated", layers=["0"],
                               executor_options={"stochastic_grads": stochastic})
        torch.manual_seed(seed)
        x = torch.randn(4, 64)
        with ap.autocast():
            y = model(x)
        y.sum().backward()
        return y.detach(), lin.weight.grad.clone()
    y0, g0 = run(False, 1)
    y1, g1 = run(True, 1)
    y2, g2 = run(True, 2)
    assert torch.equal(y0, y1)
    assert not torch.equal(g1, g0) or not torch.equal(g2, g0)


_compose = compose_config


QUICK = ["model=mlp", "trainer.max_steps=3", "trainer.batch_size=16", "trainer.eval_every=0",
         "trainer.eval_batches=1", "trainer.progress=false", "monitor.every=0", "executor=emulated"]


def _train_cli(tmp_path, *overrides):
    from adaprec.app.train import train
    c = _compose(*overrides, *QUICK)
    return train(c, tmp_path, choices={"controller": "static"})


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "nvfp4"])
def test_static_preset_trains_from_the_cli(tmp_path, name):
    m = _train_cli(tmp_path, f"controller={name}")
    assert m["status"] == "ok" and (pd.read_csv(tmp_path / "steps.csv")[f"share_{name}"] == 1.0).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", [f for f in FORMATS if f not in ("fp16",)])
def test_every_format_trains_from_the_cli(tmp_path, name):
    m = _train_cli(tmp_path, "controller=static", f"controller.format={name}")
    assert m["status"] == "ok" and (pd.read_csv(tmp_path / "steps.csv")[f"share_{name}"] == 1.0).all()
