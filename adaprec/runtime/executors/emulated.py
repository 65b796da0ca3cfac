"""The emulated executor: a layer's format applied by fp32 kernels on format-exact values.

fp16 and bf16 layers follow torch.autocast's op semantics exactly, because they *are* autocast:
the executor opens the same per-layer autocast regions as the native executor (it composes a
:class:`~adaprec.runtime.executors.native.NativeExecutor`), so autocast's own op lists decide
which ops run in the layer's format (its lower-precision list: matmuls, convolutions, linear,
attention), which stay fp32 (its fp32 list) and which follow their inputs (promote ops, and
every other op by type promotion); a model's explicit upcasts (LlamaRMSNorm's ``.float()``
variance) stay fp32 and ``x.dtype`` reads as it would natively. What is emulated is the
kernels: under :class:`~adaprec.numerics.emulation.Fp32Kernels` (a dispatch mode entered with
``ap.autocast()`` and around ``ap.backward``) the ops whose 16-bit CPU kernels are slow compute
in fp32 on the upcast operands and round their result back, as the native kernels do
internally. Tensors between ops are real fp16/bf16, so gradients, loss scaling and overflow
behave as natively. ``sixteen_bit="boundary"`` keeps the earlier emulation of 16-bit layers
(rounding at layer boundaries, described next for the formats that always use it).

Every other format (fp8, block and tile formats, per-role entries) runs in fp32 kernels. For
a layer in such a format its floating inputs and its own parameters are rounded to the format before the layer's ops,
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
with its own scaling state in ``executor.fp8_states`` (checkpointed by ``state_dict()``).

``gemm_rounding="operands"`` runs stock ``nn.Linear`` layers in such formats differently: their
three GEMMs round their own operands, each over its own reduction dimension (the wgrad GEMM's
over the tokens), and their output and input gradient stay fp32, as in Transformer Engine and
torchao (:mod:`adaprec.runtime.gemm_operands`); every other layer is rounded at its boundary.

Already-rounded inputs are not rounded again: a layer's output is tagged with its format and
the tensor's version counter (passed through ReLU/MaxPool/Flatten/Identity modules, which keep
values on the grid), and the next layer in the same format skips that input (its gradient is
rounded by the producer's output rounding, so numerics are unchanged). Inside a layer with
op-level rounding the same holds for an op's rounded result (the layer's exit skips an output
its last matmul already rounded) and for a dropout that returns its input's values (p=0 or
eval: passed through, not rounded).

The ``auto`` executor (:mod:`adaprec.runtime.executors.auto`) composes this one with the
native executor, layer by layer.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from adaprec.numerics.emulation import (AmaxState, FakeQuantFn, FP8Config, Fp32Kernels, RoleRoundFn,
                                       RoundedSoftmaxFn, RoundFn, ScaledRoundFn, round_scaled, round_to,
                                       round_tree)
from adaprec.numerics.formats import FP32, Format, get_format
from adaprec.numerics.recipes import Block, Tiles
from adaprec.runtime.eager import eager
from adaprec.runtime.executors.base import hook_layers as _hook_layers
from adaprec.runtime.executors.native import NativeExecutor
from adaprec.runtime.gemm_operands import LinearOperandsFn, Operands
from adaprec.runtime.plan import Plan

__all__ = ["EmulatedExecutor", "GRID_PRESERVING", "SIXTEEN_BIT", "GEMM_ROUNDING"]

SIXTEEN_BIT = ("autocast", "boundary")  # how fp16/bf16 layers are emulated (module docstring)
GEMM_ROUNDING = ("boundary", "operands")  # where a linear layer's emulated formats round (module docstring)

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
    kind: str  # "fp32" | "emulated"
    module: nn.Module | None = None
    shadowed: list[str] = field(default_factory=list)
    op_mode: Any = None
    op_count: int = 0
    operands: bool = False  # a stock linear layer whose GEMMs round their operands


_FP32_FRAME = _Frame(None, FP32, "fp32")

# modules whose output is on the grid of any format their input is on (they select, mask or
# reshape values): a rounded input's tag passes through them, so e.g. conv -> bn -> relu -> conv
# rounds the second conv's input no second time
# layers whose (N, C, ...) activations block formats block over channels (their reduction
# dimension for convolutions; batch norm keeps the convolutions' blocks), not the last dimension
_CHANNEL_BLOCKED = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)
_REBLOCKING = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_GRID_PRESERVING = (nn.ReLU, nn.Identity, nn.Flatten) + _REBLOCKING
GRID_PRESERVING = _GRID_PRESERVING  # public: the cost model follows the same tag rule


def _view(t: torch.Tensor) -> tuple:
    return (t.dtype, t.storage_offset(), tuple(t.shape), t.stride())


def _tag_of(t: torch.Tensor) -> tuple[str, int] | None:
    """``(grid key, version when tagged)`` of a tensor whose values were rounded, or None.

    Tags live on the tensor's storage, keyed by the view, so a detached copy of a rounded tensor
    (the inputs reentrant checkpointing recomputes a block from) is recognised like the tensor
    itself and a recomputation rounds exactly what the forward rounded."""
    try:
        tags = getattr(t.untyped_storage(), _TAG, None)
    except (RuntimeError, NotImplementedError):  # tensors without a storage (subclasses, meta)
        return None
    return tags.get(_view(t)) if tags else None


def _on_grid(t: torch.Tensor, key: str, block: int = 1) -> bool:
    """Whether ``t``'s values were rounded with grid ``key`` and not written since: ``t`` is a
    tagged tensor, or a view inside a tagged contiguous one (the q, k, v heads an attention
    core gets from its qkv projection's output). ``block``: 1 for an elementwise grid; the
    block length for blocks over the last dimension, where the view's blocks must be blocks of
    the tagged tensor (unit last stride, whole blocks, each starting at one of its block
    boundaries); 0: only an exactly tagged tensor counts."""
    try:
        tags = getattr(t.untyped_storage(), _TAG, None)
    except (RuntimeError, NotImplementedError):
        return False
    if not tags:
        return False
    mine = (key, t._version)  # views share their base's version counter
    if tags.get(_view(t)) == mine:
        return True
    if not block or t.dim() == 0 or t.numel() == 0 or t.stride(-1) != 1 or t.shape[-1] % block:
        return False
    off = t.storage_offset()
    if any(s % block for s, n in zip(t.stride()[:-1], t.shape[:-1]) if n > 1):
        return False
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))  # last element + 1
    for (dtype, base_off, shape, stride), tag in tags.items():
        if tag != mine or dtype != t.dtype or not shape or shape[-1] % block:
            continue
        numel = 1
        for n in shape:
            numel *= n
        if stride != _contiguous_strides(shape) or (off - base_off) % block:
            continue
        if base_off <= off and off + span <= base_off + numel:
            return True
    return False


def _block_length(fmt: Format) -> int:
    """Elements of the last dimension one scale covers for activations, where rounding a view
    of whole blocks gives the view of the rounded tensor (0: it may not -- a per-tensor scale
    too, as NVFP4's, follows the view's amax -- so only an exactly tagged tensor counts)."""
    recipe = fmt.recipe
    if isinstance(recipe, Block):
        return 0 if recipe.tensor_scale else recipe.size
    if isinstance(recipe, Tiles) and recipe.activation[0] == 1:
        return recipe.activation[1]
    return 0


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def _set_tag(t: torch.Tensor, tag: tuple[str, int]) -> None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return
    tags = getattr(storage, _TAG, None)
    if tags is None:
        tags = {}
        setattr(storage, _TAG, tags)
    tags[_view(t)] = tag


def _stock_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` whose forward is ``nn.Linear``'s own (one GEMM and a bias)."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def _needs_op_rounding(module: nn.Module) -> bool:
    """Custom layers may run several ops: round inside, not only at the boundary."""
    return bool(getattr(module, "adaprec_layer", False)) or not type(module).__module__.startswith("torch.nn")


def _pass_tag(module, args, output):
    """Forward hook of a grid-preserving module: tag the output like its input was tagged.

    The input's tag is checked against the version it had when tagged *before* this module ran
    in place (an in-place ReLU bumps the version by exactly one)."""
    x = args[0] if args else None
    tag = _tag_of(x) if isinstance(x, torch.Tensor) else None
    if tag is None or not isinstance(output, torch.Tensor):
        return None
    bumped = 1 if output is x else 0
    if isinstance(module, _REBLOCKING) and "/" in tag[0]:
        return None  # pooling mixes values of different blocks (scales): no longer on one grid
    if tag[1] + bumped == x._version:
        _set_tag(output, (tag[0], output._version))
    return None


class _Remembered:
    """An fp8 scaling state whose scales are also appended to ``scales``."""

    def __init__(self, state: AmaxState, scales: deque):
        self.state, self.scales = state, scales

    def scale_for(self, amax: torch.Tensor) -> torch.Tensor:
        scale = self.state.scale_for(amax)
        self.scales.append(scale)
        return scale


class _Replayed:
    """The scale a forward used, for its recomputation (records nothing)."""

    def __init__(self, scale: torch.Tensor):
        self.scale = scale

    def scale_for(self, amax: torch.Tensor) -> torch.Tensor:
        return self.scale


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
                out = RoundedSoftmaxFn.apply(args[0], dim, self.frame.fmt, func in _LOG_SOFTMAX)
                _set_tag(out, (self.frame.fmt.name, out._version))  # its gradient is rounded too
                return out
        out = func(*args, **kwargs)
        if mine:
            self.frame.op_count += 1
            if func is F.dropout and _identity_dropout(args, kwargs) and self.executor._keep_tag(self.frame, args[0], out):
                return out  # the values of an on-grid input, unchanged: nothing to round
            out = round_tree(out, self.executor._rounder(self.frame), f"op{self.frame.op_count}")
        return out


def _identity_dropout(args, kwargs) -> bool:
    """Whether an ``F.dropout`` call returns its input's values (p=0, or not training), out of
    place; its backward then passes the gradient on unchanged too."""
    def arg(i, name, default):
        return args[i] if len(args) > i else kwargs.get(name, default)
    return not arg(3, "inplace", False) and (arg(1, "p", 0.5) == 0 or not arg(2, "training", True))


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
        compiled_rounding: MX and NVFP4 blocks and per-tensor fp8 round in one fused
            ``torch.compile`` kernel (:mod:`adaprec.numerics.fused`: the same values, a few
            times faster on a CPU; the
            first step of each format compiles, which takes seconds and a C++ compiler).
        gemm_rounding: ``"boundary"`` (default) or ``"operands"``: where a stock linear layer
            in an emulated format rounds (module docstring).
        hook_layers: register the per-layer hooks (False: a composing executor calls
            :meth:`enter_layer`/:meth:`exit_layer` itself).
        sixteen_bit: ``"autocast"`` (default): fp16/bf16 layers run autocast's regions with
            fp32 kernels (:class:`~adaprec.numerics.emulation.Fp32Kernels`), exactly autocast's
            op semantics; ``"boundary"``: the earlier emulation, rounding at layer boundaries
            like every other format (ops outside every layer then compute in fp32).

    With ``"autocast"``, a global-region plan in fp16/bf16 is one autocast region, like the
    ``autocast`` baseline natively, and ops outside every layer run in the plan's default
    region as natively; other formats are emulated per layer.
    """

    name = "emulated"

    def __init__(self, model: nn.Module, layers: Sequence[str], device_type: str = "cpu",
                 fp8: FP8Config | dict | None = None, skip_rounded: bool = True,
                 hook_layers: bool = True, stochastic_grads: bool = False,
                 sixteen_bit: str = "autocast", compiled_rounding: bool = False,
                 gemm_rounding: str = "boundary"):
        if sixteen_bit not in SIXTEEN_BIT:
            raise ValueError(f"sixteen_bit must be one of {', '.join(SIXTEEN_BIT)}, got {sixteen_bit!r}")
        if gemm_rounding not in GEMM_ROUNDING:
            raise ValueError(f"gemm_rounding must be one of {', '.join(GEMM_ROUNDING)}, got {gemm_rounding!r}")
        self.gemm_rounding = gemm_rounding
        self.device_type = device_type
        self.sixteen_bit = sixteen_bit
        self.stochastic_grads = bool(stochastic_grads)
        self.compiled_rounding = bool(compiled_rounding)
        self.layers = list(layers)
        self.fp8 = fp8 if isinstance(fp8, FP8Config) else FP8Config(**(fp8 or {}))
        self.skip_rounded = skip_rounded
        self._fp8_states: dict[tuple[str, str], AmaxState] = {}
        # what the plan says per layer, and what the rounding frames apply (fp32 for the layers
        # the autocast half runs)
        self._planned: dict[str, Format] = {name: FP32 for name in self.layers}
        self._forward_scales: dict[tuple[str, str], deque] = {}  # see _forward_state
        self._formats: dict[str, Format] = {name: FP32 for name in self.layers}
        self._native = NativeExecutor(model, self.layers, device_type, hook_layers=False)
        # standalone, the autocast half opens every layer's region (fp32 and rounded layers run
        # with autocast off); composed (auto), the composer's native half does that and this
        # one opens only the regions of the 16-bit layers it emulates
        self._standalone = hook_layers
        self._autocast_layer: dict[str, bool] = {name: False for name in self.layers}
        self._uses_kernels = False
        self._stack: list[_Frame] = []
        modules = dict(model.named_modules())
        self._modules = {name: modules[name] for name in self.layers}
        self._op_level = {name: _needs_op_rounding(m) for name, m in self._modules.items()}
        # operands mode: stock linear layers run LinearOperandsFn (their forward shadowed in the
        # instance dict, the class's own used outside emulated regions)
        self._operand_linears = {name for name, m in self._modules.items()
                                 if gemm_rounding == "operands" and _stock_linear(m)}
        for name in self._operand_linears:
            mod = self._modules[name]
            mod.__dict__["forward"] = partial(self._linear_forward, name, mod)
        self._handles = (_hook_layers(model, self.layers, self.enter_layer, self.exit_layer)
                         if hook_layers else [])
        if skip_rounded:
            for name, mod in modules.items():
                if isinstance(mod, _GRID_PRESERVING) and name not in self._modules:
                    self._handles.append(mod.register_forward_hook(eager(_pass_tag)))

    # -- plan ---------------------------------------------------------------------------------
    def _via_autocast(self, fmt: Format) -> bool:
        """fp16/bf16 (one plain format) runs as autocast with fp32 kernels."""
        return self.sixteen_bit == "autocast" and fmt.native and fmt != FP32 and not fmt.has_roles

    def set_plan(self, plan: Plan) -> None:
        """Apply ``plan`` from the next forward on: fp16/bf16 layers to the autocast half,
        every other format to the rounding frames."""
        native = {}
        for name in self.layers:
            fmt = self._planned[name] = get_format(plan.format_of(name))
            # a layer whose 16-bit ops fail natively here (the capability probe: nn.LSTM on
            # AVX2) is rounded at its boundaries instead: not every one of its ops has an fp32
            # kernel in Fp32Kernels
            autocast = self._autocast_layer[name] = (self._via_autocast(fmt)
                                                     and self._native.runs(name, fmt))
            self._formats[name] = FP32 if autocast else fmt
            native[name] = fmt.name if autocast else FP32.name
        default = get_format(plan.default)
        root = default if self._via_autocast(default) else FP32
        if plan.region == "global" and not all(self._autocast_layer.values()):
            root = FP32  # some layer is rounded instead: emulate the global plan per layer
        self._native.set_plan(Plan(native, default=root.name,
                                   region=plan.region if root == default else "layer"))
        self._uses_kernels = root != FP32 or any(f != FP32.name for f in native.values())

    def format_of(self, layer: str) -> Format:
        return self._planned[layer]

    def runs_as_autocast(self, fmt: Format) -> bool:
        """Whether ``fmt`` (one plain fp16/bf16 format) runs as autocast with fp32 kernels."""
        return self._via_autocast(fmt)

    def autocast_runs(self, layer: str, fmt: Format) -> bool:
        """Whether ``layer``'s ops run under autocast in ``fmt`` here (the capability probe:
        a layer whose 16-bit ops fail natively is rounded at its boundaries instead)."""
        return self._native.runs(layer, fmt)

    def kernels(self):
        """The dispatch mode that gives 16-bit ops fp32 kernels (a no-op context when the plan
        has no fp16/bf16 layer); ``region()`` enters it, and so must backward."""
        return Fp32Kernels() if self._uses_kernels else nullcontext()

    def backward_region(self):
        """Context for ``loss.backward()``: backward's 16-bit kernels computed in fp32 too
        (``ap.backward`` enters it; without it they run torch's slow 16-bit CPU kernels)."""
        return self.kernels()

    # -- run state ----------------------------------------------------------------------------
    @property
    def fp8_states(self) -> Mapping[tuple[str, str], AmaxState]:
        """fp8 scaling state per ``(layer, tensor role)`` (read-only view)."""
        return MappingProxyType(self._fp8_states)

    def state_dict(self) -> dict:
        """The fp8 scaling states (amax histories are run state: a resume continues them)."""
        return {"fp8": [{"layer": layer, "role": role, **st.state_dict()}
                        for (layer, role), st in self._fp8_states.items()]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s states exactly (states not in ``state`` are dropped)."""
        self._fp8_states.clear()
        for entry in state.get("fp8", []):
            self._fp8_states[(entry["layer"], entry["role"])] = AmaxState.from_state(self.fp8, entry)

    # -- regions ------------------------------------------------------------------------------
    @contextmanager
    def region(self) -> Iterator[None]:
        """The outermost region (``ap.autocast()``): the plan's default where it runs as
        autocast (fp16/bf16), else autocast off; fp32 kernels for 16-bit ops."""
        self.begin_forward()
        with self._native.region(), self.kernels():
            self._stack.append(_FP32_FRAME)
            try:
                yield
            finally:
                self._stack.pop()

    def enter_layer(self, name: str, module: nn.Module, args: tuple, kwargs: dict):
        """Open layer ``name``'s region (forward pre-hook): its autocast region (fp16/bf16, or
        autocast off), then for the other formats round its inputs and parameters."""
        if self._standalone or self._autocast_layer[name]:
            changed = self._native.enter_layer(name, module, args, kwargs)
            if changed is not None:
                args, kwargs = changed
        fmt = self._formats[name]
        frame = _Frame(name, fmt, "fp32" if fmt == FP32 else "emulated", module=module)
        frame.operands = frame.kind == "emulated" and name in self._operand_linears
        if frame.kind == "emulated" and not frame.operands:
            args, kwargs = self._enter_emulated(frame, module, args, kwargs)
        self._stack.append(frame)
        if frame.kind == "emulated" and self._op_level[name]:
            frame.op_mode = _OpRounding(self, frame)
            frame.op_mode.__enter__()
        return args, kwargs

    def _enter_emulated(self, frame: _Frame, module: nn.Module, args, kwargs):
        # the rounding's own ops are not the enclosing layer's: its op rounding must not see them
        with torch._C.DisableTorchFunction():
            return self._round_inputs(frame, module, args, kwargs)

    def _round_inputs(self, frame: _Frame, module: nn.Module, args, kwargs):
        rounder = self._rounder(frame)
        args = round_tree(args, rounder, "input")
        kwargs = round_tree(kwargs, rounder, "input")
        for pname, p in module._parameters.items():
            if p is not None and p.is_floating_point():
                # shadows module._parameters[pname] for attribute lookup during this forward
                module.__dict__[pname] = rounder(p, f"weight:{pname}", skip_tagged=False)
                frame.shadowed.append(pname)
        return args, kwargs

    def exit_layer(self, name: str, module: nn.Module, output: Any):
        """Close layer ``name``'s region (forward hook): the rounded output, or None."""
        frame = self._stack.pop()
        if frame.op_mode is not None:
            frame.op_mode.__exit__(None, None, None)
        for pname in frame.shadowed:
            module.__dict__.pop(pname, None)
        rounded = None
        if frame.kind == "emulated" and not frame.operands:
            with torch._C.DisableTorchFunction():  # as in _enter_emulated
                rounded = round_tree(output, self._rounder(frame, output=True), "output")
        # the autocast half casts the output to the dtype of the region it goes back to
        if not (self._standalone or self._autocast_layer[name]):
            return rounded
        changed = self._native.exit_layer(name, module, output if rounded is None else rounded)
        return changed if changed is not None else rounded

    # -- rounding -----------------------------------------------------------------------------
    def _grid_key(self, frame: _Frame, t: torch.Tensor) -> tuple[str, int] | None:
        """``(tag key, block)`` for ``_on_grid`` of a tensor ``t`` rounded by ``frame``'s
        rounder (None where rounded values carry no tag: per-tensor scales, per-role formats)."""
        fmt = frame.fmt
        if fmt.has_roles or fmt.scaling == "per_tensor":
            return None
        if fmt.scaling in ("block", "tiles"):
            ax = 1 if isinstance(frame.module, _CHANNEL_BLOCKED) and t.dim() > 2 else -1
            return f"{fmt.name}/{ax}", (_block_length(fmt) if ax == -1 else 0)
        return fmt.name, 1

    def _keep_tag(self, frame: _Frame, src: Any, out: Any) -> bool:
        """Tag ``out`` (an op's result holding exactly ``src``'s values) as on ``frame``'s grid
        if ``src`` is on it; whether it was."""
        if not (self.skip_rounded and isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor)):
            return False
        grid = self._grid_key(frame, src)
        if grid is None or not _on_grid(src, *grid):
            return False
        _set_tag(out, (grid[0], out._version))
        return True

    def _rounder(self, frame: _Frame, output: bool = False):
        """``fn(tensor, role)`` rounding to ``frame``'s format (scaled for fp8), forward and
        backward. ``output``: the tensor is the layer's output, held in its format, so the
        gradient *arriving at it* is rounded (a tensor hook, which runs before any hook the
        monitor registers later) rather than the gradient leaving it; the output is tagged."""
        fmt, fused = frame.fmt, self.compiled_rounding
        scaled = fmt.scaling == "per_tensor"
        name = frame.layer or ""
        if fmt.has_roles:
            return self._role_rounder(frame, output)
        if fmt.scaling in ("block", "tiles"):
            return self._block_rounder(frame, output)

        def fn(t: torch.Tensor, role: str, skip_tagged: bool = True) -> torch.Tensor:
            if t.dtype in _LOW_DTYPES:  # from a native region: emulation works on fp32
                t = t.float()
            if scaled:
                fwd = self._forward_state(name, role, fmt, t.device)
                bwd = self._state(name, "grad_" + role, fmt, t.device)
                out = ScaledRoundFn.apply(t, fmt, fwd, None if output else bwd, fused)
                if output and out.requires_grad:
                    out.register_hook(lambda g: round_scaled(g, fmt, bwd, fused))
                return out
            if skip_tagged and self.skip_rounded and _on_grid(t, fmt.name):
                return t
            out = RoundFn.apply(t, fmt, not output)
            if output and out.requires_grad:
                out.register_hook(lambda g: round_to(g, fmt))
            if output or role.startswith("op"):  # an op's rounded result (_OpRounding) too
                _set_tag(out, (fmt.name, out._version))
            return out
        return fn

    def _role_rounder(self, frame: _Frame, output: bool):
        """Formats with per-role formats (``Format.role_format``): each role's forward value and
        gradient rounded in its own format, recipe and scaling state (no tag skipping)."""
        fmt, name = frame.fmt, frame.layer or ""
        axis = 1 if isinstance(frame.module, _CHANNEL_BLOCKED) else -1
        one = partial(self._role_fn, name)

        def fn(t: torch.Tensor, role: str, skip_tagged: bool = True) -> torch.Tensor:
            if t.dtype in _LOW_DTYPES:
                t = t.float()
            ax = axis if t.dim() > 2 else -1
            fwd = one(fmt.role_format(role), role, ax, False)
            bwd = one(fmt.role_format(role, grad=True), "output" if output else role, ax, True)
            out = RoleRoundFn.apply(t, fwd, None if output else bwd)
            if output and out.requires_grad:
                out.register_hook(bwd)
            return out
        return fn

    def _role_fn(self, name: str, f: Format, role: str, ax: int, grad: bool):
        """``fn(v)``: ``v`` rounded to plain format ``f`` as tensor ``role`` of layer ``name``
        (its scaling state for per-tensor fp8, blocks over ``ax``; ``grad``: a gradient)
        (``fn(v, axis)`` blocks over ``axis`` instead: the operand GEMMs' re-blocking)."""
        key, sr, fused = ("grad_" if grad else "") + role, self.stochastic_grads, self.compiled_rounding
        if f.scaling == "per_tensor":
            state = self._state if grad else self._forward_state
            return lambda v, axis=ax: round_scaled(v, f, state(name, key, f, v.device), fused)
        if f.scaling in ("block", "tiles"):
            return lambda v, axis=ax: f.fake_quantize(v, role=key, axis=axis, stochastic=sr and grad,
                                                      compiled=fused)
        return (lambda v, axis=ax: v) if f == FP32 else (lambda v, axis=ax: round_to(v, f))

    def _operands(self, frame: _Frame) -> Operands:
        """The GEMM operand rounders of a linear layer in ``gemm_rounding="operands"``."""
        fmt, name = frame.fmt, frame.layer or ""
        f_in, f_w = fmt.role_format("input"), fmt.role_format("weight")
        f_g, f_wg = fmt.role_format("input", grad=True), fmt.role_format("weight", grad=True)
        one = partial(self._role_fn, name)
        return Operands(input=one(f_in, "input:0", -1, False), weight=one(f_w, "weight:weight", -1, False),
                        grad=one(f_g, "output", -1, True), weight_grad=one(f_wg, "weight:weight", -1, True),
                        input_fmt=f_in, weight_fmt=f_w, grad_fmt=f_g)

    def _linear_forward(self, name: str, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``module.forward`` of a stock linear layer in ``gemm_rounding="operands"``: its
        GEMMs round their own operands while its region is an emulated one."""
        frame = self._stack[-1] if self._stack else None
        if frame is None or frame.layer != name or not frame.operands:
            return nn.Linear.forward(module, x)
        if x.dtype in _LOW_DTYPES:
            x = x.float()
        fmt = frame.fmt  # an input the previous layer rounded to the same blocks is not re-rounded
        on_grid = self.skip_rounded and not fmt.has_roles and (
            _on_grid(x, f"{fmt.name}/-1", _block_length(fmt)) if fmt.scaling in ("block", "tiles")
            else fmt.scaling == "none" and _on_grid(x, fmt.name))
        with torch._C.DisableTorchFunction():
            return LinearOperandsFn.apply(x, module.weight, module.bias, self._operands(frame), on_grid)

    def _block_rounder(self, frame: _Frame, output: bool):
        """Block/tile formats: ``Format.fake_quantize`` over the reduction dimension (the last
        one; channels for a convolution's activations, ``(out, in*kh*kw)`` rows for weights),
        the gradient over the same dimension (stochastically with ``stochastic_grads``)."""
        fmt, sr, fused = frame.fmt, self.stochastic_grads, self.compiled_rounding
        axis = 1 if isinstance(frame.module, _CHANNEL_BLOCKED) else -1
        block = _block_length(fmt)

        def fn(t: torch.Tensor, role: str, skip_tagged: bool = True) -> torch.Tensor:
            if t.dtype in _LOW_DTYPES:
                t = t.float()
            ax = axis if t.dim() > 2 else -1
            key = f"{fmt.name}/{ax}"  # the same blocks: an input tagged with this key is on them
            if skip_tagged and self.skip_rounded and _on_grid(t, key, block if ax == -1 else 0):
                return t
            grad_role = None if output else "grad_" + role
            out = FakeQuantFn.apply(t, fmt, role, ax, grad_role, sr, fused)
            if output and out.requires_grad:
                out.register_hook(lambda g: fmt.fake_quantize(g, role="grad_output", axis=ax,
                                                              stochastic=sr, compiled=fused))
            if output or role.startswith("op"):  # an op's rounded result (_OpRounding) too
                _set_tag(out, (key, out._version))
            return out
        return fn

    def begin_forward(self) -> None:
        """A new forward begins (``ap.autocast()``): forget the previous one's fp8 scales."""
        self._forward_scales.clear()

    def _forward_state(self, layer: str, role: str, fmt: Format, device: torch.device):
        """The scaling state of a forward tensor role. In a forward the scales it gives are kept
        in call order; a recomputation during backward (activation checkpointing) gets those
        scales back instead, without recording its amaxes a second time, so delayed scaling
        computes exactly what it computed without checkpointing."""
        state = self._state(layer, role, fmt, device)
        scales = self._forward_scales.setdefault((layer, role), deque())
        if torch._C._current_graph_task_id() != -1:  # inside backward: a recomputation
            return _Replayed(scales.popleft()) if scales else state
        return _Remembered(state, scales)

    def _state(self, layer: str, role: str, fmt: Format, device: torch.device) -> AmaxState:
        key = (layer, role)
        state = self._fp8_states.get(key)
        if state is None or state.fmt_max != fmt.max:  # a plan switch between fp8 formats
            state = self._fp8_states[key] = AmaxState(self.fp8, fmt, device)
        return state

    def remove(self) -> None:
        """Detach every hook; the model runs as if adaprec were never there."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for name in self._operand_linears:
            self._modules[name].__dict__.pop("forward", None)
        self._operand_linears = set()
