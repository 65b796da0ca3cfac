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

Per-role entries: one layer may hold each GEMM operand in its own format (Transformer Engine's
per-GEMM recipes; an autoswitch per GEMM). :func:`per_role` builds such a format from a mapping
of roles to plain formats -- ``fprop`` (the forward operands, input and weight; or ``input`` and
``weight`` separately), ``dgrad`` (the output gradient, and the input gradient it produces) and
``wgrad`` (the weight gradient); ``weight`` defaults to ``input``, ``dgrad`` to ``input``,
``wgrad`` to ``dgrad``. Its name is canonical and is what a plan stores::

    f = per_role({"fprop": "bf16", "dgrad": "fp16", "wgrad": "bf16"})
    f.name                              # 'fprop=bf16,dgrad=fp16,wgrad=bf16'
    get_format(f.name) == f             # the string and the mapping are the same entry
    Plan({"fc1": {"fprop": "bf16", "dgrad": "fp16"}})   # a plan takes either shape

All roles equal gives the plain format (``per_role({"fprop": "bf16"}) is BF16``). A per-role
entry runs emulated (autocast has one dtype per region); the cost model prices each of its GEMMs
and tensors in its role's format (:mod:`adaprec.cost.model`); ``fallback`` is its ``input``
format.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from adaprec.numerics.elements import (BF16_E, E2M1, E2M3, E3M2, E4M3, E5M2, E8M0, FP16_E, FP32_E,
                                       ElementFormat)
from adaprec.numerics.recipes import (Block, PerTensor, Quantized, Recipe, Tiles, Unscaled,
                                      unpack)

__all__ = ["Format", "FORMATS", "get_format", "format_names", "register", "unregister",
           "per_role", "ROLES", "FP32", "BF16", "FP16", "FP8_E4M3", "FP8_E5M2", "Quantized"]

ROLES = ("input", "weight", "dgrad", "wgrad")  # the roles a per-role entry names (see per_role)


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
    # per-role formats (TE's fine-grained recipes; None: this format): the input's and the
    # weight's in fprop, the output gradient's and the input gradient's (dgrad), the weight
    # gradient's (wgrad, default: dgrad's). per_role() entries set input; registered ones don't.
    input: str | None = None
    weight: str | None = None
    dgrad: str | None = None
    wgrad: str | None = None

    def role_format(self, role: str, grad: bool = False) -> "Format":
        """The format of one tensor role: ``weight:*`` forward uses ``weight``; gradients use
        ``wgrad`` (of weights) or ``dgrad`` (everything else); unset roles use this format."""
        is_weight = role.startswith("weight")
        name = ((self.wgrad or self.dgrad) if is_weight else self.dgrad) if grad else (
            self.weight if is_weight else self.input)
        return get_format(name) if name else self

    @property
    def has_roles(self) -> bool:
        """Whether some tensor role uses another format (a HYBRID-style recipe)."""
        return any((self.input, self.weight, self.dgrad, self.wgrad))

    def roles(self) -> dict[str, str]:
        """``{input, weight, dgrad, wgrad: format name}``: the format of each GEMM operand role."""
        return {"input": self.role_format("input").name,
                "weight": self.role_format("weight").name,
                "dgrad": self.role_format("input", grad=True).name,
                "wgrad": self.role_format("weight", grad=True).name}

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
        def needs(f: Format) -> bool:
            r = f.recipe
            return (isinstance(r, Unscaled) and r.loss_scaling) or isinstance(r, PerTensor)
        # the gradients' formats decide (a per-role entry with fp16 dgrad needs the scaler)
        return any(needs(self.role_format(r, grad=True)) for r in ("input", "weight"))

    # -- values -------------------------------------------------------------------------------
    def round(self, x: torch.Tensor) -> torch.Tensor:
        """Round ``x`` to the element (RNE, no scaling) and return it in ``x``'s dtype."""
        return self.element.round(x)

    def fake_quantize(self, x: torch.Tensor, *, role: str = "input", axis: int = -1,
                      stochastic: bool = False, generator: torch.Generator | None = None,
                      compiled: bool = False) -> torch.Tensor:
        """fp32 tensor holding exactly the values this format stores for ``x``, scales applied.

        Blocks run over the last dimension (``axis`` picks another: the executor blocks a
        convolution's activations over channels); ``role="weight"`` selects a recipe's weight
        tiling (DeepSeek 128x128 blocks; a weight of more than two dimensions is blocked as
        ``(out, everything else)``). ``stochastic``: stochastic instead of nearest-even rounding
        (for gradients). Per-tensor recipes use this tensor's amax (delayed scaling needs the
        executor's history). ``compiled``: block formats round in one fused kernel where it
        applies (:mod:`adaprec.numerics.fused`; the same values)."""
        x = x.float()
        if self.scaling in ("block", "tiles"):
            if role.startswith("weight") and x.dim() > 2:
                flat = self.recipe.fake_quantize(x.reshape(x.shape[0], -1), self.element, role=role,
                                                 stochastic=stochastic, generator=generator)
                return flat.reshape(x.shape)
            if isinstance(self.recipe, Block):  # blocks over any axis, in place (no moved copy)
                return self.recipe.fake_quantize(x, self.element, role=role, stochastic=stochastic,
                                                 generator=generator, axis=axis, compiled=compiled)
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
        roles = ", ".join(f"{r} {getattr(self, r)}" for r in ROLES if getattr(self, r))
        return (f"{self.name}: {e.name} (1+{e.ebits}+{e.mbits} bits, max {e.max:g}), "
                f"{self.recipe.describe()}{', native' if self.native else ', emulated'}"
                f"{'; ' + roles if roles else ''}")

    def __str__(self) -> str:
        return self.name


FORMATS: dict[str, Format] = {}
_BY_ALIAS: dict[str, Format] = {}
_GENERATION = [0]  # bumped by every (un)registration: caches keyed on it never go stale


def registry_generation() -> int:
    """A number that changes whenever the registry does (a cache key for derived facts)."""
    return _GENERATION[0]


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
    for what in ("fallback", "input", "weight", "dgrad", "wgrad"):
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
    _GENERATION[0] += 1
    return fmt


def unregister(name: str) -> None:
    """Remove a registered format (tests that register their own clean up with it)."""
    fmt = FORMATS.pop(get_format(name).name)
    for k in [k for k, f in _BY_ALIAS.items() if f is fmt]:
        del _BY_ALIAS[k]
    _GENERATION[0] += 1


def format_names() -> list[str]:
    """Canonical names of every registered format."""
    return list(FORMATS)


_PER_ROLE: dict[str, Format] = {}  # per-role entries built so far, by canonical name


def per_role(roles: Mapping[str, str | Format]) -> Format:
    """The format of a per-role plan entry (module docstring): ``roles`` maps ``fprop`` (or
    ``input``/``weight``), ``dgrad`` and ``wgrad`` to plain formats. All roles equal: that
    plain format. The result is cached, so equal entries are one object."""
    unknown = sorted(set(roles) - {"fprop", *ROLES})
    if unknown:
        raise ValueError(f"unknown role(s) {unknown} in a per-role entry; roles are fprop "
                         f"(or input, weight), dgrad, wgrad")
    if "fprop" in roles and ({"input", "weight"} & set(roles)):
        raise ValueError("a per-role entry names fprop or input/weight, not both")
    fprop = roles.get("fprop", roles.get("input"))
    if fprop is None:
        raise ValueError(f"a per-role entry needs fprop (or input): got {dict(roles)}")
    f: dict[str, Format] = {"input": get_format(fprop)}
    f["weight"] = get_format(roles.get("weight", roles.get("fprop", f["input"])))
    f["dgrad"] = get_format(roles.get("dgrad", f["input"]))
    f["wgrad"] = get_format(roles.get("wgrad", f["dgrad"]))
    nested = [f"{r} {v.name}" for r, v in f.items() if v.has_roles]
    if nested:
        raise ValueError(f"per-role entry: {', '.join(nested)} has roles itself; name plain formats")
    if len({v.name for v in f.values()}) == 1:
        return f["input"]
    head = (f"fprop={f['input'].name}" if f["input"] == f["weight"]
            else f"input={f['input'].name},weight={f['weight'].name}")
    name = f"{head},dgrad={f['dgrad'].name},wgrad={f['wgrad'].name}"
    if name not in _PER_ROLE:
        base = f["input"]
        _PER_ROLE[name] = Format(name, base.element, base.recipe, native=False, fallback=base.name,
                                 input=base.name, weight=f["weight"].name, dgrad=f["dgrad"].name, wgrad=f["wgrad"].name)
    return _PER_ROLE[name]


def _parse_roles(spec: str) -> dict[str, str]:
    """``"fprop=bf16,dgrad=fp16"`` -> ``{"fprop": "bf16", "dgrad": "fp16"}``."""
    out = {}
    for part in spec.replace(" ", "").split(","):
        role, sep, fmt = part.partition("=")
        if not sep or not role or not fmt or role in out:
            raise ValueError(f"per-role entry {spec!r}: write role=format pairs separated by "
                             "commas, each role once (e.g. 'fprop=bf16,dgrad=fp16,wgrad=bf16')")
        out[role.lower()] = fmt
    return out


def get_format(spec: str | Format | torch.dtype | Mapping[str, str]) -> Format:
    """Parse a format from a name ("fp16", "half", "mxfp8", ...), a Format, a torch dtype, or
    a per-role entry (a ``{role: format}`` mapping or its ``"fprop=bf16,dgrad=fp16"`` string;
    :func:`per_role`)."""
    if isinstance(spec, Format):
        return spec
    if isinstance(spec, Mapping):
        return per_role(spec)
    if isinstance(spec, str) and "=" in spec:
        return per_role(_parse_roles(spec))
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
