"""Executors apply a Plan to a model at run time.

The native executor opens one autocast region per layer with forward hooks: a layer's own ops
run in its format, children override their parent, and fp32 layers run with autocast off and
their floating inputs cast up. The hooks read the current format from a dict, so switching
plans between steps is a dict update: no re-wrapping, no model copy, no new hooks. A plan with
``region="global"`` runs as one ``torch.autocast`` region instead (the per-layer hooks idle).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from adaprec.numerics.formats import FP32, Format, get_format
from adaprec.runtime.executors.base import hook_layers as _hook_layers
from adaprec.runtime.plan import Plan

__all__ = ["NativeExecutor", "cast_floating"]


def cast_floating(obj: Any, dtype: torch.dtype) -> Any:
    """Cast every floating tensor inside (nested tuples/lists/dicts of) ``obj`` to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, tuple):
        return tuple(cast_floating(o, dtype) for o in obj)
    if isinstance(obj, list):
        return [cast_floating(o, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: cast_floating(v, dtype) for k, v in obj.items()}
    return obj


class NativeExecutor:
    """Per-layer ``torch.autocast`` regions driven by forward hooks on each layer.

    A global-region plan (the ``autocast`` baseline) switches to one autocast region: the
    per-layer hooks then do nothing and :meth:`region` is a plain ``torch.autocast``.
    ``hook_layers=False``: register no hooks; a composing executor calls
    :meth:`enter_layer`/:meth:`exit_layer` itself.
    """

    name = "native"

    def __init__(self, model: nn.Module, layers: Sequence[str], device_type: str = "cpu",
                 hook_layers: bool = True):
        self.device_type = device_type
        self.layers = list(layers)
        self._formats: dict[str, Format] = {name: FP32 for name in self.layers}
        self._default: Format = FP32
        self._global: Format | None = None
        # each entry: (format of the region, the autocast context entered or None if inherited)
        self._stack: list[tuple[Format, Any]] = []
        self._handles = (_hook_layers(model, self.layers, self.enter_layer, self.exit_layer)
                         if hook_layers else [])

    # -- plan ---------------------------------------------------------------------------------
    def set_plan(self, plan: Plan) -> None:
        """Apply ``plan`` from the next forward on (``plan.region``: per layer or global)."""
        self._default = get_format(plan.default)
        for name in self.layers:
            self._formats[name] = get_format(plan.format_of(name))
        self._global = self._default if plan.region == "global" else None

    def format_of(self, layer: str) -> Format:
        return self._formats[layer]

    def state_dict(self) -> dict:
        """Native autocast keeps no run state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # -- regions ------------------------------------------------------------------------------
    def _autocast(self, fmt: Format):
        if fmt == FP32:
            return torch.autocast(self.device_type, enabled=False)
        if not fmt.native:
            raise ValueError(f"format {fmt.name} has no native kernels; use executor=emulated")
        return torch.autocast(self.device_type, dtype=fmt.dtype)

    @contextmanager
    def region(self) -> Iterator[None]:
        """The outermost region (``ap.autocast()``): the plan's default format."""
        fmt = self._global or self._default
        ctx = self._autocast(fmt)
        with ctx:
            self._stack.append((fmt, ctx))
            try:
                yield
            finally:
                self._stack.pop()

    def enter_layer(self, name: str, module: nn.Module, args: tuple, kwargs: dict):
        """Open layer ``name``'s region (forward pre-hook)."""
        if self._global is not None:
            return None
        fmt = self._formats[name]
        parent = self._stack[-1][0] if self._stack else None
        if fmt == parent:  # same format as the enclosing region: nothing to switch
            self._stack.append((fmt, None))
            return None
        try:
            ctx = self._autocast(fmt)
        except ValueError as exc:
            self._stack.append((fmt, None))  # exit_layer (always called) pops it: regions unwind
            raise ValueError(f"layer {name}: {exc}") from None
        ctx.__enter__()
        self._stack.append((fmt, ctx))
        if fmt == FP32:
            return cast_floating(args, torch.float32), cast_floating(kwargs, torch.float32)
        return None

    def exit_layer(self, name: str, module: nn.Module, output: Any):
        """Close layer ``name``'s region (forward hook); a new output or None."""
        if self._global is not None:
            return None
        fmt, ctx = self._stack.pop()
        if ctx is not None:
            ctx.__exit__(None, None, None)
        # An fp32 caller expects fp32 tensors (its own ops run with autocast off, where a
        # bf16 operand would fail or silently promote differently); outside every region
        # the model's outputs are fp32 too.
        parent = self._stack[-1][0] if self._stack else FP32
        if parent == FP32 and fmt != FP32:
            return cast_floating(output, torch.float32)
        return None

    def remove(self) -> None:
        """Detach every hook; the model runs as if adaprec were never there."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
