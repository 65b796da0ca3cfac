"""Element formats: the bits of one stored number (sign, exponent, mantissa, bias, specials).

An :class:`ElementFormat` knows its range from its bit layout, and rounds fp32 values to its
grid with round-to-nearest-even (or stochastically). Where torch has the dtype (fp32, bf16,
fp16, float8_e4m3fn, float8_e5m2) rounding is torch's own cast; elsewhere (fp6 e3m2/e2m3,
fp4 e2m1) it is computed in fp32 from the exponent of each value, which is exact because every
target value and every midpoint between neighbours is an fp32 number.

``specials`` says how inf/NaN are encoded:

- ``"ieee"``: the top exponent holds inf and NaN (fp32, bf16, fp16, e5m2);
- ``"fn"``: finite only, one NaN pattern (all ones) - e4m3fn; e8m0 (exponent only) likewise;
- ``"none"``: every pattern is a finite number (the OCP MX fp6/fp4 elements).

``saturate``: whether a cast to this format clamps values beyond ``max`` to +-max (formats
without inf must) or overflows them to inf (IEEE behaviour).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ElementFormat", "FP32_E", "BF16_E", "FP16_E", "E4M3", "E5M2", "E3M2", "E2M3", "E2M1",
           "E8M0", "ELEMENTS", "round_nearest_"]

_SPECIALS = ("ieee", "fn", "none")


@dataclass(frozen=True)
class ElementFormat:
    """Bit layout of one element; see the module docstring."""

    name: str
    ebits: int
    mbits: int
    bias: int | None = None  # default 2^(ebits-1) - 1
    specials: str = "ieee"
    saturate: bool = False
    signed: bool = True
    dtype: torch.dtype | None = None  # torch's dtype for it, where torch has one

    def __post_init__(self):
        if self.specials not in _SPECIALS:
            raise ValueError(f"element {self.name!r}: specials must be one of {_SPECIALS}, got {self.specials!r}")
        if self.ebits < 1 or self.mbits < 0:
            raise ValueError(f"element {self.name!r}: needs ebits >= 1 and mbits >= 0")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.ebits - 1) - 1)

    # -- range --------------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return int(self.signed) + self.ebits + self.mbits

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite value."""
        top = 2 ** self.ebits - 1
        # IEEE reserves the top exponent; e8m0 (no mantissa) reserves its all-ones pattern
        reserved = self.specials == "ieee" or (self.specials == "fn" and self.mbits == 0)
        return (top - 1 if reserved else top) - self.bias

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal value."""
        return (0 if self.mbits == 0 else 1) - self.bias

    @property
    def max(self) -> float:
        """Largest finite value."""
        if self.mbits == 0:
            return 2.0 ** self.emax
        ulps = 2 if self.specials == "fn" else 1  # fn: the all-ones mantissa at emax is NaN
        return 2.0 ** self.emax * (2 - ulps * 2.0 ** -self.mbits)

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** self.emin

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.mbits)

    @property
    def eps(self) -> float:
        return 2.0 ** -self.mbits

    @property
    def has_inf(self) -> bool:
        return self.specials == "ieee"

    # -- rounding -----------------------------------------------------------------------------
    def round(self, x: torch.Tensor, stochastic: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """``x`` (fp32) rounded to this element's grid, returned in ``x``'s dtype.

        Round to nearest even unless ``stochastic`` (round up with probability equal to the
        distance from the value below, in units of the spacing there). Beyond ``max``:
        +-max where the format saturates, +-inf otherwise. NaN stays NaN, inf stays inf
        (saturating formats: +-max)."""
        if not stochastic and self.bits <= 8 and x.dtype == torch.float32:
            return self._round_bits(x)
        if not stochastic and self.dtype is not None:
            if self.dtype == x.dtype:
                return x
            if self.saturate:
                x = x.clamp(-self.max, self.max)
            return x.to(self.dtype).to(x.dtype)
        return self._round_computed(x, stochastic, generator)

    def round_(self, y: torch.Tensor, sign: torch.Tensor | None = None,
               saturate: bool | None = None) -> torch.Tensor:
        """:meth:`round` (nearest even) of an fp32 tensor the caller owns, in place. ``sign``:
        a tensor with the signs ``y`` has (e.g. the unscaled input; default: a copy of ``y``),
        which values rounding to zero keep. ``saturate=True``: clamp to +-max even where the
        format overflows to inf (the scaled fp8 recipes saturate e5m2 too)."""
        if not (self.bits <= 8 and y.dtype == torch.float32):
            return y.copy_(self.round(y.clamp_(-self.max, self.max) if saturate else y))
        sat = self.saturate if saturate is None else saturate
        if sign is None:
            sign = y.clone()
        bound = self.max if sat else self._bound
        return self._round_clamped_(y.clamp_(-bound, bound), sign, sat)

    @property
    def _bound(self) -> float:
        # saturating: max; else everything from 2^(emax+1) up overflows to inf (or max), and
        # clamping there first keeps the rounding's magic constant finite and maps inf to a
        # value that overflows again
        return self.max if self.saturate else 2.0 ** (self.emax + 1)

    def _round_bits(self, x: torch.Tensor) -> torch.Tensor:
        """Round to nearest even with a few vectorized fp32/int32 passes (:func:`round_nearest_`):
        bit-identical to torch's fp8 casts and torchao's fp6/fp4 (tests/test_format_fidelity.py),
        where torch's CPU fp8 casts convert element by element (e4m3 -> fp32 measured ~200x an
        fp32 add) and where/compare passes over bool masks cost ~5-16 adds each on AVX2."""
        return self._round_clamped_(x.clamp(-self._bound, self._bound), x, self.saturate)

    def _round_clamped_(self, y: torch.Tensor, sign: torch.Tensor, saturated: bool) -> torch.Tensor:
        round_nearest_(y, self.mbits, self.emin, sign)
        if saturated:
            return y
        if not self.has_inf:
            return y.clamp_(-self.max, self.max)
        # |y| >= 2^(emax+1) overflows fp32 when scaled by 2^(127-emax); every smaller value on
        # the grid scales and unscales exactly (no compare/where pass)
        k = 2.0 ** (127 - self.emax)
        return y.mul_(k).div_(k)

    def _round_computed(self, x: torch.Tensor, stochastic: bool,
                        generator: torch.Generator | None) -> torch.Tensor:
        x32 = x.float()
        # spacing of the grid at |x|: 2^(exponent - mbits), constant below the smallest normal
        _, e = torch.frexp(x32)
        step_exp = (e - 1).clamp_(min=self.emin) - self.mbits
        scaled = _ldexp(x32, -step_exp)
        if stochastic:
            noise = torch.rand(x32.shape, generator=generator, device=x32.device, dtype=torch.float32)
            q = torch.floor(scaled + noise)
        else:
            q = torch.round(scaled)  # half to even
        y = _ldexp(q, step_exp)
        limit = self.max
        if self.saturate or not self.has_inf:
            y = y.clamp_(-limit, limit)
        else:
            y = torch.where(y.abs() > limit, torch.copysign(torch.full_like(y, float("inf")), y), y)
        return y.to(x.dtype)

    # -- codes --------------------------------------------------------------------------------
    def encode(self, v: torch.Tensor) -> torch.Tensor:
        """Bit patterns (uint8, low bits) of fp32 values already on this grid and finite."""
        if self.bits > 8:
            raise ValueError(f"encode() is for formats of 8 bits or fewer, not {self.name}")
        a = v.abs().float()
        _, e = torch.frexp(a)
        normal = a >= self.smallest_normal
        exp_field = torch.where(normal, (e - 1) + self.bias, torch.zeros_like(e))
        unit = torch.where(normal, torch.ldexp(torch.ones_like(a), e - 1 - self.mbits),
                           torch.full_like(a, self.smallest_subnormal))
        mant = torch.where(normal, a / unit - 2 ** self.mbits, a / unit).to(torch.int32)
        code = (exp_field.to(torch.int32) << self.mbits) | mant
        if self.signed:
            code = code | (torch.signbit(v).to(torch.int32) << (self.ebits + self.mbits))
        return code.to(torch.uint8)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """fp32 values of bit patterns made by :meth:`encode`."""
        c = code.to(torch.int32)
        mant = (c & (2 ** self.mbits - 1)).float()
        exp_field = (c >> self.mbits) & (2 ** self.ebits - 1)
        normal = exp_field > 0
        mag = torch.where(normal, torch.ldexp(1 + mant * 2.0 ** -self.mbits, exp_field - self.bias),
                          mant * self.smallest_subnormal)
        if self.signed:
            sign = (c >> (self.ebits + self.mbits)) & 1
            mag = torch.where(sign.bool(), -mag, mag)
        return mag

    def __str__(self) -> str:
        return self.name


def round_nearest_(y: torch.Tensor, mbits: int, emin: int, sign: torch.Tensor) -> torch.Tensor:
    """Round fp32 ``y`` in place to the grid of a format with ``mbits`` fraction bits and
    smallest normal exponent ``emin`` (subnormals below it), ties to even; zeros take the sign
    of ``sign`` (``y``'s values before rounding, or anything of their signs). NaN stays NaN,
    inf stays inf; ``|y|`` must be below ``2^(104 + mbits)`` (callers clamp first).

    One fp32 add rounds exactly once: ``y + M`` with ``M = 1.5 * 2^(e + 23 - mbits)`` (``e``:
    the exponent of ``y``, at least ``emin``) lies in the binade of ``M``, whose fp32 spacing is
    the format's spacing at ``y``, so the hardware's round-to-nearest-even rounds ``y`` to the
    format's grid; ``M``'s significand is even there, so ties go to the format's even value,
    and subtracting ``M`` is exact. ``M`` comes from ``y``'s exponent bits by integer ops: no
    compare, mask or ``where`` pass, which keeps it at a few vectorized passes."""
    m = y.view(torch.int32) & 0x7F800000
    m.clamp_(min=(emin + 127) << 23).add_(((23 - mbits) << 23) | 0x400000)
    magic = m.view(torch.float32)
    return y.add_(magic).sub_(magic).copysign_(sign)


def _ldexp(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``x * 2^e`` exactly, in two halves: one power of two beyond fp32's range (2^133 for a
    bf16 subnormal) would overflow."""
    half = e // 2
    return torch.ldexp(torch.ldexp(x, half), e - half)


FP32_E = ElementFormat("fp32", 8, 23, dtype=torch.float32)
BF16_E = ElementFormat("bf16", 8, 7, dtype=torch.bfloat16)
FP16_E = ElementFormat("fp16", 5, 10, dtype=torch.float16)
E4M3 = ElementFormat("e4m3", 4, 3, specials="fn", saturate=True, dtype=torch.float8_e4m3fn)
# e5m2 has inf; scaled fp8 casts saturate anyway (TE, MX), the recipe clamps before the cast
E5M2 = ElementFormat("e5m2", 5, 2, dtype=torch.float8_e5m2)
E3M2 = ElementFormat("e3m2", 3, 2, specials="none", saturate=True)
E2M3 = ElementFormat("e2m3", 2, 3, specials="none", saturate=True)
E2M1 = ElementFormat("e2m1", 2, 1, specials="none", saturate=True)
# the MX shared scale: a biased power of two, 0xFF is NaN, no zero, no sign
E8M0 = ElementFormat("e8m0", 8, 0, bias=127, specials="fn", saturate=True, signed=False,
                     dtype=torch.float8_e8m0fnu)

ELEMENTS: dict[str, ElementFormat] = {e.name: e for e in
                                      (FP32_E, BF16_E, FP16_E, E4M3, E5M2, E3M2, E2M3, E2M1, E8M0)}
