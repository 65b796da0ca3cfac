"""Format emulation: round fp32 tensors to a narrower format in forward *and* backward.

Emulation computes in fp32 kernels on values that were rounded to the target format where the
hardware would hold them in that format (the approach of QPyTorch and of Kalamkar et al.'s
bf16 study). Rounding is round-to-nearest-even through torch's own dtype casts
(``x.to(fp16).to(fp32)``), so overflow to inf, subnormals (fp16 down to 2^-24) and flush to
zero follow the real format bit for bit.

16-bit formats round plainly. Block and tile formats (MX, NVFP4, DeepSeek fp8) round through
``Format.fake_quantize`` (:class:`FakeQuantFn`). Per-tensor fp8 formats round with a per-tensor scale in the style of
Transformer Engine: ``scale = (fp8_max / amax) / 2^margin``, rounded down to a power of two
so that scaling is exact, from this tensor's amax
(``current``) or from the maximum of an amax history (``delayed``), and values beyond the
format's range saturate to +-max (as TE's casts do, and as torch's e4m3fn cast does; e5m2's
torch cast would give inf). Inputs that are already inf or NaN stay inf or NaN, so a
non-finite gradient still reaches the loss scaler and skips the step.

A format may name other formats for some tensor roles (``Format.weight``/``dgrad``/``wgrad``,
e.g. ``fp8_hybrid``: TE's HYBRID recipe, e4m3 forward, e5m2 gradients); those roles round
through :class:`RoleRoundFn` with the role's own format and scaling state. Delayed-scaling histories
are updated on every use, evaluation forwards included.

:class:`Fp32Kernels` emulates torch's own 16-bit kernels instead of rounding around them: under
it, tensors really are fp16/bf16 (torch.autocast cast them by its own op lists), and the ops
whose 16-bit CPU kernels are slow (:data:`FP32_KERNEL_OPS`) run as fp32 kernels on the upcast
values with the result rounded back (RNE) -- what the native kernels compute (they accumulate
in fp32 too) at fp32 speed.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import (TorchDispatchMode, _disable_current_modes,
                                          _get_current_dispatch_mode_stack)

from adaprec.numerics.formats import Format
from adaprec.numerics.recipes import scaled_round, tensor_amax

__all__ = ["FP8Config", "AmaxState", "round_to", "round_scaled", "RoundFn", "ScaledRoundFn",
           "FakeQuantFn", "RoleRoundFn", "RoundedSoftmaxFn",
           "SCALINGS", "round_tree", "Fp32Kernels", "FP32_KERNEL_OPS", "fp32_kernels_paused"]

SCALINGS = ("current", "delayed")


@dataclass(frozen=True)
class FP8Config:
    """Per-tensor fp8 scaling.

    ``scaling``: ``current`` (amax of the tensor being cast) or ``delayed`` (max over the last
    ``amax_history_len`` amaxes of the same layer and tensor role, TE's default recipe);
    ``margin``: scale down by ``2^margin`` to leave headroom.
    """

    scaling: str = "delayed"
    amax_history_len: int = 16
    margin: int = 0

    def __post_init__(self):
        if self.scaling not in SCALINGS:
            raise ValueError(f"fp8 scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        if self.amax_history_len < 1:
            raise ValueError(f"amax_history_len must be >= 1, got {self.amax_history_len}")
        if self.margin < 0:
            raise ValueError(f"fp8 margin must be >= 0, got {self.margin}")


class AmaxState:
    """Scale of one tensor role of one layer (e.g. ``("fc1", "weight:weight")``).

    Everything stays on the device: computing a scale never syncs with the host. The history
    holds finite amaxes only (a non-finite amax must not poison the next ``len`` scales); an
    empty history (the first use) falls back to the current amax.
    """

    def __init__(self, config: FP8Config, fmt: Format, device: torch.device):
        self.config = config
        self.fmt_max = fmt.max
        self.history = torch.zeros(config.amax_history_len, dtype=torch.float32, device=device)
        self.pos = 0
        self.last_scale = torch.ones((), dtype=torch.float32, device=device)

    def state_dict(self) -> dict:
        """Tensors and plain values (``torch.load(weights_only=True)``-safe), copied."""
        return {"fmt_max": self.fmt_max, "pos": self.pos, "history": self.history.clone(),
                "last_scale": self.last_scale.clone()}

    @classmethod
    def from_state(cls, config: FP8Config, state: dict) -> "AmaxState":
        """The state :meth:`state_dict` captured, exactly (history length and device as saved)."""
        self = cls.__new__(cls)
        self.config, self.fmt_max, self.pos = config, float(state["fmt_max"]), int(state["pos"])
        self.history, self.last_scale = state["history"].clone(), state["last_scale"].clone()
        return self

    def scale_for(self, amax: torch.Tensor) -> torch.Tensor:
        """The scale for a tensor of amax ``amax``; records ``amax`` (delayed scaling)."""
        if self.config.scaling == "delayed":
            past = self.history.max()
            ref = torch.where(past > 0, past, amax)
            finite_amax = torch.where(torch.isfinite(amax), amax, torch.zeros_like(amax))
            self.history[self.pos % self.history.numel()] = finite_amax
            self.pos += 1
        else:
            ref = amax
        # a power of two: scaling and unscaling are exact in fp32, so the only rounding is the
        # fp8 cast itself (TE's power-of-two option; MXFP8 does the same)
        scale = torch.exp2(torch.floor(torch.log2(self.fmt_max / ref)) - self.config.margin)
        # amax 0 or non-finite: keep the previous scale (TE does the same)
        ok = torch.isfinite(scale) & (ref > 0)
        scale = torch.where(ok, scale, self.last_scale)
        self.last_scale = scale
        return scale


def round_to(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """RNE-round ``x`` to ``fmt`` and return it in ``x``'s dtype (no scaling)."""
    return x.to(fmt.dtype).to(x.dtype)


def round_scaled(x: torch.Tensor, fmt: Format, state: AmaxState, compiled: bool = False) -> torch.Tensor:
    """Scale, saturate and round ``x`` to fp8 ``fmt``, then unscale (values stay fp32);
    ``compiled``: in one fused kernel (the same values)."""
    amax = tensor_amax(x)
    # saturates to +-max; inf stays inf so found_inf still sees it, NaN stays NaN
    return scaled_round(x, fmt.element, state.scale_for(amax), amax, compiled=compiled)


class RoundFn(torch.autograd.Function):
    """Round to a 16-bit (unscaled) format in forward; round the gradient the same way unless
    ``round_grad`` is False (then the caller rounds it, e.g. in a tensor hook)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: Format, round_grad: bool = True) -> torch.Tensor:
        ctx.fmt, ctx.round_grad = fmt, round_grad
        return round_to(x, fmt)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (round_to(grad, ctx.fmt) if ctx.round_grad else grad), None, None


class ScaledRoundFn(torch.autograd.Function):
    """fp8 rounding with per-tensor scaling; the gradient has its own scaling state
    (``bwd=None``: passed through unrounded)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: Format, fwd: AmaxState,
                bwd: AmaxState | None, compiled: bool = False) -> torch.Tensor:
        ctx.fmt, ctx.bwd, ctx.compiled = fmt, bwd, compiled
        return round_scaled(x, fmt, fwd, compiled)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad if ctx.bwd is None else round_scaled(grad, ctx.fmt, ctx.bwd, ctx.compiled)
        return out, None, None, None, None


class FakeQuantFn(torch.autograd.Function):
    """Block or tile scaled rounding (``Format.fake_quantize``) in forward, and of the gradient
    unless ``grad_role`` is None (then the caller rounds it); ``stochastic``: the gradient is
    rounded stochastically; ``compiled``: fused kernels where they apply (the same values)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: Format, role: str, axis: int, grad_role: str | None,
                stochastic: bool = False, compiled: bool = False) -> torch.Tensor:
        ctx.fmt, ctx.axis, ctx.grad_role, ctx.stochastic = fmt, axis, grad_role, stochastic
        ctx.compiled = compiled
        return fmt.fake_quantize(x, role=role, axis=axis, compiled=compiled)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.grad_role is not None:
            grad = ctx.fmt.fake_quantize(grad, role=ctx.grad_role, axis=ctx.axis,
                                         stochastic=ctx.stochastic, compiled=ctx.compiled)
        return grad, None, None, None, None, None, None


class RoleRoundFn(torch.autograd.Function):
    """``fwd(x)`` in forward, ``bwd(grad)`` in backward (``bwd=None``: passed through): a
    tensor role whose gradient is held in another format (per-role formats, TE's HYBRID)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fwd: Callable, bwd: Callable | None) -> torch.Tensor:
        ctx.bwd = bwd
        return fwd(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (grad if ctx.bwd is None else ctx.bwd(grad)), None, None


class RoundedSoftmaxFn(torch.autograd.Function):
    """(log-)softmax whose output is rounded and whose backward uses that rounded output, as a
    native low-precision softmax saves its low-precision result; gradients rounded both ways."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, fmt: Format, log: bool) -> torch.Tensor:
        y = round_to(torch.log_softmax(x, dim) if log else torch.softmax(x, dim), fmt)
        ctx.save_for_backward(y)
        ctx.dim, ctx.fmt, ctx.log = dim, fmt, log
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        g = round_to(grad, ctx.fmt)
        if ctx.log:
            gx = torch.ops.aten._log_softmax_backward_data(g, y, ctx.dim, y.dtype)
        else:
            gx = torch.ops.aten._softmax_backward_data(g, y, ctx.dim, y.dtype)
        return round_to(gx, ctx.fmt), None, None, None


def round_tree(obj: Any, fn: Callable[[torch.Tensor, str], torch.Tensor], role: str = "") -> Any:
    """Apply ``fn(tensor, role)`` to every floating tensor in nested tuples/lists/dicts;
    ``role`` gets the position appended (``input:0``, ``input:1.x``, ...)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj, role) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        out = [round_tree(o, fn, f"{role}{'.' if ':' in role else ':'}{i}") for i, o in enumerate(obj)]
        return tuple(out) if isinstance(obj, tuple) else out
    if isinstance(obj, dict):
        return {k: round_tree(v, fn, f"{role}{'.' if ':' in role else ':'}{k}") for k, v in obj.items()}
    return obj


_aten = torch.ops.aten
_LOW = (torch.float16, torch.bfloat16)
# aten ops (as autograd dispatches them, forward and backward) whose fp16/bf16 CPU kernels are
# slow without AVX512-BF16/FP16 or AMX: GEMMs and convolutions (35-40x fp32 measured on AVX2),
# attention, and the elementwise ops measured >2x fp32 (GPT-style gelu, masked_fill). Their
# native kernels compute in fp32 and round once, so upcast + fp32 kernel + RNE cast back gives
# the same values (GEMMs: up to fp32 accumulation order; erf-gelu: torch's AVX512 16-bit kernel
# differs from fp32 + one rounding by <= 2^-16 (fp16, backward 2^-15) in <1 % of inputs; the
# emulation stays the machine-independent definition). Everything else runs torch's own
# 16-bit kernel: batch norm, layer norm, softmax, adds and activations are as fast as fp32.
FP32_KERNEL_OPS = frozenset({
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten.addbmm.default, _aten.mv.default, _aten.addmv.default,
    _aten.convolution.default, _aten.convolution_backward.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
    _aten.gelu.default, _aten.gelu_backward.default,
    _aten.masked_fill.Scalar, _aten.masked_fill.Tensor,
})
# in-place variants: computed out of place in fp32, written back with one rounding copy
_INPLACE = {_aten.masked_fill_.Scalar: _aten.masked_fill.Scalar,
            _aten.masked_fill_.Tensor: _aten.masked_fill.Tensor}


def _out_dtypes(func, args, kwargs) -> tuple:
    """Floating output dtypes the 16-bit kernel would give (from its meta kernel, cached by the
    input dtypes): a GEMM's output is its inputs' dtype, flash attention's logsumexp fp32."""
    key = (func, tuple(a.dtype if isinstance(a, torch.Tensor) else type(a) for a in args))
    got = _OUT_DTYPES.get(key)
    if got is None:
        meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
        out = func(*meta, **kwargs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        got = _OUT_DTYPES[key] = tuple(o.dtype if isinstance(o, torch.Tensor) else None for o in outs)
    return got


_OUT_DTYPES: dict[tuple, tuple] = {}


@contextmanager
def fp32_kernels_paused():
    """Run the body outside an active :class:`Fp32Kernels` (the monitor's own reductions: fp32
    ops it would pass through unchanged, each paying a Python dispatch). Modes beneath it on the
    stack are paused too; with no Fp32Kernels active this does nothing."""
    if not any(isinstance(m, Fp32Kernels) for m in _get_current_dispatch_mode_stack()):
        yield
        return
    with _disable_current_modes():
        yield


class Fp32Kernels(TorchDispatchMode):
    """While active, :data:`FP32_KERNEL_OPS` with fp16/bf16 operands compute in fp32 and return
    their 16-bit results rounded (RNE); other ops run as usual. Enter it around the forward
    (inside ``torch.autocast``) and around backward, whose kernels are 16-bit too."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inplace = _INPLACE.get(func)
        if func not in FP32_KERNEL_OPS and inplace is None:
            return func(*args, **kwargs)
        if not any(isinstance(a, torch.Tensor) and a.dtype in _LOW for a in args):
            return func(*args, **kwargs)
        if inplace is not None:
            target = args[0]
            if target.dtype not in _LOW:
                return func(*args, **kwargs)
            up = [a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW else a for a in args]
            return target.copy_(inplace(*up, **kwargs))
        dtypes = _out_dtypes(func, args, kwargs)
        up = [a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW else a for a in args]
        out = func(*up, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.to(dtypes[0]) if dtypes[0] is not None and out.dtype != dtypes[0] else out
        return type(out)(o.to(d) if isinstance(o, torch.Tensor) and d is not None and o.dtype != d else o
                         for o, d in zip(out, dtypes))
