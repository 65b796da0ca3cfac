"""Emulated and auto executors: a layer's format applied by rounding fp32 values.

:class:`EmulatedExecutor` runs every layer in fp32 kernels. For a layer in a narrower format
its floating inputs and its own parameters are rounded to the format before the layer's ops,
its floating outputs after them, and the gradients flowing back through those tensors are
rounded the same way (:class:`~adaprec.numerics.emulation.RoundFn`). Matmuls and convolutions thus see
format-exact operands and accumulate in fp32, as tensor cores and AMX do, and the rounded output
matches what a native kernel writes. Parameters are rounded by shadowing them in the module's
``__dict__`` for the duration of its forward, so the fp32 master stays untouched and its
gradient arrives (rounded) in ``param.grad`` in fp32.

Granularity: a layer that is a stock ``torch.nn`` module is one op, so rounding at its boundary
is exact. A custom layer (``adaprec_layer = True`` or a class outside ``torch.nn``, such as an
attention core calling ``torch.matmul`` and ``softmax``) additionally gets op-level rounding: a
``TorchFunctionMode``, active only while that layer's own ops run, rounds the outputs of its
matmul/conv/linear, softmax, dropout and elementwise add/sub/mul/div calls (softmax backward then
uses the rounded softmax output, as the native kernel uses its low-precision result). Ops
outside every layer (residual adds, pooling, the loss) run in fp32. fp8 layers use the same
boundaries, each tensor role (``input:0``, ``weight:weight``, ``output``, ``grad_output``, ...)
with its own scaling state in ``executor.fp8_states``.

Already-rounded inputs are not rounded again: a layer's output is tagged with its format and
the tensor's version counter (passed through ReLU/MaxPool/Flatten/Identity modules, which keep
values on the grid), and the next layer in the same format skips that input (its gradient is
rounded by the producer's output rounding, so numerics are unchanged).

:class:`AutoExecutor` decides per layer: native autocast where a capability probe says the
device computes that format fast (bf16 on an AMX/AVX512-BF16 CPU, fp16/bf16 on CUDA), emulation
where it does not (fp16 on a CPU without AVX512-FP16/AMX-FP16, where convolution training takes
minutes per step) and always for fp8. ``executor.choices`` and a log line per layer show it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from adaprec.numerics.emulation import (AmaxState, FakeQuantFn, FP8Config, RoundedSoftmaxFn, RoundFn,
                                       ScaledRoundFn, round_scaled, round_to, round_tree)
from adaprec.runtime.executors.native import cast_floating
from adaprec.numerics.formats import FP32, Format, get_format
from adaprec.runtime.plan import Plan

__all__ = ["EmulatedExecutor", "AutoExecutor", "native_is_fast", "layer_family"]

log = logging.getLogger("adaprec.runtime.executors.native")

_LOW_DTYPES = (torch.float16, torch.bfloat16)
_TAG = "_adaprec_rounded"

# ops whose outputs a native low-precision region would hold in the layer's format
_ROUNDED_OPS = frozenset({
    torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
    torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.addmm, torch.Tensor.addmm,
    torch.baddbmm, torch.Tensor.baddbmm, torch.addbmm, torch.einsum, F.linear, F.bilinear,
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    F.scaled_dot_product_attention,
    torch.softmax, torch.Tensor.softmax, F.softmax, torch.log_softmax, torch.Tensor.log_softmax,
    F.log_softmax, F.dropout,
    torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__,
    torch.sub, torch.Tensor.sub, torch.Tensor.__sub__, torch.Tensor.__rsub__,
    torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__,
    torch.div, torch.Tensor.div, torch.Tensor.__truediv__, torch.Tensor.__rtruediv__,
})


_LOG_SOFTMAX = frozenset({torch.log_softmax, torch.Tensor.log_softmax, F.log_softmax})
_SOFTMAX = frozenset({torch.softmax, torch.Tensor.softmax, F.softmax}) | _LOG_SOFTMAX


@dataclass
class _Frame:
    """One entered region: a layer (or the root) with its format and how it is executed."""

    layer: str | None
    fmt: Format
    kind: str  # "fp32" | "native" | "emulated"
    ctx: Any = None  # the autocast context this frame entered, if any
    module: nn.Module | None = None
    shadowed: list[str] = field(default_factory=list)
    op_mode: Any = None
    op_count: int = 0


_FP32_FRAME = _Frame(None, FP32, "fp32")

# modules whose output is on the grid of any format their input is on (they select, mask or
# reshape values): a rounded input's tag passes through them, so e.g. conv -> bn -> relu -> conv
# rounds the second conv's input no second time
# layers whose (N, C, ...) activations block formats block over channels (their reduction
# dimension for convolutions; batch norm keeps the convolutions' blocks), not the last dimension
_CHANNEL_BLOCKED = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)
_REBLOCKING = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_GRID_PRESERVING = (nn.ReLU, nn.Identity, nn.Flatten) + _REBLOCKING


def _needs_op_rounding(module: nn.Module) -> bool:
    """Custom layers may run several ops: round inside, not only at the boundary."""
    return bool(getattr(module, "adaprec_layer", False)) or not type(module).__module__.startswith("torch.nn")


def _pass_tag(module, args, output):
    """Forward hook of a grid-preserving module: tag the output like its input was tagged.

    The input's tag is checked against the version it had when tagged *before* this module ran
    in place (an in-place ReLU bumps the version by exactly one)."""
    x = args[0] if args else None
    tag = getattr(x, _TAG, None)
    if tag is None or not isinstance(output, torch.Tensor):
        return None
    bumped = 1 if output is x else 0
    if isinstance(module, _REBLOCKING) and "/" in tag[0]:
        return None  # pooling mixes values of different blocks (scales): no longer on one grid
    if tag[1] + bumped == x._version:
        setattr(output, _TAG, (tag[0], output._version))
    return None


class _OpRounding(TorchFunctionMode):
    """Rounds outputs of the ops in ``_ROUNDED_OPS`` while ``frame`` is the innermost region."""

    def __init__(self, executor: "EmulatedExecutor", frame: _Frame):
        super().__init__()
        self.executor, self.frame = executor, frame

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        stack = self.executor._stack
        mine = func in _ROUNDED_OPS and stack and stack[-1] is self.frame
        if mine and func in _SOFTMAX and self.frame.fmt.scaling == "none":
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if dim is not None and kwargs.get("dtype") is None and args[0].dtype == torch.float32:
                return RoundedSoftmaxFn.apply(args[0], dim, self.frame.fmt, func in _LOG_SOFTMAX)
        out = func(*args, **kwargs)
        if mine:
            self.frame.op_count += 1
            out = round_tree(out, self.executor._rounder(self.frame), f"op{self.frame.op_count}")
        return out


class EmulatedExecutor:
    """Every non-fp32 layer emulated in fp32 kernels (see the module docstring).

    Args:
        model, layers, device_type: as for :class:`~adaprec.runtime.executors.native.NativeExecutor`.
        fp8: per-tensor scaling of fp8 layers (:class:`~adaprec.numerics.emulation.FP8Config` or its
            fields as a dict).
        skip_rounded: don't re-round an input the previous layer already rounded to the
            same format (saves one elementwise pass per tensor, numerics unchanged).
        stochastic_grads: round gradients of block/tile formats stochastically (unbiased)
            instead of to nearest even.
    """

    name = "emulated"

    def __init__(self, model: nn.Module, layers: Sequence[str], device_type: str = "cpu",
                 fp8: FP8Config | dict | None = None, skip_rounded: bool = True,
                 stochastic_grads: bool = False):
        self.device_type = device_type
        self.stochastic_grads = bool(stochastic_grads)
        self.layers = list(layers)
        self.fp8 = fp8 if isinstance(fp8, FP8Config) else FP8Config(**(fp8 or {}))
        self.skip_rounded = skip_rounded
        self.fp8_states: dict[tuple[str, str], AmaxState] = {}
        self._formats: dict[str, Format] = {name: FP32 for name in self.layers}
        self._kinds: dict[str, str] = {name: "fp32" for name in self.layers}
        self._root = _FP32_FRAME
        self._global = False
        self._stack: list[_Frame] = []
        modules = dict(model.named_modules())
        self._modules = {name: modules[name] for name in self.layers}
        self._op_level = {name: _needs_op_rounding(m) for name, m in self._modules.items()}
        self._handles = []
        for name, mod in self._modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            self._handles.append(mod.register_forward_hook(self._post_hook(name), always_call=True))
        if skip_rounded:
            for name, mod in modules.items():
                if isinstance(mod, _GRID_PRESERVING) and name not in self._modules:
                    self._handles.append(mod.register_forward_hook(_pass_tag))

    # -- plan ---------------------------------------------------------------------------------
    def set_plan(self, plan: Plan, global_region: bool = False) -> None:
        """Apply ``plan`` from the next forward on. ``global_region`` (the autocast baseline)
        is emulated per layer: a uniform plan rounds every layer, which is what it means."""
        for name in self.layers:
            self._formats[name] = get_format(plan.format_of(name))
            self._kinds[name] = self._kind(self._formats[name], self._modules[name])
        self._root = self._root_frame(get_format(plan.default), global_region)

    def _kind(self, fmt: Format, module: nn.Module | None) -> str:
        return "fp32" if fmt == FP32 else "emulated"

    def _root_frame(self, fmt: Format, global_region: bool) -> _Frame:
        # nothing runs under autocast here: ops outside every layer compute in fp32
        return _FP32_FRAME

    def format_of(self, layer: str) -> Format:
        return self._formats[layer]

    @property
    def choices(self) -> dict[str, str]:
        """How each layer runs now: ``"native"`` (fp32 or autocast) or ``"emulated"``."""
        return {n: "emulated" if k == "emulated" else "native" for n, k in self._kinds.items()}

    # -- regions ------------------------------------------------------------------------------
    @contextmanager
    def region(self) -> Iterator[None]:
        """The outermost region (``ap.autocast()``)."""
        root = self._root
        ctx = (torch.autocast(self.device_type, dtype=root.fmt.dtype) if root.kind == "native"
               else torch.autocast(self.device_type, enabled=False))
        with ctx:
            self._stack.append(root)
            try:
                yield
            finally:
                self._stack.pop()

    def _parent(self) -> _Frame:
        return self._stack[-1] if self._stack else _FP32_FRAME

    def _pre_hook(self, name: str):
        def hook(module, args, kwargs):
            if self._global:
                return None
            frame = _Frame(name, self._formats[name], self._kinds[name], module=module)
            parent = self._parent()
            if frame.kind == "native":
                if not (parent.kind == "native" and parent.fmt == frame.fmt):
                    frame.ctx = torch.autocast(self.device_type, dtype=frame.fmt.dtype)
                    frame.ctx.__enter__()
                self._stack.append(frame)
                return None
            if parent.kind == "native":  # fp32 or emulated inside an autocast region
                frame.ctx = torch.autocast(self.device_type, enabled=False)
                frame.ctx.__enter__()
                args, kwargs = cast_floating(args, torch.float32), cast_floating(kwargs, torch.float32)
            if frame.kind == "emulated":
                args, kwargs = self._enter_emulated(frame, module, args, kwargs)
            self._stack.append(frame)
            if frame.kind == "emulated" and self._op_level[name]:
                frame.op_mode = _OpRounding(self, frame)
                frame.op_mode.__enter__()
            return args, kwargs
        return hook

    def _enter_emulated(self, frame: _Frame, module: nn.Module, args, kwargs):
        rounder = self._rounder(frame)
        args = round_tree(args, rounder, "input")
        kwargs = round_tree(kwargs, rounder, "input")
        for pname, p in module._parameters.items():
            if p is not None and p.is_floating_point():
                # shadows module._parameters[pname] for attribute lookup during this forward
                module.__dict__[pname] = rounder(p, f"weight:{pname}", skip_tagged=False)
                frame.shadowed.append(pname)
        return args, kwargs

    def _post_hook(self, name: str):
        def hook(module, args, output):
            if self._global:
                return None
            frame = self._stack.pop()
            if frame.op_mode is not None:
                frame.op_mode.__exit__(None, None, None)
            for pname in frame.shadowed:
                module.__dict__.pop(pname, None)
            if frame.ctx is not None:
                frame.ctx.__exit__(None, None, None)
            if frame.kind == "emulated":
                return round_tree(output, self._rounder(frame, output=True), "output")
            if frame.kind == "native" and self._parent().kind != "native":
                return cast_floating(output, torch.float32)
            return None
        return hook

    # -- rounding -----------------------------------------------------------------------------
    def _rounder(self, frame: _Frame, output: bool = False):
        """``fn(tensor, role)`` rounding to ``frame``'s format (scaled for fp8), forward and
        backward. ``output``: the tensor is the layer's output, held in its format, so the
        gradient *arriving at it* is rounded (a tensor hook, which runs before any hook the
        monitor registers later) rather than the gradient leaving it; the output is tagged."""
        fmt = frame.fmt
        scaled = fmt.scaling == "per_tensor"
        name = frame.layer or ""
        if fmt.scaling in ("block", "tiles"):
            return self._block_rounder(frame, output)

        def fn(t: torch.Tensor, role: str, skip_tagged: bool = True) -> torch.Tensor:
            if t.dtype in _LOW_DTYPES:  # from a native region: emulation works on fp32
                t = t.float()
            if scaled:
                fwd = self._state(name, role, fmt, t.device)
                bwd = self._state(name, "grad_" + role, fmt, t.device)
                out = ScaledRoundFn.apply(t, fmt, fwd, None if output else bwd)
                if output and out.requires_grad:
                    out.register_hook(lambda g: round_scaled(g, fmt, bwd))
                return out
            if skip_tagged and self.skip_rounded and getattr(t, _TAG, None) == (fmt.name, t._version):
                return t
            out = RoundFn.apply(t, fmt, not output)
            if output:
                if out.requires_grad:
                    out.register_hook(lambda g: round_to(g, fmt))
                setattr(out, _TAG, (fmt.name, out._version))
            return out
        return fn

    def _block_rounder(self, frame: _Frame, output: bool):
        """Block/tile formats: ``Format.fake_quantize`` over the reduction dimension (the last
        one; channels for a convolution's activations, ``(out, in*kh*kw)`` rows for weights),
        the gradient over the same dimension (stochastically with ``stochastic_grads``)."""
        fmt, sr = frame.fmt, self.stochastic_grads
        axis = 1 if isinstance(frame.module, _CHANNEL_BLOCKED) else -1

        def fn(t: torch.Tensor, role: str, skip_tagged: bool = True) -> torch.Tensor:
            if t.dtype in _LOW_DTYPES:
                t = t.float()
            ax = axis if t.dim() > 2 else -1
            key = f"{fmt.name}/{ax}"  # the same blocks: an input tagged with this key is on them
            if skip_tagged and self.skip_rounded and getattr(t, _TAG, None) == (key, t._version):
                return t
            grad_role = None if output else "grad_" + role
            out = FakeQuantFn.apply(t, fmt, role, ax, grad_role, sr)
            if output:
                if out.requires_grad:
                    out.register_hook(lambda g: fmt.fake_quantize(g, role="grad_output", axis=ax,
                                                                  stochastic=sr))
                setattr(out, _TAG, (key, out._version))
            return out
        return fn

    def _state(self, layer: str, role: str, fmt: Format, device: torch.device) -> AmaxState:
        key = (layer, role)
        state = self.fp8_states.get(key)
        if state is None or state.fmt_max != fmt.max:  # a plan switch between fp8 formats
            state = self.fp8_states[key] = AmaxState(self.fp8, fmt, device)
        return state

    def remove(self) -> None:
        """Detach every hook; the model runs as if adaprec were never there."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


# -- auto -----------------------------------------------------------------------------------------
def layer_family(module: nn.Module | None) -> str:
    """``conv``, ``norm`` or ``matmul`` (everything else: linear layers, attention, embeddings)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return "norm"
    return "matmul"


def _cpu_has_fast(fmt: Format) -> bool:
    # oneDNN's own capability checks: AVX512-BF16/AMX-BF16 for bf16, AVX512-FP16/AMX-FP16 for
    # fp16. Without them torch's CPU kernels for that dtype are reference loops (fp16
    # convolution training runs minutes per ResNet-18 step).
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[fmt.name]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return False


def native_is_fast(fmt: Format, family: str, device_type: str) -> bool:
    """Whether ``device_type`` computes ``family`` ops in ``fmt`` natively at full speed.

    A capability probe, not a timing: timings of tiny ops on a shared CPU flip from run to run
    (measured here: a probe called fp16 convolutions fast under load), and a run's execution
    must not depend on the neighbours' load. fp32 always; fp8 never (no fp8 kernels here);
    CUDA: fp16 always, bf16 where the GPU supports it; CPU: where oneDNN reports the ISA.
    The rule is the same for every family today; ``family`` is there for per-family rules
    (e.g. from a calibrated cost profile).
    """
    if fmt == FP32:
        return True
    if not fmt.native:
        return False
    if device_type == "cuda":
        return fmt.name == "fp16" or torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return _cpu_has_fast(fmt)
    return False


class AutoExecutor(EmulatedExecutor):
    """Per layer: native autocast where the device runs the format fast, emulation elsewhere.

    Decisions come from :func:`native_is_fast` by (format, layer family); ``choices`` holds
    the current one per layer and every change is logged.
    """

    name = "auto"

    def __init__(self, model: nn.Module, layers: Sequence[str], device_type: str = "cpu", **kw):
        super().__init__(model, layers, device_type, **kw)
        self._logged: dict[str, str] = {}

    def _kind(self, fmt: Format, module: nn.Module | None) -> str:
        if fmt == FP32:
            return "fp32"
        return "native" if native_is_fast(fmt, layer_family(module), self.device_type) else "emulated"

    def _root_frame(self, fmt: Format, global_region: bool) -> _Frame:
        kind = self._kind(fmt, None)
        # the autocast baseline stays one global native region where that format is fast
        self._global = global_region and kind == "native"
        return _FP32_FRAME if kind == "fp32" else _Frame(None, fmt, kind)

    def set_plan(self, plan: Plan, global_region: bool = False) -> None:
        super().set_plan(plan, global_region)
        for name, (fmt, choice) in ((n, (self._formats[n], c)) for n, c in self.choices.items()):
            text = f"{fmt.name} {choice}"
            if self._logged.get(name) != text:
                log.info("auto executor: %s (%s) runs %s %s", name, layer_family(self._modules[name]),
                         fmt.name, choice)
                self._logged[name] = text
