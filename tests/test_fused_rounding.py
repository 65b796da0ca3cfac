"""The fused (torch.compile) block and per-tensor rounding equals the eager path bit for bit.

The float-only element rounding (Veltkamp split + subnormal magic add) is checked against the
bit-trick rounding on whole fp32 binades, without compiling (fast); the compiled kernels, the
executor option and the CLI key are slow (each format compiles for seconds)."""
from __future__ import annotations

import copy

import pytest
import torch

from adaprec import AdaptivePrecision, get_format
from adaprec.controllers import Static
from adaprec.models.cnn import SmallCNN
from adaprec.models.gpt import GPT
from adaprec.numerics.elements import E2M1, E2M3, E3M2, E4M3, E5M2
from adaprec.numerics.fused import fused_applies, round_nearest_float

ELEMENTS = [E4M3, E5M2, E3M2, E2M3, E2M1]
BLOCK_FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "nvfp4"]


def _binade(e: int) -> torch.Tensor:
    """Every fp32 value with unbiased exponent ``e``, both signs."""
    base = (e + 127) << 23
    y = torch.arange(base, base + (1 << 23), dtype=torch.int64).to(torch.int32).view(torch.float32)
    return torch.cat([y, -y])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan].view(torch.int32), b[~nan].view(torch.int32))


def _ties_and_samples(e: int, element, n: int = 4096) -> torch.Tensor:
    """Values of fp32 exponent ``e``: every tie of the element's grid there and its two fp32
    neighbours (the cases RNE decides), plus ``n`` random significands; both signs."""
    step = 1 << (22 - element.mbits) if e >= element.emin else 1 << (22 - element.mbits - (element.emin - e))
    step = max(step, 1)
    ties = torch.arange(0, 1 << 23, step, dtype=torch.int64)
    mant = torch.cat([ties, ties + 1, (ties - 1).clamp(min=0),
                      torch.randint(0, 1 << 23, (n,), generator=torch.Generator().manual_seed(e + 200))])
    y = (((e + 127) << 23) + mant.clamp(max=(1 << 23) - 1)).to(torch.int32).view(torch.float32)
    return torch.cat([y, -y])


@pytest.mark.parametrize("element", ELEMENTS, ids=lambda e: e.name)
def test_float_rounding_equals_bit_rounding_on_ties_and_samples(element):
    # every binade from below the smallest subnormal to the top: ties, neighbours, samples
    for e in range(element.emin - element.mbits - 3, element.emax + 1):
        y = _ties_and_samples(e, element).clamp(-element.max, element.max)
        assert _same_bits(round_nearest_float(y, element, y), element._round_bits(y.clone())), e


@pytest.mark.slow
@pytest.mark.parametrize("element", ELEMENTS, ids=lambda e: e.name)
def test_float_rounding_equals_bit_rounding_on_every_binade(element):
    for e in range(element.emin - element.mbits - 3, element.emax + 1):
        y = _binade(e).clamp(-element.max, element.max)
        assert _same_bits(round_nearest_float(y, element, y), element._round_bits(y.clone())), e


def test_fused_kernel_applies_only_where_it_is_exact():
    mx = get_format("mxfp8_e4m3").recipe
    x = torch.randn(4, 64)
    assert fused_applies(mx, x, -1, False)
    assert not fused_applies(mx, x, -1, True)            # stochastic rounding: eager
    assert not fused_applies(mx, x, 0, False)            # 4 is no whole block: eager
    assert fused_applies(mx, torch.randn(8, 64, 3, 3), 1, False)  # a convolution's channels
    assert not fused_applies(mx, torch.randn(4, 40), -1, False)  # padding rule: eager


def _edge_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=g)
    x[0, :32] = 0                       # an all-zero block
    x[1, 5] = float("inf")
    x[2, 7] = float("nan")
    x[3, :] = 3.0                       # blocks of equal values
    x[4, 3] = 1e6                       # one outlier in a block
    x[5, :16] = 1e-40                   # fp32 subnormals
    x[6, 0] = -float("inf")
    x[7, :] = 448.0 * 2 ** torch.arange(64, dtype=torch.float32).remainder(4)  # at and beyond max
    wide = (torch.rand(32, 128, generator=g) - 0.5) * 2.0 ** torch.randint(-140, 120, (32, 128), generator=g).float()
    return [x, torch.randn(8, 16, 96, generator=g), torch.randn(2, 64, 3, generator=g).transpose(1, 2), torch.randn(4, 64, generator=g) * 1e-30,
            torch.randn(4, 64, generator=g) * 1e30, torch.zeros(2, 64), wide, torch.randn(64, generator=g)]


def _channel_cases() -> list[torch.Tensor]:
    """Convolution-shaped tensors blocked over dimension 1 (activations, a 3x3 weight, a 1x1
    map, a transposed copy, a channels-last map), one with the edge cases inside its channel
    blocks."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, 4, 4, generator=g)
    x[0, :32] = 0                       # all-zero channel blocks
    x[1, 3, 1, 1] = float("inf")
    x[2, 5, 0, 0] = float("nan")
    x[3, :32, 2] = 1e-40                # fp32 subnormals
    x[1, 40:, 3, 3] = 1e6               # one outlier per block
    return [x, torch.randn(8, 64, 5, 5, generator=g), torch.randn(32, 32, 3, 3, generator=g),
            torch.randn(3, 96, 1, 1, generator=g), torch.randn(2, 7, 64, generator=g).transpose(1, 2),
            torch.randn(4, 64, 3, 3, generator=g).to(memory_format=torch.channels_last)]


@pytest.mark.slow
@pytest.mark.parametrize("name", BLOCK_FORMATS)
def test_compiled_fake_quantize_equals_eager_bit_for_bit(name):
    fmt = get_format(name)
    for x in _edge_cases():
        assert _same_bits(fmt.fake_quantize(x, compiled=True), fmt.fake_quantize(x)), (name, x.shape)
    for x in _channel_cases():  # one kernel for every inner size after the first compile
        got, ref = fmt.fake_quantize(x, axis=1, compiled=True), fmt.fake_quantize(x, axis=1)
        # the same layout too: it decides the accumulation order of the ops downstream
        assert _same_bits(got, ref) and got.stride() == ref.stride(), (name, x.shape, x.stride())


@pytest.mark.slow
@pytest.mark.parametrize("element", [E4M3, E5M2], ids=lambda e: e.name)
def test_compiled_per_tensor_rounding_equals_eager_bit_for_bit(element):
    from adaprec.numerics.recipes import pow2_scale, scaled_round, tensor_amax
    for x in _edge_cases():
        amax = tensor_amax(x)
        for scale in (pow2_scale(element.max, torch.tensor(3.0)), torch.tensor(2.0 ** -20), torch.tensor(2.0 ** 40)):
            assert _same_bits(scaled_round(x, element, scale, amax, compiled=True),
                              scaled_round(x, element, scale, amax)), (element.name, x.shape, scale)


@pytest.mark.slow
@pytest.mark.parametrize("name,arch", [("mxfp8_e4m3", "gpt"), ("nvfp4", "gpt"), ("fp8_e4m3", "gpt"),
                                       ("fp8_hybrid", "gpt"), ("mxfp8_e4m3", "cnn"), ("nvfp4", "cnn")])
def test_compiled_rounding_trains_bit_identically(name, arch, monkeypatch):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if arch == "gpt":
        base = GPT(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=64)
        x = torch.randint(0, 64, (4, 16), generator=g)
        y = torch.randint(0, 64, (4, 16), generator=g)
    else:  # convolutions blocked over their 32 and 64 channels (the 3-channel input is padded)
        base = SmallCNN(3, 10, width=32)
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    from adaprec.numerics import fused
    axes, call = [], fused._BlockKernel.__call__
    monkeypatch.setattr(fused._BlockKernel, "__call__",
                        lambda self, t, axis=-1: axes.append(axis % t.dim()) or call(self, t, axis))
    results = []
    for compiled in (False, True):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ap = AdaptivePrecision(model, controller=Static(name), executor="emulated", monitor_every=0,
                               executor_options={"compiled_rounding": compiled})
        losses = []
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            with ap.autocast():
                out = model(x)
                loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
            ap.backward(loss)
            ap.step(opt)
            losses.append(loss.detach())
        results.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
    (l0, p0), (l1, p1) = results
    assert torch.equal(l0, l1)
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))
    assert not torch.equal(l0[0], l0[-1])  # it trained
    if arch == "cnn" and name != "fp8_e4m3":
        assert 1 in axes  # the channel blocks ran the compiled kernel


def test_config_keys_reach_the_executor_and_reject_non_booleans():
    from hydra.errors import ConfigCompositionException
    from adaprec.app.build import _executor_options
    from tests.conftest import compose_config as compose
    options = _executor_options(compose("executor=emulated", "emulation.compiled_rounding=true",
                                        "emulation.stochastic_grads=true"))
    assert options["compiled_rounding"] is True and options["stochastic_grads"] is True
    assert _executor_options(compose("executor=auto"))["compiled_rounding"] is False
    assert _executor_options(compose("executor=native")) == {}
    with pytest.raises(ConfigCompositionException, match="compiled_rounding"):
        compose("emulation.compiled_rounding=sometimes")


@pytest.mark.slow
def test_cli_trains_a_block_format_with_compiled_rounding(tmp_path):
    import json
    from adaprec.app.train import train as train_run
    from tests.conftest import compose_config as compose
    cfg = compose("executor=emulated", "controller=mxfp8_e4m3", "model=mlp", "trainer.max_steps=3",
                  "trainer.eval_every=0", "trainer.progress=false", "trainer.batch_size=16",
                  "trainer.eval_batches=1", "emulation.compiled_rounding=true")
    metrics = train_run(cfg, tmp_path)
    assert metrics["status"] == "ok"
    assert set(json.loads((tmp_path / "metrics.json").read_text())["final_plan"].values()) == {"mxfp8_e4m3"}


@pytest.mark.slow
def test_rounding_kernel_benchmark_runs(capsys, monkeypatch):
    import sys
    from benchmarks import rounding_kernels
    monkeypatch.setattr(sys, "argv", ["rounding_kernels", "--formats", "fp8_e4m3", "mxfp8_e4m3",
                                      "--reps", "1", "--warmup", "1"])
    rounding_kernels.main()
    out = capsys.readouterr().out
    assert out.count("## ") == 1 + len(rounding_kernels.LAYOUTS)  # fp8: one layout; mxfp8: all
    assert out.count("compiled ") == out.count("## ")
