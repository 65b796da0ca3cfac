"""Count, once per model and input shape, what each layer computes and moves.

A layer's FLOPs are its *own*: ops issued while it is the innermost enclosing layer. An attention
core marked ``adaprec_layer = True`` owns its matmuls; a Linear inside it would own its addmm.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (its per-op formulas and its dispatch,
which also decomposes composite ops such as CPU attention into counted matmuls). Its own module
breakdown is not used: it is hierarchical and, in backward, attributes a branch's FLOPs to every
module whose backward is "open" at the time, so a ResNet shortcut conv would be charged the FLOPs
of the whole residual branch. Instead the counter charges each op to the *current layer*:
in forward, the innermost layer on a stack kept by forward pre/post hooks; in backward, the layer
that created the autograd node being run (every node is tagged with its layer while the forward
runs, and a node pre-hook sets the current layer just before the engine executes it).

Only matmul/conv/attention kernels have FLOPs; elementwise work (norms, activations, softmax) is
memory-bound and enters the cost through the bytes moved, recorded from forward hooks.

The same dispatch also counts *kernels* (every ATen op that is not a view or an allocation), per
layer and phase, for the per-kernel fixed cost, and the bytes those kernels read and write for
the ops no layer owns (residual adds, pooling, functional activations, the loss).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from adaprec.runtime.executors.emulated import GRID_PRESERVING
from adaprec.runtime.layers import discover_layers

__all__ = ["LayerCount", "OP_KINDS", "count_layers"]

OP_KINDS = ("matmul", "conv")  # FLOP-counted op kinds; a local profile may rate each separately


@dataclass
class LayerCount:
    """What one layer computes and moves in one training step (forward + backward)."""

    name: str
    fwd_flops: dict[str, int] = field(default_factory=dict)  # op kind -> FLOPs
    bwd_flops: dict[str, int] = field(default_factory=dict)
    act_in_elems: int = 0   # floating elements of the tensors the layer reads in forward
    act_out_elems: int = 0  # ... and writes
    param_elems: int = 0    # direct (recurse=False) parameter elements
    calls: int = 0
    fwd_kernels: int = 0    # ATen kernels (views and allocations excluded) the layer runs in forward
    bwd_kernels: int = 0    # ... and its autograd nodes run in backward
    in_tensors: int = 0     # floating tensors read in forward (summed over calls)
    out_tensors: int = 0    # ... and written
    param_tensors: int = 0  # direct parameter tensors
    stock: bool = True      # a torch.nn module (one op); False: custom code, rounded op by op
    inner_ops: int = 0      # forward ops whose outputs emulation rounds inside a custom layer
    inner_out_elems: int = 0
    fwd_bytes: int = 0      # bytes the layer's kernels read + write in forward, as counted (fp32)
    bwd_bytes: int = 0
    fed_by: str | None = None  # the layer whose outputs are all of this one's floating inputs
                               # (directly or through grid-preserving modules such as ReLU)

    @property
    def fwd_total(self) -> int:
        return sum(self.fwd_flops.values())

    @property
    def bwd_total(self) -> int:
        return sum(self.bwd_flops.values())

    @property
    def macs(self) -> int:
        """Forward multiply-accumulates (FLOPs / 2), the quantity BOPs are built on."""
        return self.fwd_total // 2


def _op_kind(op) -> str:
    return "conv" if "conv" in str(op) else "matmul"


# ATen ops (packets) whose outputs the emulated executor rounds inside a custom layer: the
# dispatch-level images of its rounded torch functions (matmul, conv, softmax, add, mul, ...)
_ROUNDED_ATEN = frozenset({"mm", "bmm", "addmm", "baddbmm", "convolution", "_softmax", "_log_softmax",
                           "add", "sub", "mul", "div", "native_dropout", "_scaled_dot_product_flash_attention",
                           "_scaled_dot_product_efficient_attention"})
_NOT_KERNELS = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided",
                          "lift_fresh", "_local_scalar_dense"})
_is_view_cache: dict = {}


def _is_kernel(packet) -> bool:
    """Whether an ATen op runs a kernel (not a view, alias or bare allocation)."""
    hit = _is_view_cache.get(packet)
    if hit is None:
        name = packet.__name__.split(".")[-1]
        overloads = packet.overloads()
        view = bool(overloads) and getattr(packet, overloads[0]).is_view
        hit = _is_view_cache[packet] = not view and name not in _NOT_KERNELS
    return hit


def _op_name(packet) -> str:
    return packet.__name__.split(".")[-1]


def _nbytes(obj) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj) if t.is_floating_point())


def _elems(obj) -> int:
    return sum(t.numel() for t in _tensors(obj) if t.is_floating_point())


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                         transposed, _output_padding, _groups, output_mask, out_shape=None, **_) -> int:
    """Analytic conv backward: each requested gradient (input, weight) costs one forward.

    Replaces torch's formula, whose weight-gradient term ignores ``groups`` (a grouped conv's
    backward came out ``groups + 1`` forwards instead of 2). ``w_shape`` is (out, in/groups, *k),
    so ``2 * batch * spatial * prod(w_shape)`` is the forward FLOPs, grouped or not.
    """
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    fwd = 2 * x_shape[0] * math.prod(spatial) * math.prod(w_shape)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


class _LayerFlopCounter(FlopCounterMode):
    """FlopCounterMode that charges each counted op to ``self.current`` (a layer, or ``None``)."""

    def __init__(self):
        super().__init__(display=False,
                         custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
        self.current: str | None = None
        self.phase = "fwd"
        self.own: dict[tuple[str, str | None], dict[str, int]] = {}
        self.kernels: dict[tuple[str, str | None], int] = {}
        self.bytes: dict[tuple[str, str | None], int] = {}
        self.inner: dict[str | None, list[int]] = {}   # layer -> [rounded ops, their output elems]
        self._stack: list[str | None] = [None]
        self._tags: dict = {}       # autograd node -> layer that created it
        self._node_hooks: list = []
        self.producer: dict[int, tuple[str, torch.Tensor]] = {}   # id(output) -> (layer, tensor)

    def _count_flops(self, func_packet, out, args, kwargs):  # overrides the module-tree charging
        key = (self.phase, self.current)
        formula = self.flop_registry.get(func_packet)
        if formula is not None:
            bucket = self.own.setdefault(key, {})
            kind = _op_kind(func_packet)
            bucket[kind] = bucket.get(kind, 0) + int(formula(*args, **kwargs, out_val=out))
        if _is_kernel(func_packet):
            self.kernels[key] = self.kernels.get(key, 0) + 1
            self.bytes[key] = self.bytes.get(key, 0) + _nbytes(args) + _nbytes(kwargs) + _nbytes(out)
            if self.phase == "fwd" and _op_name(func_packet) in _ROUNDED_ATEN:
                inner = self.inner.setdefault(self.current, [0, 0])
                inner[0] += 1
                inner[1] += _elems(out)
        return out

    def enter_layer(self, name: str, inputs) -> None:
        self.tag_graph(inputs, self._stack[-1])  # nodes made before this layer belong to the caller
        self._stack.append(name)
        self.current = name

    def exit_layer(self, name: str, outputs) -> None:
        self.tag_graph(outputs, name)
        self._stack.pop()
        self.current = self._stack[-1]

    def tag_graph(self, obj, layer: str | None) -> None:
        """Tag every not yet tagged autograd node reachable from ``obj``'s tensors with ``layer``."""
        todo = [t.grad_fn for t in _tensors(obj) if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or node in self._tags:
                continue
            self._tags[node] = layer
            self._node_hooks.append(node.register_prehook(self._make_setter(layer)))
            todo.extend(nxt for nxt, _ in node.next_functions)

    def _make_setter(self, layer: str | None):
        def set_current(grad_outputs):
            self.current = layer
        return set_current

    def release(self) -> None:
        for h in self._node_hooks:
            h.remove()
        self._node_hooks.clear()
        self._tags.clear()


def count_layers(model: nn.Module, example_inputs: Sequence | torch.Tensor,
                 loss_fn: Callable | None = None, layers: Sequence[str] | None = None
                 ) -> tuple[list[LayerCount], LayerCount]:
    """Run one forward + backward and count per layer; the model's state is left untouched.

    Returns (layer counts in forward execution order, a count named ``""`` of what no layer
    owns: FLOPs, kernels and kernel bytes outside every layer, the loss included). Gradients are taken for parameters only, as in training, so the first
    layer has no input-gradient FLOPs. ``loss_fn(output) -> scalar`` defaults to the sum of the
    floating outputs.
    """
    inputs = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
    names = list(layers) if layers is not None else discover_layers(model)
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"layers {unknown[:5]} are not modules of the model; pass names from "
                         f"model.named_modules() (e.g. {list(modules)[1:4]})")
    records = {n: LayerCount(n, param_elems=sum(p.numel() for p in modules[n].parameters(recurse=False)),
                             param_tensors=len(list(modules[n].parameters(recurse=False))),
                             stock=type(modules[n]).__module__.startswith("torch.nn")
                             and not getattr(modules[n], "adaprec_layer", False))
               for n in names}
    counter, order = _LayerFlopCounter(), []
    handles = [h for n in names for h in _layer_hooks(modules[n], records[n], counter, order)]
    handles += [m.register_forward_hook(_pass_producer(counter)) for n, m in modules.items()
                if n not in records and isinstance(m, GRID_PRESERVING)]
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    try:
        # fork the RNGs so dropout in the counting pass leaves the training stream untouched
        cuda = sorted({t.device.index or 0 for t in _tensors(inputs) if t.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda), counter:
            out = model(*inputs)
            loss = loss_fn(out) if loss_fn is not None else _default_loss(out)
            counter.tag_graph(loss, None)
            counter.phase = "bwd"
            params = [p for p in model.parameters() if p.requires_grad]
            if loss.requires_grad and params:
                torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        counter.release()
        counter.producer.clear()
        for h in handles:
            h.remove()
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
    other = LayerCount("")
    for n, rec in [*records.items(), (None, other)]:
        rec.fwd_flops = counter.own.get(("fwd", n), {})
        rec.bwd_flops = counter.own.get(("bwd", n), {})
        rec.fwd_kernels, rec.bwd_kernels = counter.kernels.get(("fwd", n), 0), counter.kernels.get(("bwd", n), 0)
        rec.fwd_bytes, rec.bwd_bytes = counter.bytes.get(("fwd", n), 0), counter.bytes.get(("bwd", n), 0)
        rec.inner_ops, rec.inner_out_elems = counter.inner.get(n, (0, 0))
    ordered = order + [n for n in names if n not in order]  # layers never called come last
    return [records[n] for n in ordered], other


def _fed_by(counter: _LayerFlopCounter, inputs) -> str | None:
    """The one layer that produced every floating tensor of ``inputs``, else None."""
    found = {counter.producer.get(id(t), (None,))[0] for t in _tensors(inputs) if t.is_floating_point()}
    return found.pop() if len(found) == 1 else None


def _pass_producer(counter: _LayerFlopCounter):
    """Forward hook of a grid-preserving module: its output has its input's producer."""
    def hook(mod, args, output):
        layer = _fed_by(counter, args[:1])
        if layer is not None and isinstance(output, torch.Tensor):
            counter.producer[id(output)] = (layer, output)
    return hook


def _layer_hooks(module: nn.Module, record: LayerCount, counter: _LayerFlopCounter, order: list[str]):
    def pre(mod, args, kwargs):
        if record.calls == 0:
            record.fed_by = _fed_by(counter, (args, kwargs))
        counter.enter_layer(record.name, (args, kwargs))

    def post(mod, args, kwargs, output):
        counter.exit_layer(record.name, output)
        for t in _tensors(output):
            counter.producer[id(t)] = (record.name, t)  # the tensor is kept: ids stay unique
        if record.calls == 0:
            order.append(record.name)
        record.calls += 1
        record.act_in_elems += _elems(args) + _elems(kwargs)
        record.act_out_elems += _elems(output)
        record.in_tensors += _count_floating(args) + _count_floating(kwargs)
        record.out_tensors += _count_floating(output)
    return (module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, with_kwargs=True))


def _count_floating(obj) -> int:
    return sum(1 for t in _tensors(obj) if t.is_floating_point())


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _default_loss(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    if isinstance(out, dict):
        out = list(out.values())
    tensors = [o for o in out if isinstance(o, torch.Tensor) and o.is_floating_point()]
    if not tensors:
        raise ValueError("model output has no floating tensor; pass loss_fn=lambda out: <scalar>")
    return sum(t.float().sum() for t in tensors)
