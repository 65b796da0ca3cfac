"""Scaling recipes: how a tensor is scaled into an element format's range before rounding.

- :class:`Unscaled`: plain rounding (fp32, bf16; fp16 with ``loss_scaling=True``: the run's
  dynamic loss scaler keeps its gradients in range);
- :class:`PerTensor`: one power-of-two scale per tensor from the amax of this tensor
  (``current``) or of a history (``delayed``), Transformer Engine's fp8 recipe;
- :class:`Block`: one scale per block of ``size`` consecutive elements along the last
  dimension (the reduction dimension of a matmul's operands): E8M0 power-of-two scales for the
  OCP MX formats, E4M3 scales under an fp32 per-tensor scale for NVFP4;
- :class:`Tiles`: DeepSeek-V3's fine-grained fp8, an fp32 scale per 1x128 tile of activations
  and gradients and per 128x128 block of weights.

Scale rules follow the references bit for bit (tests compare with torchao 0.18):

- MX (OCP v1.0 "minimally supported" rule, torchao's ``ScaleCalculationMode.FLOOR``): shared
  exponent ``floor(log2(amax)) - emax(element)``, clamped to E8M0's [-127, 127]; a block
  whose amax is NaN gets the NaN scale (the whole block dequantizes to NaN). Values are divided
  by the scale (as torchao: by at least 2^-126, the smallest fp32 normal, so an all-zero or
  fp32-subnormal block stores scale 2^-127 but quantizes with 2^-126), clamped to +-max and
  rounded to nearest even.
- NVFP4 (torchao's ``nvfp4_quantize`` with a per-tensor scale): ``t = amax(tensor) / (448 * 6)``;
  block scale ``e4m3(clamp(amax(block) / 6 / t, 2^-6, 448))``; values times
  ``(1 / t) / block_scale``, clamped to +-6, rounded to e2m1; dequantized as
  ``q * (t * block_scale)``. An all-zero tensor uses ``t = 1`` (torchao divides 0 by 0).

Padding rule for a last dimension that is not a multiple of the block (or tile) size: the tensor
is padded with zeros to the next multiple and the padding dropped after rounding, so the last
block is the short remainder scaled by its own amax (zeros never change an amax).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adaprec.numerics.elements import E4M3, E8M0, ElementFormat
from adaprec.numerics.fused import block_kernel, fused_applies, scaled_kernel

__all__ = ["Recipe", "Unscaled", "PerTensor", "Block", "Tiles", "Quantized", "pow2_scale",
           "AMAX_MODES"]

AMAX_MODES = ("current", "delayed")
_F32_MIN_NORMAL = 2.0 ** -126


@dataclass(frozen=True)
class Quantized:
    """What :meth:`Format.quantize` returns: the stored data and its scales.

    ``data``: element values in torch's dtype where torch has one (fp32/bf16/fp16, float8_e4m3fn,
    float8_e5m2, float4_e2m1fn_x2 with two values per byte, first value in the low nibble),
    else uint8 bit patterns in the low bits (fp6). ``scale``: per-block scales
    (float8_e8m0fnu for MX, float8_e4m3fn for NVFP4, float32 for tiles), a 0-d float32 for a
    per-tensor recipe, None when unscaled. ``tensor_scale``: NVFP4's per-tensor fp32 scale.
    ``shape``: the original shape (data is zero-padded to whole blocks)."""

    data: torch.Tensor
    scale: torch.Tensor | None
    tensor_scale: torch.Tensor | None
    shape: tuple[int, ...]
    format: str


class Recipe:
    """Base class: ``fake_quantize(x, element)`` returns fp32 values the format holds for ``x``."""

    kind = "none"

    def fake_quantize(self, x: torch.Tensor, element: ElementFormat, *, role: str = "input",
                      stochastic: bool = False, generator: torch.Generator | None = None,
                      scale: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self, q: "Quantized", values: torch.Tensor) -> torch.Tensor:
        """fp32 values from the element ``values`` of ``q`` and its scales."""
        return values if q.scale is None else values * q.scale

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Unscaled(Recipe):
    """Round only. ``loss_scaling``: the format's range needs the dynamic loss scaler (fp16)."""

    loss_scaling: bool = False
    kind = "none"

    def fake_quantize(self, x, element, *, role="input", stochastic=False, generator=None, scale=None):
        return element.round(x, stochastic, generator)

    def quantize(self, x: torch.Tensor, element: ElementFormat, fmt_name: str) -> Quantized:
        return Quantized(_store(element.round(x.float()), element), None, None, tuple(x.shape), fmt_name)

    def describe(self) -> str:
        return "loss scaling" if self.loss_scaling else "none"


def pow2_scale(fmt_max: float, amax: torch.Tensor, margin: int = 0) -> torch.Tensor:
    """The largest power of two ``s`` with ``amax * s <= fmt_max``, divided by ``2^margin``
    (inf or NaN where ``amax`` is 0 or not finite: callers keep a previous scale there)."""
    return torch.exp2(torch.floor(torch.log2(fmt_max / amax)) - margin)


def tensor_amax(x: torch.Tensor) -> torch.Tensor:
    """``max |x|`` as a 0-d fp32 tensor (NaN if ``x`` has one, 0 if empty), in one reading pass
    (``x.abs().amax()`` writes an ``|x|`` temporary first)."""
    if not x.numel():
        return torch.zeros((), dtype=torch.float32, device=x.device)
    lo, hi = torch.aminmax(x.detach())
    return torch.maximum(hi, lo.neg()).float()


def block_amax(blocks: torch.Tensor, dim: int) -> torch.Tensor:
    """``max |blocks|`` over ``dim`` (kept), NaN where a block has one; as ``abs().amax(dim)``
    without the ``|x|`` temporary (``aminmax`` over a dimension is slower than the two)."""
    return torch.maximum(blocks.amax(dim, keepdim=True), blocks.amin(dim, keepdim=True).neg_())


def scaled_round(x: torch.Tensor, element: ElementFormat, scale: torch.Tensor,
                 amax: torch.Tensor | None = None, stochastic: bool = False,
                 generator: torch.Generator | None = None, compiled: bool = False) -> torch.Tensor:
    """``x * scale`` saturated to the element's +-max, rounded, divided by ``scale`` (a power
    of two: exact); inf in ``x`` stays inf (so a loss scaler still sees it), NaN stays NaN.
    ``amax``: ``x``'s, if known: on the CPU a finite one skips the inf pass. ``compiled``: one
    fused kernel (:mod:`adaprec.numerics.fused`; the same values) unless stochastic."""
    if compiled and not stochastic and x.numel() > 1 and x.dtype == torch.float32:
        return scaled_kernel(element)(x, scale)
    y = torch.mul(x, scale)
    if stochastic:
        y = element.round(y.clamp_(-element.max, element.max), True, generator)
    else:
        element.round_(y, x, saturate=True)
    y.div_(scale)
    if x.device.type == "cpu" and amax is not None and bool(torch.isfinite(amax)):
        return y  # no inf in x (reading a CPU tensor costs no sync)
    return torch.where(torch.isinf(x), x, y)


@dataclass(frozen=True)
class PerTensor(Recipe):
    """One power-of-two scale per tensor (see :mod:`adaprec.numerics.emulation` for the
    executor's amax histories). ``fake_quantize`` alone uses the current amax."""

    amax: str = "delayed"
    history: int = 16
    margin: int = 0
    kind = "per_tensor"

    def __post_init__(self):
        if self.amax not in AMAX_MODES:
            raise ValueError(f"per-tensor amax must be one of {', '.join(AMAX_MODES)}, got {self.amax!r}")

    def fake_quantize(self, x, element, *, role="input", stochastic=False, generator=None, scale=None):
        amax = None
        if scale is None:
            amax = tensor_amax(x)
            scale = pow2_scale(element.max, amax, self.margin)
            scale = torch.where(torch.isfinite(scale) & (amax > 0), scale, torch.ones_like(scale))
        return scaled_round(x, element, scale, amax, stochastic, generator)

    def quantize(self, x: torch.Tensor, element: ElementFormat, fmt_name: str) -> Quantized:
        amax = tensor_amax(x)
        scale = pow2_scale(element.max, amax, self.margin)
        scale = torch.where(torch.isfinite(scale) & (amax > 0), scale, torch.ones_like(scale))
        data = element.round((x.float() * scale).clamp_(-element.max, element.max))
        return Quantized(_store(data, element), 1.0 / scale, None, tuple(x.shape), fmt_name)

    def describe(self) -> str:
        return f"per-tensor {self.amax} amax" + (f" (history {self.history})" if self.amax == "delayed" else "")


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` as (..., n_blocks, size) over its last dimension, zero-padded (the padding rule)."""
    if x.dim() == 0:
        x = x.reshape(1)
    pad = (-x.shape[-1]) % size
    if pad:
        x = F.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], x.shape[-1] // size, size)


def _unblock(y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    y = y.reshape(*y.shape[:-2], -1)
    n = shape[-1] if len(shape) else 1
    return y[..., :n].reshape(shape)


@dataclass(frozen=True)
class Block(Recipe):
    """Block scaling over the last dimension (module docstring: MX and NVFP4 rules)."""

    size: int = 32
    scale_element: ElementFormat = E8M0
    tensor_scale: bool = False
    kind = "block"

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"block size must be >= 1, got {self.size}")
        if self.scale_element not in (E8M0, E4M3):
            raise ValueError(f"block scales are e8m0 (MX) or e4m3 (NVFP4), not {self.scale_element.name}")
        if self.tensor_scale and self.scale_element != E4M3:
            raise ValueError("a per-tensor scale goes with e4m3 block scales (NVFP4)")

    # scales: (divisor or multiplier applied before rounding, dequantization multiplier, codes)
    def _mx_scales(self, blocks: torch.Tensor, element: ElementFormat, dim: int = -1):
        amax = block_amax(blocks, dim).float()
        exp = ((amax.view(torch.int32) >> 23) & 0xFF) - 127 - element.emax
        biased = exp.clamp_(-127, 128) + 127
        biased = torch.where(torch.isnan(amax), torch.full_like(biased, 255), biased)
        # quantize with 1 / max(scale, 2^-126) (torchao's rule); 255 (NaN) gives inf -> 0 * ...
        div = (biased << 23).view(torch.float32).clamp_(min=_F32_MIN_NORMAL)
        deq = torch.ldexp(torch.ones_like(amax), biased - 127)
        deq = torch.where(biased == 255, torch.full_like(deq, float("nan")), deq)
        return 1.0 / div, deq, biased.to(torch.uint8).view(torch.float8_e8m0fnu)

    def _nv_scales(self, blocks: torch.Tensor, element: ElementFormat, tensor_scale, dim: int = -1):
        amax = block_amax(blocks, dim).float()
        block_scale = amax / element.max
        if not self.tensor_scale:
            s8 = block_scale.clamp(min=E4M3.smallest_normal, max=E4M3.max).to(torch.float8_e4m3fn)
            s32 = s8.float()
            return 1.0 / s32, s32, s8, None
        t = tensor_scale
        if t is None:
            tamax = tensor_amax(blocks)
            t = tamax / (E4M3.max * element.max)
            t = torch.where(tamax == 0, torch.ones_like(t), t)
        s8 = (block_scale / t).clamp(min=E4M3.smallest_normal, max=E4M3.max).to(torch.float8_e4m3fn)
        s32 = s8.float()
        return (1.0 / t) / s32, t * s32, s8, t

    def _scales(self, blocks: torch.Tensor, element: ElementFormat, scale, dim: int = -1):
        if self.scale_element == E8M0:
            return (*self._mx_scales(blocks, element, dim), None)
        return self._nv_scales(blocks, element, scale, dim)

    def _scaled(self, x: torch.Tensor, element: ElementFormat, scale):
        blocks = _blocks(x.float(), self.size)
        return (blocks, *self._scales(blocks, element, scale))

    def fake_quantize(self, x, element, *, role="input", stochastic=False, generator=None, scale=None,
                      axis: int = -1, compiled: bool = False):
        """Blocks run over ``axis`` (default the last dimension). Where its length is a whole
        number of blocks, the blocks are a view of ``x`` (no padding, no moved copy) and the
        result keeps ``x``'s layout; otherwise the padding rule applies (module docstring).
        ``compiled``: one fused kernel where it applies (:mod:`adaprec.numerics.fused`: same
        values; whole blocks, nearest rounding; the result is contiguous)."""
        x = x.float()
        if compiled and scale is None and fused_applies(self, x, axis, stochastic):
            return block_kernel(self.size, self.scale_element, self.tensor_scale, element)(x, axis)
        if x.dim() and x.shape[axis] % self.size == 0:
            ax = axis % x.dim()
            blocks = x.reshape(*x.shape[:ax], -1, self.size, *x.shape[ax + 1:])
            mul, deq, _, _ = self._scales(blocks, element, scale, dim=ax + 1)
            y = torch.mul(blocks, mul)
            if stochastic:
                y = element.round(y.clamp_(-element.max, element.max), True, generator)
            else:
                element.round_(y, blocks, saturate=True)
            return y.mul_(deq).reshape(x.shape)
        if axis not in (-1, x.dim() - 1) and x.dim() > 1:
            moved = self.fake_quantize(x.movedim(axis, -1), element, role=role, stochastic=stochastic,
                                       generator=generator, scale=scale)
            return moved.movedim(-1, axis)
        blocks, mul, deq, _, _ = self._scaled(x, element, scale)
        y = (blocks * mul).clamp_(-element.max, element.max)
        y = element.round(y, stochastic, generator).mul_(deq)
        return _unblock(y, x.shape)

    def quantize(self, x: torch.Tensor, element: ElementFormat, fmt_name: str) -> Quantized:
        blocks, mul, _, codes, t = self._scaled(x, element, None)
        y = element.round((blocks * mul).clamp_(-element.max, element.max))
        data = y.reshape(*y.shape[:-2], -1)
        return Quantized(_store(data, element), codes.squeeze(-1), t, tuple(x.shape), fmt_name)

    def dequantize(self, q, values):
        s = q.scale.float()  # e8m0 0xFF converts to NaN
        if q.tensor_scale is not None:
            s = q.tensor_scale * s
        y = values.reshape(*values.shape[:-1], -1, self.size) * s.unsqueeze(-1)
        return _unblock(y, torch.Size(q.shape))

    def describe(self) -> str:
        extra = " + per-tensor fp32" if self.tensor_scale else ""
        return f"block {self.size} ({self.scale_element.name} scales{extra})"


@dataclass(frozen=True)
class Tiles(Recipe):
    """DeepSeek-V3 fine-grained scaling: an fp32 scale ``amax / max`` per tile of
    ``activation`` shape (1 x 128: one row, 128 elements of the last dimension) for inputs,
    outputs and gradients, per ``weight`` block (128 x 128 over the last two dimensions)
    for weights (``role="weight"``). An all-zero tile uses scale 1."""

    activation: tuple[int, int] = (1, 128)
    weight: tuple[int, int] = (128, 128)
    kind = "tiles"

    def _tile(self, role: str) -> tuple[int, int]:
        return tuple(self.weight if role.startswith("weight") else self.activation)

    def _scaled(self, x: torch.Tensor, element: ElementFormat, role: str):
        rows, cols = self._tile(role)
        x32 = x.float()
        if x32.dim() < 2 or rows == 1:
            blocks = _blocks(x32, cols)
            amax = blocks.abs().amax(-1, keepdim=True)
        else:
            m = x32.reshape(-1, *x32.shape[-2:])
            m = F.pad(m, (0, (-m.shape[-1]) % cols, 0, (-m.shape[-2]) % rows))
            b, r, c = m.shape
            blocks = m.reshape(b, r // rows, rows, c // cols, cols)
            amax = blocks.abs().amax(dim=(2, 4), keepdim=True)
        s = amax / element.max
        return blocks, torch.where(amax == 0, torch.ones_like(s), s)

    def _restore(self, y: torch.Tensor, shape: torch.Size, role: str) -> torch.Tensor:
        rows, cols = self._tile(role)
        if len(shape) < 2 or rows == 1:
            return _unblock(y, shape)
        b, nr, _, nc, _ = y.shape
        return y.reshape(b, nr * rows, nc * cols)[:, :shape[-2], :shape[-1]].reshape(shape)

    def fake_quantize(self, x, element, *, role="input", stochastic=False, generator=None, scale=None):
        blocks, s = self._scaled(x, element, role)
        y = (blocks / s).clamp_(-element.max, element.max)
        y = element.round(y, stochastic, generator).mul_(s)
        return self._restore(y, x.shape, role).to(x.dtype)

    def quantize(self, x: torch.Tensor, element: ElementFormat, fmt_name: str,
                 role: str = "input") -> Quantized:
        blocks, s = self._scaled(x, element, role)
        y = element.round((blocks / s).clamp_(-element.max, element.max))
        data = y.reshape(*y.shape[:-2], -1) if y.dim() < 5 else y
        return Quantized(_store(data, element), s, None, tuple(x.shape), fmt_name)

    def dequantize(self, q, values):
        shape = torch.Size(q.shape)
        if values.dim() == 5:
            return self._restore(values * q.scale, shape, "weight")
        cols = self.activation[1]
        return _unblock(values.reshape(*values.shape[:-1], -1, cols) * q.scale, shape)

    def describe(self) -> str:
        a, w = self.activation, self.weight
        return f"tiles {a[0]}x{a[1]} activations, {w[0]}x{w[1]} weights (fp32 scales)"


def _store(values: torch.Tensor, element: ElementFormat) -> torch.Tensor:
    """Element values in torch's dtype where there is one, fp4 packed two per byte, else codes."""
    if element.dtype is not None:
        return values.to(element.dtype)
    codes = element.encode(values)
    if element.bits == 4:
        if codes.shape[-1] % 2:
            codes = F.pad(codes, (0, 1))
        packed = codes[..., ::2] | (codes[..., 1::2] << 4)
        return packed.view(torch.float4_e2m1fn_x2)
    return codes


def unpack(q: Quantized, element: ElementFormat) -> torch.Tensor:
    """fp32 element values of ``q.data`` (no scales applied)."""
    d = q.data
    if d.dtype == torch.float4_e2m1fn_x2:
        b = d.view(torch.uint8)
        codes = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(*b.shape[:-1], -1)
        return element.decode(codes)
    if d.dtype == torch.uint8:
        return element.decode(d)
    return d.float()

