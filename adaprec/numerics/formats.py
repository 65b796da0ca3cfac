"""Formats: an element format plus a scaling recipe, registered in one place.

A :class:`Format` is the single source of truth for what a layer "in fp8" or "in mxfp4" means:
its element (:mod:`adaprec.numerics.elements`: bits, bias, inf/NaN encoding, saturation), its
scaling recipe (:mod:`adaprec.numerics.recipes`: none, loss scaling, per-tensor amax, blocks,
tiles), whether torch autocast computes in it natively, and which format a device that lacks it
runs it as (``fallback``, used by cost profiles). Adding a format is one :func:`register` call::

    register(Format("mxfp8_e4m3_b16", E4M3, Block(16), fallback="mxfp8_e4m3"))

``get_format(name).fake_quantize(x)`` returns the fp32 values the format holds for ``x``
(blocks over the last dimension; see :mod:`adaprec.numerics.recipes` for scale rules and the
padding rule), ``.quantize(x)`` its stored data and scales.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adaprec.numerics.elements import (BF16_E, E2M1, E2M3, E3M2, E4M3, E5M2, E8M0, FP16_E, FP32_E,
                                       ElementFormat)
from adaprec.numerics.recipes import (Block, PerTensor, Quantized, Recipe, Tiles, Unscaled,
                                      unpack)

__all__ = ["Format", "FORMATS", "get_format", "format_names", "register", "unregister",
           "FP32", "BF16", "FP16", "FP8_E4M3", "FP8_E5M2", "Quantized"]


@dataclass(frozen=True)
class Format:
    """A number format a layer (or one of its tensor roles) can run in.

    ``native``: torch autocast computes in it (fp32/bf16/fp16); every other format is emulated.
    ``fallback``: the format a device without it runs it as (cost profiles, module docstring
    of :mod:`adaprec.cost.profiles`); ``None`` for the base formats.
    """

    name: str
    element: ElementFormat
    recipe: Recipe = field(default_factory=Unscaled)
    native: bool = False
    aliases: tuple[str, ...] = field(default=(), compare=False)
    fallback: str | None = field(default=None, compare=False)
    weight: str | None = None  # per-role formats (TE's fine-grained recipes): the weight's in fprop,
    dgrad: str | None = None   # the output gradient's and the input gradient's (dgrad),
    wgrad: str | None = None   # the weight gradient's (wgrad, default: dgrad's); None: this format

    def role_format(self, role: str, grad: bool = False) -> "Format":
        """The format of one tensor role: ``weight:*`` forward uses ``weight``; gradients use
        ``wgrad`` (of weights) or ``dgrad`` (everything else); unset roles use this format."""
        is_weight = role.startswith("weight")
        name = ((self.wgrad or self.dgrad) if is_weight else self.dgrad) if grad else (
            self.weight if is_weight else None)
        return get_format(name) if name else self

    @property
    def has_roles(self) -> bool:
        """Whether some tensor role uses another format (a HYBRID-style recipe)."""
        return any((self.weight, self.dgrad, self.wgrad))

    # -- element facts ------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype | None:
        """torch's dtype for the element (None for fp6/fp4, which torch can't compute in)."""
        return self.element.dtype

    @property
    def bits(self) -> int:
        """Bits of one element (scales not included)."""
        return self.element.bits

    @property
    def bytes(self) -> float:
        """Bytes stored per element, block scales included (mxfp8: (8 + 8/32) / 8)."""
        extra = self.recipe.scale_element.bits / self.recipe.size if isinstance(self.recipe, Block) else 0
        return (self.bits + extra) / 8

    @property
    def max(self) -> float:
        """Largest finite element value."""
        return self.element.max

    @property
    def smallest_normal(self) -> float:
        return self.element.smallest_normal

    @property
    def smallest_subnormal(self) -> float:
        return self.element.smallest_subnormal

    @property
    def eps(self) -> float:
        return self.element.eps

    @property
    def mantissa_bits(self) -> int:
        """Explicit fraction bits (eps = 2^-mantissa_bits)."""
        return self.element.mbits

    @property
    def is_16bit_or_less(self) -> bool:
        return self.bits < 32

    # -- recipe facts -------------------------------------------------------------------------
    @property
    def scaling(self) -> str:
        """``none``, ``per_tensor``, ``block`` or ``tiles``."""
        return self.recipe.kind

    @property
    def needs_loss_scaling(self) -> bool:
        """Whether a run with this format turns on the dynamic loss scaler: fp16 (range) and
        per-tensor fp8 (a per-tensor scale can't rescue gradients below the tensor's own amax
        range); block and tile recipes scale every block into range themselves."""
        r = self.recipe
        return (isinstance(r, Unscaled) and r.loss_scaling) or isinstance(r, PerTensor)

    # -- values -------------------------------------------------------------------------------
    def round(self, x: torch.Tensor) -> torch.Tensor:
        """Round ``x`` to the element (RNE, no scaling) and return it in ``x``'s dtype."""
        return self.element.round(x)

    def fake_quantize(self, x: torch.Tensor, *, role: str = "input", axis: int = -1,
                      stochastic: bool = False, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """fp32 tensor holding exactly the values this format stores for ``x``, scales applied.

        Blocks run over the last dimension (``axis`` picks another: the executor blocks a
        convolution's activations over channels); ``role="weight"`` selects a recipe's weight
        tiling (DeepSeek 128x128 blocks; a weight of more than two dimensions is blocked as
        ``(out, everything else)``). ``stochastic``: stochastic instead of nearest-even rounding
        (for gradients). Per-tensor recipes use this tensor's amax (delayed scaling needs the
        executor's history)."""
        x = x.float()
        if self.scaling in ("block", "tiles"):
            if role.startswith("weight") and x.dim() > 2:
                flat = self.recipe.fake_quantize(x.reshape(x.shape[0], -1), self.element, role=role,
                                                 stochastic=stochastic, generator=generator)
                return flat.reshape(x.shape)
            if axis not in (-1, x.dim() - 1) and x.dim() > 1:
                moved = self.recipe.fake_quantize(x.movedim(axis, -1), self.element, role=role,
                                                  stochastic=stochastic, generator=generator)
                return moved.movedim(-1, axis)
        return self.recipe.fake_quantize(x, self.element, role=role, stochastic=stochastic,
                                         generator=generator)

    def quantize(self, x: torch.Tensor) -> Quantized:
        """Stored data and scales (torch dtypes where torch has them; see :class:`Quantized`)."""
        return self.recipe.quantize(x, self.element, self.name)

    def dequantize(self, q: Quantized) -> torch.Tensor:
        """fp32 values of ``q`` (equal to :meth:`fake_quantize` of the original tensor)."""
        return self.recipe.dequantize(q, unpack(q, self.element))

    def describe(self) -> str:
        """One line: element and recipe (and per-role formats)."""
        e = self.element
        roles = ", ".join(f"{r} {getattr(self, r)}" for r in ("weight", "dgrad", "wgrad") if getattr(self, r))
        return (f"{self.name}: {e.name} (1+{e.ebits}+{e.mbits} bits, max {e.max:g}), "
                f"{self.recipe.describe()}{', native' if self.native else ', emulated'}"
                f"{'; ' + roles if roles else ''}")

    def __str__(self) -> str:
        return self.name


FORMATS: dict[str, Format] = {}
_BY_ALIAS: dict[str, Format] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "")


def register(fmt: Format, replace: bool = False) -> Format:
    """Add ``fmt`` to the registry (its name and aliases become valid everywhere: plans,
    controller format lists, configs). A taken name or alias is an error unless ``replace``."""
    keys = [_key(k) for k in (fmt.name, *fmt.aliases)]
    taken = [k for k in keys if k in _BY_ALIAS and _BY_ALIAS[k].name != fmt.name]
    if fmt.name in FORMATS and not replace:
        raise ValueError(f"format {fmt.name!r} is already registered; pass replace=True to redefine it")
    if taken:
        raise ValueError(f"format {fmt.name!r}: names {taken} already belong to other formats")
    for what in ("fallback", "weight", "dgrad", "wgrad"):
        other = getattr(fmt, what)
        if other is not None and _key(other) not in _BY_ALIAS:
            raise ValueError(f"format {fmt.name!r}: {what} {other!r} is not a registered format")
        if what != "fallback" and other is not None and get_format(other).has_roles:
            raise ValueError(f"format {fmt.name!r}: {what} {other!r} has roles itself; name a plain format")
    if fmt.name in FORMATS:
        unregister(fmt.name)
    FORMATS[fmt.name] = fmt
    for k in keys:
        _BY_ALIAS[k] = fmt
    return fmt


def unregister(name: str) -> None:
    """Remove a registered format (tests that register their own clean up with it)."""
    fmt = FORMATS.pop(get_format(name).name)
    for k in [k for k, f in _BY_ALIAS.items() if f is fmt]:
        del _BY_ALIAS[k]


def format_names() -> list[str]:
    """Canonical names of every registered format."""
    return list(FORMATS)


def get_format(spec: str | Format | torch.dtype) -> Format:
    """Parse a format from a name ("fp16", "half", "mxfp8", ...), a Format or a torch dtype."""
    if isinstance(spec, Format):
        return spec
    if isinstance(spec, torch.dtype):
        for f in FORMATS.values():
            if f.dtype == spec and f.scaling in ("none", "per_tensor"):
                return f
        raise ValueError(f"unsupported dtype {spec}; valid formats: {', '.join(FORMATS)}")
    if isinstance(spec, str) and _key(spec) in _BY_ALIAS:
        return _BY_ALIAS[_key(spec)]
    raise ValueError(
        f"unknown format {spec!r}; valid names: {', '.join(FORMATS)} "
        f"(aliases: {', '.join(sorted(a for f in FORMATS.values() for a in f.aliases))})")


# -- the registry -------------------------------------------------------------------------------
FP32 = register(Format("fp32", FP32_E, native=True,
                       aliases=("float32", "float", "single", "f32", "torch.float32")))
BF16 = register(Format("bf16", BF16_E, native=True, aliases=("bfloat16", "brain", "torch.bfloat16")))
FP16 = register(Format("fp16", FP16_E, Unscaled(loss_scaling=True), native=True,
                       aliases=("float16", "half", "f16", "torch.float16")))
FP8_E4M3 = register(Format("fp8_e4m3", E4M3, PerTensor(), fallback="bf16",
                           aliases=("e4m3", "float8_e4m3fn", "fp8-e4m3", "torch.float8_e4m3fn")))
FP8_E5M2 = register(Format("fp8_e5m2", E5M2, PerTensor(), fallback="bf16",
                           aliases=("e5m2", "float8_e5m2", "fp8-e5m2", "torch.float8_e5m2")))
# OCP Microscaling v1.0: 32-element blocks sharing an E8M0 scale
MX = Block(32, E8M0)
register(Format("mxfp8_e4m3", E4M3, MX, fallback="fp8_e4m3", aliases=("mxfp8",)))
register(Format("mxfp8_e5m2", E5M2, MX, fallback="fp8_e5m2"))
register(Format("mxfp6_e3m2", E3M2, MX, fallback="mxfp8_e4m3"))
register(Format("mxfp6_e2m3", E2M3, MX, fallback="mxfp8_e4m3", aliases=("mxfp6",)))
register(Format("mxfp4", E2M1, MX, fallback="mxfp6_e2m3", aliases=("mxfp4_e2m1",)))
# NVIDIA NVFP4: 16-element blocks, E4M3 block scales under an fp32 per-tensor scale
register(Format("nvfp4", E2M1, Block(16, E4M3, tensor_scale=True), fallback="mxfp4"))
# DeepSeek-V3 fine-grained fp8: 1x128 activation tiles, 128x128 weight blocks, fp32 scales
register(Format("fp8_e4m3_tiles", E4M3, Tiles(), fallback="fp8_e4m3", aliases=("deepseek_fp8",)))
# Transformer Engine's HYBRID recipe: e4m3 forward (inputs, weights), e5m2 gradients (dgrad, wgrad)
register(Format("fp8_hybrid", E4M3, PerTensor(), fallback="fp8_e4m3", dgrad="fp8_e5m2",
                aliases=("hybrid",)))
register(Format("mxfp8_hybrid", E4M3, MX, fallback="mxfp8_e4m3", dgrad="mxfp8_e5m2"))
