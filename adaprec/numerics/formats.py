"""Numeric formats: their IEEE limits (taken from ``torch.finfo``), sizes and name parsing.

A :class:`Format` is the single source of truth for a format's range and precision. Everything
that needs "the largest fp16 value" or "what does bf16 round this to" asks this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Format", "FORMATS", "get_format", "format_names", "FP32", "BF16", "FP16",
           "FP8_E4M3", "FP8_E5M2"]


@dataclass(frozen=True)
class Format:
    """A floating-point format a layer can run in.

    ``dtype`` is the torch dtype whose casts define rounding (round-to-nearest-even).
    ``native`` says whether torch can *compute* in it (autocast); fp8 formats are emulated only.
    """

    name: str
    dtype: torch.dtype
    native: bool = True
    aliases: tuple[str, ...] = field(default=(), compare=False)

    @property
    def bits(self) -> int:
        return torch.finfo(self.dtype).bits

    @property
    def bytes(self) -> float:
        return self.bits / 8

    @property
    def max(self) -> float:
        """Largest finite value."""
        return float(torch.finfo(self.dtype).max)

    @property
    def smallest_normal(self) -> float:
        return float(torch.finfo(self.dtype).smallest_normal)

    @property
    def smallest_subnormal(self) -> float:
        # finfo has no smallest_subnormal on every torch version; for IEEE-style formats it is
        # the smallest normal times the machine epsilon (one unit in the last place at 2^emin).
        fi = torch.finfo(self.dtype)
        return float(fi.smallest_normal * fi.eps)

    @property
    def eps(self) -> float:
        return float(torch.finfo(self.dtype).eps)

    @property
    def mantissa_bits(self) -> int:
        """Explicit fraction bits (eps = 2^-mantissa_bits)."""
        return round(-torch.log2(torch.tensor(self.eps)).item())

    @property
    def is_16bit_or_less(self) -> bool:
        return self.bits < 32

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """Round ``x`` to this format (RNE) and return it in ``x``'s dtype."""
        if self.dtype == x.dtype:
            return x
        return x.to(self.dtype).to(x.dtype)

    def __str__(self) -> str:
        return self.name


FP32 = Format("fp32", torch.float32, aliases=("float32", "float", "single", "f32", "torch.float32"))
BF16 = Format("bf16", torch.bfloat16, aliases=("bfloat16", "brain", "torch.bfloat16"))
FP16 = Format("fp16", torch.float16, aliases=("float16", "half", "f16", "torch.float16"))
FP8_E4M3 = Format("fp8_e4m3", torch.float8_e4m3fn, native=False,
                  aliases=("e4m3", "float8_e4m3fn", "fp8-e4m3", "torch.float8_e4m3fn"))
FP8_E5M2 = Format("fp8_e5m2", torch.float8_e5m2, native=False,
                  aliases=("e5m2", "float8_e5m2", "fp8-e5m2", "torch.float8_e5m2"))

FORMATS: dict[str, Format] = {f.name: f for f in (FP32, BF16, FP16, FP8_E4M3, FP8_E5M2)}
_BY_ALIAS: dict[str, Format] = {a: f for f in FORMATS.values() for a in (f.name, *f.aliases)}


def format_names() -> list[str]:
    """Canonical names of every known format."""
    return list(FORMATS)


def get_format(spec: str | Format | torch.dtype) -> Format:
    """Parse a format from a name ("fp16", "half", "bfloat16", ...), a Format or a torch dtype."""
    if isinstance(spec, Format):
        return spec
    if isinstance(spec, torch.dtype):
        for f in FORMATS.values():
            if f.dtype == spec:
                return f
        raise ValueError(f"unsupported dtype {spec}; valid formats: {', '.join(FORMATS)}")
    if isinstance(spec, str):
        key = spec.strip().lower().replace(" ", "")
        if key in _BY_ALIAS:
            return _BY_ALIAS[key]
    raise ValueError(
        f"unknown format {spec!r}; valid names: {', '.join(FORMATS)} "
        f"(aliases: {', '.join(sorted(a for f in FORMATS.values() for a in f.aliases))})")
