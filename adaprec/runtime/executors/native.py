"""Executors apply a Plan to a model at run time.

The native executor opens one autocast region per layer with forward hooks: a layer's own ops
run in its format, children override their parent, and fp32 layers run with autocast off and
their floating inputs cast up. The hooks read the current format from a dict, so switching
plans between steps is a dict update: no re-wrapping, no model copy, no new hooks.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from adaprec.numerics.formats import FP32, Format, get_format
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

    ``global_dtype`` switches to one global autocast region (the ``autocast`` baseline): the
    per-layer hooks then do nothing and :meth:`region` is a plain ``torch.autocast``.
    """

    name = "native"

    def __init__(self, model: nn.Module, layers: Sequence[str], device_type: str = "cpu"):
        self.device_type = device_type
        self.layers = list(layers)
        self._formats: dict[str, Format] = {name: FP32 for name in self.layers}
        self._default: Format = FP32
        self._global: Format | None = None
        # each entry: (format of the region, the autocast context entered or None if inherited)
        self._stack: list[tuple[Format, Any]] = []
        modules = dict(model.named_modules())
        self._handles = []
        for name in self.layers:
            mod = modules[name]
            self._handles.append(mod.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            self._handles.append(mod.register_forward_hook(self._post_hook(name), always_call=True))

    # -- plan ---------------------------------------------------------------------------------
    def set_plan(self, plan: Plan, global_region: bool = False) -> None:
        """Apply ``plan`` from the next forward on. ``global_region``: one autocast for all."""
        self._default = get_format(plan.default)
        for name in self.layers:
            self._formats[name] = get_format(plan.format_of(name))
        self._global = self._default if global_region else None

    def format_of(self, layer: str) -> Format:
        return self._formats[layer]

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

    def _pre_hook(self, name: str):
        def hook(module, args, kwargs):
            if self._global is not None:
                return None
            fmt = self._formats[name]
            parent = self._stack[-1][0] if self._stack else None
            if fmt == parent:  # same format as the enclosing region: nothing to switch
                self._stack.append((fmt, None))
                return None
            ctx = self._autocast(fmt)
            ctx.__enter__()
            self._stack.append((fmt, ctx))
            if fmt == FP32:
                return cast_floating(args, torch.float32), cast_floating(kwargs, torch.float32)
            return None
        return hook

    def _post_hook(self, name: str):
        def hook(module, args, output):
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
        return hook

    def remove(self) -> None:
        """Detach every hook; the model runs as if adaprec were never there."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
