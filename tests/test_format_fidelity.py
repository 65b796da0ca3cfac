"""Formats against independent references, bit for bit: torchao 0.18's MX and NVFP4 prototype
(CPU), torch's own float8/bf16/fp16 casts. NaNs are compared as NaN (their payload is not part
of any format's value), everything else by its fp32 bit pattern (so -0 vs +0 counts)."""
import pytest
import torch

from adaprec.numerics.elements import BF16_E, E4M3, E5M2, FP16_E
from adaprec.numerics.formats import get_format

mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2  # noqa: E402

MX_DTYPES = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2,
             "mxfp6_e3m2": DTYPE_FP6_E3M2, "mxfp6_e2m3": DTYPE_FP6_E2M3,
             "mxfp4": torch.float4_e2m1fn_x2}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.float(), b.float()
    nan = torch.isnan(a)
    if not torch.equal(nan, torch.isnan(b)):
        return False
    return torch.equal(a.masked_fill(nan, 0).view(torch.int32), b.masked_fill(nan, 0).view(torch.int32))


def cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    wide = r(8, 64) * torch.exp2(torch.randint(-40, 40, (8, 64), generator=g).float())
    zero_blocks = r(4, 64)
    zero_blocks[:, :32] = 0
    zero_blocks[1, 32:48] = 0
    subnormal = r(4, 64) * 2.0**-130                       # fp32 subnormals
    tiny_blocks = r(4, 64) * 2.0**-118                     # scale exponent at e8m0's floor
    sat = r(4, 64)
    sat[:, ::32] = 1.99 * 2.0**5                           # amax mantissa above the element max's
    sat[:, 16] = 1.99 * 2.0**5                             # (and NVFP4's 16-blocks)
    huge = r(4, 64) * 3e38 / 4
    huge[0, 0] = torch.finfo(torch.float32).max
    nonfinite = r(4, 64)
    nonfinite[0, 3], nonfinite[1, 40], nonfinite[2, 7], nonfinite[3, 50] = (
        float("inf"), float("-inf"), float("nan"), float("nan"))
    equal = torch.full((4, 64), 0.3)
    equal[1] = -7.0
    equal[2] = 2.0**-20
    outlier = r(4, 64) * 0.01
    outlier[:, 5::16] = 50.0                               # one per 16-block (two per 32-block)
    outlier[:, ::32] = 900.0
    sub_elem = r(4, 64)
    sub_elem[:, 1::2] *= 2.0**-12                          # element-format subnormals and flushes
    return {"random": r(16, 128), "wide_range": wide, "all_zero_blocks": zero_blocks,
            "fp32_subnormal": subnormal, "tiny_blocks": tiny_blocks, "saturation": sat,
            "near_fp32_max": huge, "inf_nan": nonfinite, "equal_values": equal,
            "one_outlier": outlier, "element_subnormals": sub_elem, "zeros": torch.zeros(2, 64),
            "non_multiple_len": r(5, 77)}


CASES = cases()


def ao_mx(x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchao's dequantized values, scales and raw data for ``x`` (zero-padded to 32, cropped)."""
    pad = (-x.shape[-1]) % 32
    xp = torch.nn.functional.pad(x, (0, pad)).contiguous()
    dt = MX_DTYPES[name]
    scale, data = mx.to_mx(xp, dt, 32)
    out = mx.to_dtype(data, scale, dt, 32, torch.float32)
    return out[..., :x.shape[-1]], scale, data


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(MX_DTYPES))
def test_mx_fake_quantize_matches_torchao(name, case):
    x = CASES[case]
    fmt = get_format(name)
    ref, ao_scale, ao_data = ao_mx(x, name)
    assert bits_equal(fmt.fake_quantize(x), ref)
    q = fmt.quantize(x)
    assert torch.equal(q.scale.view(torch.uint8), ao_scale.view(torch.uint8))
    assert bits_equal(fmt.dequantize(q), ref)
    if not torch.isfinite(x).all():
        return  # torchao's fp6/fp4 codes for NaN are arbitrary; values compared above
    mine = q.data.view(torch.uint8) if q.data.dtype != torch.uint8 else q.data
    theirs = ao_data.view(torch.uint8)
    assert torch.equal(mine, theirs)


def ao_nvfp4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pad = (-x.shape[-1]) % 16
    xp = torch.nn.functional.pad(x, (0, pad)).contiguous()
    t = nv.NVFP4Tensor.to_nvfp4(xp, per_tensor_scale=nv.per_tensor_amax_to_scale(xp.abs().amax()))
    return t.dequantize(torch.float32)[..., :x.shape[-1]], t.scale, t.qdata


@pytest.mark.parametrize("case", [c for c in CASES if c != "zeros"])
def test_nvfp4_matches_torchao(case):
    x = CASES[case]
    fmt = get_format("nvfp4")
    ref, ao_scale, ao_data = ao_nvfp4(x)
    assert bits_equal(fmt.fake_quantize(x), ref)
    q = fmt.quantize(x)
    assert bits_equal(fmt.dequantize(q), ref)
    if torch.isfinite(x).all():
        assert torch.equal(q.scale.view(torch.uint8), ao_scale.view(torch.uint8))
        assert torch.equal(q.data.view(torch.uint8), ao_data.view(torch.uint8))


def test_nvfp4_all_zero_tensor_is_zero_where_torchao_divides_zero_by_zero():
    fmt = get_format("nvfp4")
    assert torch.isnan(ao_nvfp4(torch.zeros(2, 32))[0]).all()
    assert torch.equal(fmt.fake_quantize(torch.zeros(2, 32)), torch.zeros(2, 32))


def test_padding_rule_equals_zero_padded_blocks():
    x = CASES["non_multiple_len"]
    for name in ("mxfp8_e4m3", "mxfp4", "nvfp4", "fp8_e4m3_tiles"):
        fmt = get_format(name)
        padded = torch.nn.functional.pad(x, (0, 128 - x.shape[-1]))
        assert bits_equal(fmt.fake_quantize(x), fmt.fake_quantize(padded)[..., :x.shape[-1]])


# -- per-tensor and unscaled: torch's casts -------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name,dtype", [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_per_tensor_fp8_matches_torch_cast(name, dtype, case):
    x = CASES[case]
    fmt = get_format(name)
    fmax = torch.finfo(dtype).max
    amax = x.abs().amax()
    s = torch.exp2(torch.floor(torch.log2(fmax / amax)))
    s = s if torch.isfinite(s) and amax > 0 else torch.ones(())
    ref = (x * s).clamp(-fmax, fmax).to(dtype).float() / s
    ref = torch.where(torch.isinf(x), x, ref)
    assert bits_equal(fmt.fake_quantize(x), ref)
    q = fmt.quantize(x)
    assert q.data.dtype == dtype and bits_equal(fmt.dequantize(q), torch.where(torch.isinf(x), q.data.float() * q.scale, ref))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_unscaled_matches_torch_cast(name, dtype, case):
    x = CASES[case]
    assert bits_equal(get_format(name).fake_quantize(x), x.to(dtype).float())
    assert get_format(name).quantize(x).data.dtype == dtype


@pytest.mark.parametrize("element", [BF16_E, FP16_E, E4M3, E5M2], ids=lambda e: e.name)
def test_computed_rounding_equals_torch_cast(element):
    """The arithmetic rounding used for fp6/fp4 (and for stochastic rounding) gives torch's
    own cast wherever torch has the dtype: an independent check of that code path."""
    xs = torch.cat([c.flatten() for c in CASES.values()]) * 64
    if element.saturate:
        xs = xs.clamp(-element.max, element.max).where(~torch.isnan(xs), xs)
    assert bits_equal(element._round_computed(xs, False, None), xs.to(element.dtype).float())


@pytest.mark.parametrize("element", [E4M3, E5M2], ids=lambda e: e.name)
def test_fp8_bit_rounding_equals_torch_cast_on_random_bit_patterns(element):
    """fp8 elements round by integer arithmetic on the fp32 bits (torch's CPU fp8 casts are
    element by element): the same values as torch's cast on a million random fp32 bit patterns
    (every exponent, subnormals, inf, NaN) and the documented edge cases."""
    g = torch.Generator().manual_seed(8)
    pats = torch.randint(-2**31, 2**31 - 1, (1_000_000,), generator=g, dtype=torch.int64).to(torch.int32)
    xs = torch.cat([pats.view(torch.float32), *(c.flatten() * 64 for c in CASES.values())])
    ref = (xs.clamp(-element.max, element.max) if element.saturate else xs).to(element.dtype).float()
    assert bits_equal(element.round(xs), ref)


# -- stochastic rounding ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bf16", "fp8_e5m2", "mxfp4", "nvfp4"])
def test_stochastic_rounding_lands_on_the_two_neighbours_and_is_unbiased(name):
    fmt = get_format(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 64, generator=g)
    x[0, ::16] = 4.0  # every block's amax is a power of two: scales fixed, no element saturates
    draws = torch.stack([fmt.fake_quantize(x, stochastic=True, generator=g) for _ in range(2000)])
    nearest = fmt.fake_quantize(x)
    lo, hi = draws.min(0).values, draws.max(0).values
    assert (lo <= x).all() and (hi >= x).all()
    assert ((draws == lo) | (draws == hi)).all()
    gap = (hi - lo).clamp(min=1e-30)
    # mean within 5 standard errors of x, per element (Bernoulli with p = (x - lo) / gap)
    p = ((x - lo) / gap).clamp(0, 1)
    se = gap * (p * (1 - p) / draws.shape[0]).sqrt()
    assert ((draws.mean(0) - x).abs() <= 5 * se + 1e-7 * x.abs()).all()
    assert not torch.equal(draws[0], nearest) or not torch.equal(draws[1], nearest)


# -- the fast paths (few vectorized passes, no where/compare) against the references -------------
def _random_patterns(n: int = 400_000, seed: int = 9) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pats = torch.randint(-2**31, 2**31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    return torch.cat([pats.view(torch.float32), *(c.flatten() * 64 for c in CASES.values()),
                      torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan")])])


@pytest.mark.parametrize("name", ["e3m2", "e2m3", "e2m1"])
def test_fp6_fp4_fast_rounding_equals_computed_rounding(name):
    """fp6/fp4 round through the same integer-constant passes as fp8: the same values as the
    frexp/ldexp computation (itself equal to torch's casts where torch has the dtype) on
    random fp32 bit patterns (every exponent, fp32 subnormals, inf, NaN) and the edge cases."""
    from adaprec.numerics.elements import ELEMENTS
    e = ELEMENTS[name]
    xs = _random_patterns()
    assert bits_equal(e.round(xs), e._round_computed(xs.clamp(-e.max, e.max), False, None))


@pytest.mark.parametrize("element", [E4M3, E5M2], ids=lambda e: e.name)
def test_in_place_saturating_rounding_equals_clamped_torch_cast(element):
    """``round_(y, sign, saturate=True)`` (what the scaled recipes use, e5m2 included) is the
    saturating cast; the default sign source (a copy of ``y``) keeps the signs of zeros too."""
    xs = _random_patterns(seed=10)
    ref = xs.clamp(-element.max, element.max).to(element.dtype).float()
    assert bits_equal(element.round_(xs.clone(), xs, saturate=True), ref)
    assert bits_equal(element.round_(xs.clone(), saturate=True), ref)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c].shape[-1] % 32 == 0])
@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp4", "nvfp4"])
def test_blocks_over_channels_in_place_match_torchao(name, case):
    """Blocks over a middle axis (a convolution's channels) are taken as a view of the
    tensor: the values torchao gives for the same blocks laid out over the last dimension."""
    x = CASES[case]                                             # (R, C), R even
    x4 = x.reshape(-1, 2, x.shape[-1]).permute(0, 2, 1).contiguous()   # (R/2, C, 2): x4[n, c, j] = x[2n+j, c]
    if name == "nvfp4" and case == "zeros":
        return  # torchao divides 0 by 0 there (test_nvfp4_all_zero_tensor_is_zero_...)
    ref = (ao_nvfp4(x)[0] if name == "nvfp4" else ao_mx(x, name)[0])
    ref4 = ref.reshape(-1, 2, x.shape[-1]).permute(0, 2, 1)
    got = get_format(name).fake_quantize(x4, axis=1)
    assert got.is_contiguous() and bits_equal(got, ref4)


def test_blocks_over_channels_not_a_multiple_use_the_padding_rule():
    x = CASES["non_multiple_len"]                               # (5, 77)
    fmt = get_format("mxfp8_e4m3")
    x3 = x.t().reshape(1, 77, 5)                                # channels = 77
    assert bits_equal(fmt.fake_quantize(x3, axis=1), fmt.fake_quantize(x).t().reshape(1, 77, 5))


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_scaled_round_skips_the_inf_pass_only_when_amax_is_finite(name):
    """The CPU shortcut (no inf pass when the amax is finite) gives what the general path
    (always the inf pass, as on other devices) gives, with inf-only, NaN and finite inputs."""
    from adaprec.numerics.recipes import scaled_round, tensor_amax
    e = get_format(name).element
    inf_only = CASES["random"].clone()
    inf_only[3, 5], inf_only[7, 1] = float("inf"), float("-inf")
    for x in (inf_only, CASES["inf_nan"], CASES["saturation"], CASES["element_subnormals"]):
        amax = tensor_amax(x)
        assert bits_equal(amax, x.abs().amax())
        for scale in (torch.tensor(2.0 ** 6), torch.tensor(2.0 ** -3)):  # -3: some values saturate
            fast, general = scaled_round(x, e, scale, amax), scaled_round(x, e, scale, None)
            ref = torch.where(torch.isinf(x), x, (x * scale).clamp(-e.max, e.max).to(e.dtype).float() / scale)
            assert bits_equal(fast, ref) and bits_equal(general, ref)
