"""Block rounding as one fused kernel (``torch.compile``): the same values as the eager path.

The eager :meth:`~adaprec.numerics.recipes.Block.fake_quantize` makes about ten passes over a
tensor (amax, scale, clamp, exponent bits, magic add and subtract, sign, unscale); on a CPU
those passes are memory-bound and cost more than the GEMMs of a small model. Compiled by
inductor, the block amax, the scales and the rounding of each block happen in one loop.

Inductor vectorizes float arithmetic but not bit casts, so the element rounding here uses no
integer bit tricks: round to nearest even of a value already clamped to ``+-max`` is

* Veltkamp's split, ``t = y * (2^(23 - mbits) + 1); t - (t - y)``, for ``|y|`` at or above the
  smallest normal (it keeps the top ``mbits + 1`` significand bits, ties to even, under fp32
  round-to-nearest-even arithmetic);
* the magic add ``(y + M) - M`` with ``M = 1.5 * 2^(emin + 23 - mbits)`` below it (a fixed
  spacing: the subnormals);

both bit-identical to :func:`~adaprec.numerics.elements.round_nearest_` on every fp32 value
(tests/test_fused_rounding.py checks whole binades of every <= 8-bit element). The per-block
scales follow :class:`~adaprec.numerics.recipes.Block`'s rules op for op, so the compiled
result equals the eager one bit for bit (same tests, all the edge cases of the torchao
comparison). Inductor's C++ build keeps IEEE semantics here (no reassociation, no FMA
contraction), which the equality tests would catch.

Use: ``Block.fake_quantize(..., compiled=True)`` (the emulated executor's
``compiled_rounding`` option, ``emulation.compiled_rounding`` in the run config). It applies to
tensors blocked over their last dimension whose length is a whole number of blocks, rounded to
nearest (a non-contiguous one is copied first; the result is contiguous); every other case
runs the eager path. The first call of each format
compiles (seconds; cached on disk by inductor).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
from torch.utils._python_dispatch import _disable_current_modes, _len_torch_dispatch_stack

from adaprec.numerics.elements import E4M3, E8M0, ElementFormat

__all__ = ["round_nearest_float", "block_kernel", "fused_applies"]

_F32_MIN_NORMAL = 2.0 ** -126


def round_nearest_float(y: torch.Tensor, element: ElementFormat, sign: torch.Tensor) -> torch.Tensor:
    """``y`` (fp32, already within ``+-element.max``) rounded to nearest even on ``element``'s
    grid with float operations only (module docstring); zeros take the signs of ``sign``."""
    split = float(2 ** (23 - element.mbits) + 1)
    magic = 1.5 * 2.0 ** (element.emin + 23 - element.mbits)
    t = y * split
    normal = t - (t - y)
    sub = (y + magic) - magic
    return torch.where(y.abs() < element.smallest_normal, sub, normal).copysign(sign)


def _mx(blocks: torch.Tensor, element: ElementFormat) -> tuple[torch.Tensor, ...]:
    # Block._mx_scales, with the powers of two built from their bits (ldexp is a libm call
    # per vector in the generated code)
    amax = torch.maximum(blocks.amax(-1, keepdim=True), blocks.amin(-1, keepdim=True).neg())
    exp = ((amax.view(torch.int32) >> 23) & 0xFF) - 127 - element.emax
    biased = exp.clamp(-127, 128) + 127
    biased = torch.where(torch.isnan(amax), torch.full_like(biased, 255), biased)
    pow2 = (biased << 23).view(torch.float32)
    mul = 1.0 / pow2.clamp(min=_F32_MIN_NORMAL)
    deq = torch.where(biased == 0, torch.full_like(pow2, 2.0 ** -127), pow2)
    deq = torch.where(biased == 255, torch.full_like(pow2, float("nan")), deq)
    y = (blocks * mul).clamp(-element.max, element.max)
    return round_nearest_float(y, element, blocks) * deq, mul, deq


def _nv(blocks: torch.Tensor, element: ElementFormat) -> tuple[torch.Tensor, ...]:
    # Block._nv_scales with the per-tensor scale; the e4m3 block scale is rounded by the same
    # float-only rule (it is clamped into e4m3's normal range first)
    amax = torch.maximum(blocks.amax(-1, keepdim=True), blocks.amin(-1, keepdim=True).neg())
    tamax = torch.maximum(blocks.amax(), blocks.amin().neg())
    t = tamax / (E4M3.max * element.max)
    t = torch.where(tamax == 0, torch.ones_like(t), t)
    s = (amax / element.max / t).clamp(min=E4M3.smallest_normal, max=E4M3.max)
    s32 = round_nearest_float(s, E4M3, s)
    mul, deq = (1.0 / t) / s32, t * s32
    y = (blocks * mul).clamp(-element.max, element.max)
    return round_nearest_float(y, element, blocks) * deq, mul, deq


def fused_applies(recipe, x: torch.Tensor, axis: int, stochastic: bool) -> bool:
    """Whether the compiled kernel handles this call (else the eager path runs)."""
    return (not stochastic and x.dim() > 0 and axis in (-1, x.dim() - 1)
            and x.shape[-1] % recipe.size == 0 and x.numel() > 0)


@lru_cache(maxsize=None)
def block_kernel(size: int, scale_element: ElementFormat, tensor_scale: bool,
                 element: ElementFormat) -> Callable[[torch.Tensor], torch.Tensor]:
    """The compiled fake-quantize of one block recipe and element: ``fn(x)`` for an fp32 ``x``
    whose last dimension is a multiple of ``size`` (any shape: one kernel)."""
    rule = _mx if scale_element == E8M0 else _nv
    if scale_element != E8M0 and not tensor_scale:
        raise ValueError("the compiled kernel covers MX (e8m0) and NVFP4 (e4m3 + per-tensor) blocks")

    return _BlockKernel(rule, element, size)


class _BlockKernel:
    """One format's compiled kernel. The first call of a device goes through ``torch.compile``
    (dynamo traces it, inductor builds it for any number of blocks); later calls run inductor's
    compiled graph directly, without dynamo's guard check and frame wrapper (~0.1 ms a call,
    ~140 calls a GPT step). That is safe because every call has the shape the guards would
    check: one plain contiguous fp32 (blocks, size) tensor, not requiring grad, on that device,
    outside every mode."""

    def __init__(self, rule, element: ElementFormat, size: int):
        self.size = size
        self._direct: dict[str, tuple[Callable, list[bool]]] = {}

        def kernel(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
            # the per-block scales are outputs too, so inductor stores them once per block
            # instead of recomputing their ~30 scalar ops for every 8-wide vector (~1.5x faster)
            return rule(blocks, element)
        self._compiled = torch.compile(kernel, fullgraph=True, backend=self._capture)

    def _capture(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx  # heavy: only when compiling
        fn = compile_fx(gm, example_inputs)
        sizes = [isinstance(e, torch.SymInt) for e in example_inputs]
        tensors = [e for e in example_inputs if isinstance(e, torch.Tensor)]
        if len(tensors) == 1 and sizes.count(True) == 1 and len(sizes) == 2:  # (blocks, its dim 0)
            self._direct[str(tensors[0].device)] = (fn, sizes)
        return fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # one copy (a transposed attention input) is cheaper than eager
        # the kernel sees a plain 2-D tensor of blocks on x's storage (not a view: dynamo would
        # guard on the base's rank and strides; not a Parameter), outside any torch-function or
        # dispatch mode (the executor's op rounding, Fp32Kernels: the kernel's ops are fp32 ops
        # those modes pass through unchanged)
        n = x.numel() // self.size
        blocks = torch.empty(0, dtype=x.dtype, device=x.device).set_(
            x.untyped_storage(), x.storage_offset(), (n, self.size))
        with torch._C.DisableTorchFunction():
            if _len_torch_dispatch_stack():
                with _disable_current_modes():
                    return self._run(blocks, n).view(x.shape)
            return self._run(blocks, n).view(x.shape)

    def _run(self, blocks: torch.Tensor, n: int) -> torch.Tensor:
        direct = self._direct.get(str(blocks.device)) if n > 1 else None
        if direct is not None:
            fn, sizes = direct
            return fn(*[n if is_size else blocks for is_size in sizes])[0]
        if n > 1:  # compile for any number of blocks (one block is its own specialization)
            torch._dynamo.mark_dynamic(blocks, 0)
        return self._compiled(blocks)[0]
