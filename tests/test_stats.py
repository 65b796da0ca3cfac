import math

import pytest
import torch

from adaprec.numerics.stats import combine_raw, derive, raw_stats, tensor_stats

FP16_MAX = torch.finfo(torch.float16).max
FP16_TINY = torch.finfo(torch.float16).smallest_normal


def test_counts_on_hand_built_tensor():
    x = torch.tensor([
        1.0, -2.0,              # ordinary
        70000.0, -1e6,          # overflow fp16
        65519.0,                # rounds down to 65504: not an overflow
        float("inf"),           # already inf: overflow and non-finite
        float("nan"),           # non-finite, not an overflow
        1e-5, -3e-6,            # subnormal in fp16: underflow, not flushed
        2.0**-26, 0.0,          # flushed to zero; zero itself is neither
    ])
    s = tensor_stats(x)
    n = x.numel()
    assert s.numel == n
    assert s.nonfinite_frac == pytest.approx(2 / n)
    assert s.fp16_overflow == pytest.approx(3 / n)
    assert s.fp16_underflow == pytest.approx(3 / n)   # 1e-5, 3e-6, 2^-26
    assert s.fp16_flush == pytest.approx(1 / n)
    assert s.absmax == s.norm == float("inf")  # any non-finite element makes both inf
    finite = x[torch.isfinite(x)]
    assert tensor_stats(finite).absmax == 1e6
    assert tensor_stats(finite).norm == pytest.approx(finite.double().norm().item())
    assert s.mean_abs == pytest.approx(finite.double().abs().mean().item())


def test_loss_scale_moves_values_in_and_out_of_fp16_range():
    g = torch.tensor([1e-9, 1e-6, 1e-2, 1.0])
    unscaled = tensor_stats(g)
    assert unscaled.fp16_flush == pytest.approx(1 / 4)       # 1e-9 flushes
    assert unscaled.fp16_underflow == pytest.approx(2 / 4)   # 1e-9 and 1e-6
    scaled = tensor_stats(g * 2.0**16, scale=2.0**16, prescaled=2.0**16)
    assert scaled.fp16_flush == 0.0
    assert scaled.fp16_overflow == pytest.approx(1 / 4)      # 65536 > 65504
    # reported magnitudes stay unscaled
    assert scaled.absmax == pytest.approx(1.0) and scaled.norm == pytest.approx(g.norm().item())
    # evaluating an unscaled gradient "at" a scale gives the same as scaling it first
    hypothetical = tensor_stats(g, scale=2.0**16, prescaled=1.0)
    for name, value in vars(scaled).items():
        assert getattr(hypothetical, name) == pytest.approx(value, rel=1e-12), name


def test_rounding_errors_match_direct_computation():
    torch.manual_seed(0)
    x = torch.randn(1000) * 10
    s = tensor_stats(x)
    bf = (x - x.bfloat16().float()).norm() / x.norm()
    h = (x - x.half().float()).norm() / x.norm()
    assert s.bf16_rel_err == pytest.approx(bf.item(), rel=1e-6)
    assert s.fp16_rel_err == pytest.approx(h.item(), rel=1e-6)
    # rounding error is bounded by half an ulp: eps/2 relative
    assert s.bf16_rel_err <= 2.0**-8 and s.fp16_rel_err <= 2.0**-11


def test_fp16_error_ignores_overflowing_values():
    x = torch.tensor([1.0 + 2**-12, 1e6])
    s = tensor_stats(x)
    assert s.fp16_overflow == 0.5
    assert math.isfinite(s.fp16_rel_err)
    assert s.fp16_rel_err == pytest.approx(2**-12 / (1.0 + 2**-12), rel=1e-6)


def test_combine_equals_concatenation():
    a, b = torch.randn(100), torch.randn(50) * 1e5
    combined = derive(combine_raw([raw_stats(a, exact_norm=True), raw_stats(b, exact_norm=True)]).tolist())
    whole = tensor_stats(torch.cat([a, b]))
    for name, value in vars(whole).items():
        # sums accumulate in fp32 (the exact norm in one fused pass, sample sums by torch's
        # cascade summation), so partitions differ by ~1 ulp; counts and extremes are exact
        assert getattr(combined, name) == pytest.approx(value, rel=1e-6), name


def test_large_tensors_are_sampled_without_missing_rare_events():
    torch.manual_seed(0)
    x = torch.randn(64, 64, 32, 32)  # 4M elements, NCHW: a power-of-two layout
    x[5, 7, 3, 9] = float("inf")
    x[9, 1, 0, 0] = 1e6
    s = tensor_stats(x, sample=1 << 14)
    assert s.numel == x.numel()
    assert s.nonfinite_frac >= 1 / x.numel()      # a single inf is never missed
    assert s.fp16_overflow >= 1 / x.numel()       # nor is a single overflow
    assert s.absmax == float("inf")               # exact over every element
    x[5, 7, 3, 9] = 0.0
    s = tensor_stats(x, sample=1 << 14)
    assert s.absmax == 1e6 and s.fp16_overflow >= 1 / x.numel()
    finite = x
    assert s.norm == pytest.approx(finite.double().norm().item(), rel=1e-5)
    assert s.mean_abs == pytest.approx(0.7979, rel=0.02)          # E|N(0,1)| from the sample
    x[9, 1, 0, 0] = 0.0  # a lone outlier dominates the exact error norm; the sample may skip it
    exact_err = ((x - x.bfloat16().float()).norm() / x.norm()).item()
    assert tensor_stats(x, sample=1 << 14).bf16_rel_err == pytest.approx(exact_err, rel=0.05)


def test_sample_stride_does_not_alias_with_channels():
    # channel c holds value c+1: a stride that is a multiple of the plane size would see one channel
    x = torch.arange(1, 65, dtype=torch.float32).view(1, 64, 1, 1).expand(8, 64, 32, 32).contiguous()
    s = tensor_stats(x, sample=1 << 12)
    assert s.mean_abs == pytest.approx(32.5, rel=0.02)


def test_bf16_tensor_has_zero_bf16_error():
    s = tensor_stats(torch.randn(64).bfloat16())
    assert s.bf16_rel_err == 0.0


def test_batched_reduction_equals_one_tensor_at_a_time():
    from adaprec.numerics.stats import probe, reduce_probes
    torch.manual_seed(0)
    xs = [torch.randn(100) * 1e3, torch.randn(3, 50000).bfloat16(), torch.tensor([float("nan"), 1e-9]),
          torch.empty(0)]
    probes = [probe(x, scale=s, exact_norm=e) for x, s, e in zip(xs, (1.0, 2.0**10, 1.0, 1.0),
                                                                  (True, False, False, True))]
    batched = reduce_probes(probes)
    for i, p in enumerate(probes):
        torch.testing.assert_close(batched[i], reduce_probes([p])[0], equal_nan=True)


def test_inexact_absmax_comes_from_the_sample_only():
    from adaprec.numerics.stats import derive, probe, reduce_probes
    x = torch.zeros(1 << 16)
    x[1] = 7e4  # outside a stride-5 sample of 2^12 elements? index 1 is never a multiple of the stride
    exact = derive(reduce_probes([probe(x, sample=1 << 12)])[0].tolist())
    cheap = derive(reduce_probes([probe(x, sample=1 << 12, exact_absmax=False)])[0].tolist())
    assert exact.absmax == 7e4 and exact.fp16_overflow > 0
    assert cheap.absmax == 0.0 and cheap.fp16_overflow == 0.0  # the documented trade-off
    small = torch.tensor([1.0, -3.0, float("inf")])
    assert derive(reduce_probes([probe(small, exact_absmax=False)])[0].tolist()).absmax == float("inf")


def test_a_probe_keeps_its_sample_when_the_tensor_changes_in_place():
    # gradients are unscaled in place after the monitor probed them, inplace ReLUs rewrite
    # activations: the probe must hold a copy, not a view
    from adaprec.numerics.stats import probe

    x = torch.linspace(-3, 3, 1000)
    p = probe(x)
    x.mul_(0.0)
    assert p.sample.abs().max() == 3.0
