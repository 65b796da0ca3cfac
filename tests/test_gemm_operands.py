"""gemm_rounding="operands": a linear layer's GEMMs round their own operands, each blocked over
its reduction dimension -- checked bit for bit against torchao's MX training matmul."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision, Plan, get_format
from adaprec.controllers import FixedPlan, Static
from adaprec.models.gpt import GPT

mxfp8_linear = pytest.importorskip("torchao.prototype.moe_training.mxfp8_linear")
mx_config = pytest.importorskip("torchao.prototype.mx_formats.config")
from torchao.quantization.quantize_.common.kernel_preference import KernelPreference  # noqa: E402

ELEMENT = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2}


def torchao_linear(x, weight, bias, grad_fmt: str, wgrad_hp: bool = False):
    """torchao's emulated MXFP8 training matmul (e4m3 input and weight) plus the bias."""
    y = mxfp8_linear.mx_mm.apply(
        x, weight, torch.float8_e4m3fn, torch.float8_e4m3fn, ELEMENT[grad_fmt], 32,
        KernelPreference.EMULATED, mx_config.MXFP8Dim0CastKernelChoice.TORCH,
        mx_config.MXFP8Dim1CastKernelChoice.TORCH, mx_config.ScaleCalculationMode.FLOOR, wgrad_hp)
    return y + bias


def ours(layer_format, x, g, compiled=False, gemm_rounding="operands"):
    """(y, dx, dW, db) of one nn.Linear(96, 128) under adaprec in ``layer_format``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 128))
    ap = AdaptivePrecision(model, controller=FixedPlan(Plan({"0": layer_format})), executor="emulated",
                           executor_options={"gemm_rounding": gemm_rounding, "compiled_rounding": compiled})
    xa = x.clone().requires_grad_()
    with ap.autocast():
        y = model(xa)
    y.backward(g)
    lin = model[0]
    return y.detach(), xa.grad, lin.weight.grad, lin.bias.grad, lin


def train(model, ap, loss_of, steps, lr=0.1, run=None):
    """Losses of ``steps`` SGD steps of ``model`` under ``ap`` (``run``: the callable to call,
    e.g. the compiled model; ``loss_of(out)``: the loss of its output)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        with ap.autocast():
            loss = loss_of(model if run is None else run)
        ap.backward(loss)
        losses.append(ap.step(opt).loss)
    return losses


def gpt_loss(idx):
    return lambda m: F.cross_entropy(m(idx[:, :-1]).reshape(-1, 32), idx[:, 1:].reshape(-1))


def inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 16, 96, generator=gen) * 3
    x[0, 0, :32] = 0.0          # an all-zero block in fprop's blocks
    x[1, :, 5] = 1e-30          # a tiny column: one of wgrad's token blocks is all subnormal-scale
    g = torch.randn(4, 16, 128, generator=gen)
    g[2, 3, 7] = 500.0          # one outlier per block
    return x, g


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])  # compiles
@pytest.mark.parametrize("grad_fmt", ["mxfp8_e4m3", "mxfp8_e5m2"])
def test_linear_gemms_match_torchao_mx_mm_bit_for_bit(grad_fmt, compiled):
    x, g = inputs()
    fmt = {"fprop": "mxfp8_e4m3", "dgrad": grad_fmt, "wgrad": "fp32"}  # torchao keeps dW fp32
    y, dx, dw, db, lin = ours(fmt, x, g, compiled)
    xr = x.clone().requires_grad_()
    wr = lin.weight.detach().clone().requires_grad_()
    yr = torchao_linear(xr, wr, lin.bias.detach(), grad_fmt)
    yr.backward(g)
    assert torch.equal(y, yr.detach())
    assert torch.equal(dx, xr.grad)
    assert torch.equal(dw, wr.grad)
    assert torch.equal(db, g.sum((0, 1)))  # the bias and its gradient stay fp32


def test_a_plain_block_format_holds_the_weight_gradient_in_the_format_too():
    x, g = inputs()
    y, dx, dw, _, lin = ours("mxfp8_e4m3", x, g)
    xr = x.clone().requires_grad_()
    wr = lin.weight.detach().clone().requires_grad_()
    torchao_linear(xr, wr, lin.bias.detach(), "mxfp8_e4m3").backward(g)
    assert torch.equal(dx, xr.grad)
    assert torch.equal(dw, get_format("mxfp8_e4m3").fake_quantize(wr.grad))
    assert not torch.equal(dw, wr.grad)


def test_operands_differ_from_boundary_rounding_where_blocks_differ():
    x, g = inputs()
    y_op, dx_op, dw_op, _, _ = ours("mxfp8_e4m3", x, g)
    y_b, dx_b, dw_b, _, _ = ours("mxfp8_e4m3", x, g, gemm_rounding="boundary")
    f = get_format("mxfp8_e4m3")
    assert torch.equal(f.fake_quantize(y_b), y_b)       # boundary rounds the output too,
    assert not torch.equal(f.fake_quantize(y_op), y_op)  # the GEMM writes it in fp32
    assert not torch.equal(dx_op, dx_b) and not torch.equal(dw_op, dw_b)


def test_per_tensor_fp8_rounds_each_operand_once_with_its_current_scale():
    x, g = inputs()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 128))
    ap = AdaptivePrecision(model, controller=Static("fp8_e4m3"), executor="emulated",
                           executor_options={"gemm_rounding": "operands", "fp8": {"scaling": "current"}})
    with ap.autocast():
        y = model(x)
    f, lin = get_format("fp8_e4m3"), model[0]
    assert torch.equal(y, F.linear(f.fake_quantize(x.reshape(-1, 96)), f.fake_quantize(lin.weight),
                                   lin.bias).reshape(4, 16, 128))
    # one scaling state per tensor (no second amax for the transposed operands)
    assert {role for _, role in ap.executor.fp8_states} == {"input:0", "weight:weight"}


def test_fp32_layers_and_removal_leave_plain_linear_training():
    x, g = inputs()
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(96, 128))
    model = copy.deepcopy(ref)
    ap = AdaptivePrecision(model, controller=Static("fp32"), executor="emulated",
                           executor_options={"gemm_rounding": "operands"})
    with ap.autocast():
        y = model(x)
    assert torch.equal(y, ref(x))
    assert "forward" in model[0].__dict__
    ap.remove()
    assert "forward" not in model[0].__dict__


def test_a_tiny_gpt_trains_in_operands_mode_and_unknown_modes_are_refused():
    torch.manual_seed(0)
    model = GPT(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=64)
    ap = AdaptivePrecision(model, controller=Static("nvfp4"), executor="emulated",
                           executor_options={"gemm_rounding": "operands"})
    idx = torch.randint(0, 32, (8, 16), generator=torch.Generator().manual_seed(2))
    losses = train(model, ap, gpt_loss(idx), 8, lr=0.3)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="gemm_rounding must be one of boundary, operands"):
        AdaptivePrecision(nn.Sequential(nn.Linear(2, 2)), controller=Static("fp32"), executor="emulated",
                          executor_options={"gemm_rounding": "gemm"})


def test_the_config_key_reaches_the_executor_and_rejects_unknown_values():
    from hydra.errors import ConfigCompositionException

    from adaprec.app.build import _executor_options
    from tests.conftest import compose_config as compose

    assert _executor_options(compose("executor=emulated", "emulation.gemm_rounding=operands"))[
        "gemm_rounding"] == "operands"
    assert _executor_options(compose("executor=auto"))["gemm_rounding"] == "boundary"
    with pytest.raises(ConfigCompositionException, match="gemm_rounding"):
        compose("emulation.gemm_rounding=gemms")


def test_inputs_already_on_the_grid_are_not_rounded_again_bit_identically():
    # the GPT's layer norms hand the qkv and fc projections inputs rounded on fprop's blocks
    idx = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(3))
    runs = []
    for skip in (True, False):
        torch.manual_seed(0)
        model = GPT(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=64)
        ap = AdaptivePrecision(model, controller=Static("mxfp8_e4m3"), executor="emulated",
                               executor_options={"gemm_rounding": "operands", "skip_rounded": skip})
        train(model, ap, gpt_loss(idx), 3, lr=0.3)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


class _Checkpointed(nn.Module):
    """Two linear layers, optionally under non-reentrant activation checkpointing."""

    def __init__(self, checkpointed: bool):
        super().__init__()
        self.a, self.b, self.checkpointed = nn.Linear(64, 64), nn.Linear(64, 10), checkpointed

    def inner(self, x):
        return self.b(torch.relu(self.a(x)))

    def forward(self, x):
        if self.checkpointed:
            return torch.utils.checkpoint.checkpoint(self.inner, x, use_reentrant=False)
        return self.inner(x)


@pytest.mark.parametrize("fmt", [pytest.param("mxfp8_e4m3", marks=pytest.mark.slow), "fp8_e4m3"])
def test_activation_checkpointing_recomputes_exactly_what_the_forward_rounded(fmt):
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(5))
    runs = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = _Checkpointed(checkpointed)
        ap = AdaptivePrecision(model, controller=Static(fmt), executor="emulated",
                               executor_options={"gemm_rounding": "operands"})  # fp8: delayed scaling
        losses = train(model, ap, lambda m: F.cross_entropy(m(x), y), 3)
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.slow  # compiles: ~15 s here
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_compiled_model_trains_as_the_eager_one_in_operands_mode():
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 4
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 4))
        ap = AdaptivePrecision(model, controller=FixedPlan(Plan({"0": "mxfp8_e4m3", "2": "fp8_e4m3", "4": "nvfp4"})),
                               executor="emulated", executor_options={"gemm_rounding": "operands"})
        run = torch.compile(model, backend="aot_eager") if compiled else model
        losses = train(model, ap, lambda m: F.cross_entropy(m(x), y), 4, run=run)
        runs.append(losses)
    assert runs[0] == runs[1]
