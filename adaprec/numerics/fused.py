"""Block and per-tensor rounding as one fused kernel (``torch.compile``): the same values as the
eager path.

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

Per-tensor fp8 (:func:`scaled_kernel`) fuses the scaled rounding the same way; its amax and the
delayed-scaling update stay eager (a dozen 0-d ops a call, which bound its speed-up).

Use: ``Block.fake_quantize(..., compiled=True)`` / ``scaled_round(..., compiled=True)`` (the emulated executor's
``compiled_rounding`` option, ``emulation.compiled_rounding`` in the run config). It applies to
tensors whose blocked dimension (the last, or a convolution's channels) is a whole number of
blocks, rounded to nearest (a non-contiguous one is copied first; the result is contiguous);
every other case runs the eager path. The first call of each format
compiles (seconds; cached on disk by inductor).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
from torch.utils._python_dispatch import _disable_current_modes, _len_torch_dispatch_stack

from adaprec.numerics.elements import E4M3, E8M0, ElementFormat

__all__ = ["round_nearest_float", "block_kernel", "scaled_kernel", "fused_applies"]

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


def _mx(blocks: torch.Tensor, element: ElementFormat, dim: int) -> tuple[torch.Tensor, ...]:
    # Block._mx_scales over ``dim``, with the powers of two built from their bits (ldexp is a
    # libm call per vector in the generated code)
    amax = torch.maximum(blocks.amax(dim, keepdim=True), blocks.amin(dim, keepdim=True).neg())
    exp = ((amax.view(torch.int32) >> 23) & 0xFF) - 127 - element.emax
    biased = exp.clamp(-127, 128) + 127
    biased = torch.where(torch.isnan(amax), torch.full_like(biased, 255), biased)
    pow2 = (biased << 23).view(torch.float32)
    mul = 1.0 / pow2.clamp(min=_F32_MIN_NORMAL)
    deq = torch.where(biased == 0, torch.full_like(pow2, 2.0 ** -127), pow2)
    deq = torch.where(biased == 255, torch.full_like(pow2, float("nan")), deq)
    y = (blocks * mul).clamp(-element.max, element.max)
    return round_nearest_float(y, element, blocks) * deq, mul, deq


def _nv(blocks: torch.Tensor, element: ElementFormat, dim: int) -> tuple[torch.Tensor, ...]:
    # Block._nv_scales over ``dim`` with the per-tensor scale; the e4m3 block scale is rounded
    # by the same float-only rule (it is clamped into e4m3's normal range first)
    amax = torch.maximum(blocks.amax(dim, keepdim=True), blocks.amin(dim, keepdim=True).neg())
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
    return (not stochastic and x.dim() > 0 and -x.dim() <= axis < x.dim()
            and x.shape[axis] % recipe.size == 0 and x.numel() > 0)


@lru_cache(maxsize=None)
def block_kernel(size: int, scale_element: ElementFormat, tensor_scale: bool,
                 element: ElementFormat) -> Callable[[torch.Tensor], torch.Tensor]:
    """The compiled fake-quantize of one block recipe and element: ``fn(x, axis=-1)`` for an
    fp32 ``x`` whose ``axis`` is a multiple of ``size`` (any shape: one kernel for blocks over
    the last dimension, one for blocks over another, such as a convolution's channels)."""
    rule = _mx if scale_element == E8M0 else _nv
    if scale_element != E8M0 and not tensor_scale:
        raise ValueError("the compiled kernel covers MX (e8m0) and NVFP4 (e4m3 + per-tensor) blocks")

    return _BlockKernel(rule, element, size)


@lru_cache(maxsize=None)
def scaled_kernel(element: ElementFormat) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The compiled per-tensor scaled rounding (:func:`~adaprec.numerics.recipes.scaled_round`
    with nearest rounding): ``fn(x, scale)`` for an fp32 ``x`` of any shape and a 0-d scale."""
    return _ScaledKernel(element)


class _Direct:
    """A compiled function whose calls after the first (per device) run inductor's graph
    directly, without dynamo's guard check and frame wrapper (~0.1 ms a call, ~140 calls a GPT
    step). That is safe because every call has the inputs the guards would check: plain
    contiguous fp32 tensors of fixed rank, not requiring grad, on that device, outside every
    mode; only the ``dynamic`` dimensions of the first tensor vary (compiled as symbols, each
    its own: a graph that gave two of them one symbol, or specialized one, is not called
    directly)."""

    def __init__(self, fn: Callable, dynamic: tuple[int, ...] = (0,)):
        self._dynamic = dynamic
        self._direct: dict[str, tuple[Callable, list]] = {}
        self._compiled = torch.compile(fn, fullgraph=True, backend=self._capture)

    def _capture(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx  # heavy: only when compiling
        fn = compile_fx(gm, example_inputs)
        # graph inputs, in the compiled function's argument order: the tensors (their fake
        # values carry the symbolic shapes) and the symbolic sizes
        values = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if not tensors:
            return fn
        first = tensors[0].shape
        dims = {}  # symbol of each dynamic dimension of the first tensor -> that dimension
        for d in self._dynamic:
            if isinstance(first[d], torch.SymInt):
                dims.setdefault(first[d].node.expr, d)
        kinds, index = [], 0
        for v in values:
            if isinstance(v, torch.Tensor):
                kinds.append(index)
                index += 1
            else:
                expr = v.node.expr if isinstance(v, torch.SymInt) else None
                kinds.append(("dim", dims[expr]) if expr in dims else "other")
        if len(dims) == len(self._dynamic) and "other" not in kinds:
            self._direct[str(example_inputs[kinds.index(0)].device)] = (fn, kinds)
        return fn

    def __call__(self, *tensors: torch.Tensor):
        """The compiled function's outputs (a tuple or list: index them)."""
        with torch._C.DisableTorchFunction():
            if _len_torch_dispatch_stack():
                with _disable_current_modes():
                    return self._run(tensors)
            return self._run(tensors)

    def _run(self, tensors):
        shape = tensors[0].shape
        sizes = [shape[d] for d in self._dynamic]
        varying = min(sizes) > 1  # a size-1 dimension is its own specialization
        direct = self._direct.get(str(tensors[0].device)) if varying else None
        if direct is not None:
            fn, kinds = direct
            return fn(*[tensors[k] if isinstance(k, int) else shape[k[1]] for k in kinds])
        # dynamo's guards see plain tensors (not views: it would guard on the base's rank and
        # strides); the direct call needs only the sizes and strides inductor asserts
        tensors = [_plain(t, tuple(t.shape)) for t in tensors]
        if varying:  # compile for any size of the dynamic dimensions
            for d in self._dynamic:
                torch._dynamo.mark_dynamic(tensors[0], d)
        return self._compiled(*tensors)


def _plain(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A plain tensor of ``shape`` on contiguous ``x``'s storage (not a view, not a Parameter,
    no autograd history)."""
    return torch.empty(0, dtype=x.dtype, device=x.device).set_(x.untyped_storage(), x.storage_offset(), shape)


class _ScaledKernel:
    """Per-tensor scaled rounding as one kernel (see :func:`scaled_kernel`)."""

    def __init__(self, element: ElementFormat):
        def kernel(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            y = (x * scale).clamp(-element.max, element.max)
            r = round_nearest_float(y, element, x) / scale
            # inf stays inf (the loss scaler sees it); |x| == inf is isinf as a vector compare
            # (inductor emits isinf as a scalar loop: the kernel ran ~1.5x slower)
            return (torch.where(x.abs() == float("inf"), x, r),)
        self._kernel = _Direct(kernel)

    def __call__(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        return self._kernel(x.view(-1), scale.detach().float().reshape(()))[0].view(x.shape)


class _BlockKernel:
    """One block format's compiled kernels (see :func:`block_kernel`): blocks over the last
    dimension of ``(n, size)`` rows, or over the middle one of ``(n, size, inner)``."""

    def __init__(self, rule, element: ElementFormat, size: int):
        self.size = size

        def rows(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
            # the per-block scales are outputs too, so inductor stores them once per block
            # instead of recomputing their ~30 scalar ops for every 8-wide vector (~1.5x faster)
            return rule(blocks, element, -1)

        def inner(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return rule(blocks, element, 1)
        self._rows = _Direct(rows)
        self._inner = _Direct(inner, dynamic=(0, 2))

    def __call__(self, x: torch.Tensor, axis: int = -1) -> torch.Tensor:
        """``x`` rounded in blocks over ``axis``, in the layout the eager path gives: a
        channels-last ``x`` (blocked dimension innermost in memory) stays channels-last (the
        layout decides the accumulation order of the convolutions and norms downstream)."""
        axis %= x.dim()
        moved = x.movedim(axis, -1)
        if not x.is_contiguous() and moved.is_contiguous():  # the blocks are rows in memory
            return self._rows(moved.view(-1, self.size))[0].view(moved.shape).movedim(-1, axis)
        x = x.contiguous()  # one copy (a transposed attention input) is cheaper than eager
        inner = x.shape[axis + 1:].numel()
        if inner == 1:
            return self._rows(x.view(-1, self.size))[0].view(x.shape)
        return self._inner(x.view(-1, self.size, inner))[0].view(x.shape)
