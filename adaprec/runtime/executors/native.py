"""Executors apply a Plan to a model at run time.

The native executor opens one autocast region per layer with forward hooks: a layer's own ops
run in its format, children override their parent, and fp32 layers run with autocast off and
their floating inputs cast up. The hooks read the current format from a dict, so switching
plans between steps is a dict update: no re-wrapping, no model copy, no new hooks. A plan with
``region="global"`` runs as one ``torch.autocast`` region instead (the per-layer hooks idle).

Where a layer's outputs go back to is the region it was called in: the autocast state current
when its pre-hook ran (its parent layer's region, ``ap.autocast()``'s, or the one
``torch.utils.checkpoint`` restores when it recomputes a block during backward). Under
``ap.autocast()`` that is the nearest planned ancestor's format, else the plan's default
(:meth:`NativeExecutor.enclosing_format`). adaprec keeps no stack of formats of its own, so a
recomputation, which runs outside ``ap.autocast()``, runs every layer exactly as the forward
did. Outputs reach their consumer in the consumer's dtype: a 16-bit output is cast to the
enclosing region's dtype when it differs (fp16 into a bf16 region becomes bf16, anything into
an fp32 region fp32), so no op ever mixes fp16 with bf16 (autocast's promote ops such as
``torch.cat`` refuse that). A 16-bit layer receiving the other 16-bit dtype gets it as fp32
(exact), which autocast then casts as it would any fp32 input.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.utils._pytree as pytree
from torch import nn

from adaprec.numerics.formats import FP32, Format, get_format
from adaprec.runtime.executors.base import hook_layers as _hook_layers
from adaprec.runtime.executors.capability import native_error
from adaprec.runtime.plan import Plan

__all__ = ["NativeExecutor", "cast_floating", "region_dtype", "planned_parents"]

_16BIT = (torch.float16, torch.bfloat16)


def cast_floating(obj: Any, dtype: torch.dtype, only: tuple[torch.dtype, ...] | None = None) -> Any:
    """Cast every floating tensor inside ``obj`` (any pytree: tuples, lists, dicts, namedtuples,
    Hugging Face ``ModelOutput``s keep their type) to ``dtype``; ``only``: just tensors of those
    dtypes. Returns ``obj`` itself when nothing needed a cast."""
    changed = False

    def cast(t):
        nonlocal changed
        if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype
                and (only is None or t.dtype in only)):
            changed = True
            return t.to(dtype)
        return t
    if isinstance(obj, torch.Tensor):
        return cast(obj)
    out = pytree.tree_map(cast, obj)
    return out if changed else obj


def region_dtype(device_type: str) -> torch.dtype:
    """The compute dtype of the autocast region current on this thread (fp32: autocast off)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.float32


def planned_parents(model: nn.Module, layers: Sequence[str]) -> dict[str, str | None]:
    """Each layer's nearest ancestor among ``layers`` in the module tree (None: the root's)."""
    chosen = set(layers)
    root = "" if "" in chosen else None  # the root is a layer when it owns parameters itself
    out: dict[str, str | None] = {}
    for name in layers:
        parts = name.split(".") if name else []
        out[name] = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)
                          if ".".join(parts[:i]) in chosen), root if name else None)
    return out


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
        self._parents = planned_parents(model, self.layers)
        modules = dict(model.named_modules())
        self._modules = {name: modules[name] for name in self.layers}
        # per thread (the autograd engine may recompute on its own): for each open layer, the
        # autocast context it entered (None: the region already matched) and the dtype of the
        # region it was called in. Only pairs pre-/post-hook; no format is read from it.
        self._open = threading.local()
        self._handles = (_hook_layers(model, self.layers, self.enter_layer, self.exit_layer)
                         if hook_layers else [])

    # -- plan ---------------------------------------------------------------------------------
    def set_plan(self, plan: Plan) -> None:
        """Apply ``plan`` from the next forward on (``plan.region``: per layer or global).

        A layer in a format the device cannot run natively is an error naming both."""
        formats = {name: get_format(plan.format_of(name)) for name in self.layers}
        default = get_format(plan.default)
        for name, fmt in formats.items():
            if not self.runs(name, default if plan.region == "global" else fmt):
                fmt = default if plan.region == "global" else fmt
                raise ValueError(
                    f"layer {name or '(the model)'!r} ({type(self._modules[name]).__name__}) cannot run "
                    f"{fmt.name} natively on {self.device_type} "
                    f"({native_error(self._modules[name], fmt, self.device_type)}); use executor=emulated "
                    f"or executor=auto (it emulates only what the device cannot run), or another "
                    f"format for that layer")
        self._default, self._formats = default, formats
        self._global = self._default if plan.region == "global" else None

    def runs(self, layer: str, fmt: Format) -> bool:
        """Whether the device trains ``layer`` in ``fmt`` natively
        (:func:`~adaprec.runtime.executors.capability.native_error`, probed once per layer type)."""
        return native_error(self._modules[layer], fmt, self.device_type) is None

    def format_of(self, layer: str) -> Format:
        return self._formats[layer]

    def enclosing_format(self, layer: str) -> Format:
        """The region ``layer`` runs inside under ``ap.autocast()``: its nearest planned
        ancestor's format, else the plan's default (the global format under a global plan)."""
        if self._global is not None:
            return self._global
        parent = self._parents[layer]
        return self._formats[parent] if parent is not None else self._default

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
        with self._autocast(self._global or self._default):
            yield

    def _stack(self) -> list:
        stack = getattr(self._open, "stack", None)
        if stack is None:
            stack = self._open.stack = []
        return stack

    def enter_layer(self, name: str, module: nn.Module, args: tuple, kwargs: dict):
        """Open layer ``name``'s region (forward pre-hook)."""
        if self._global is not None:
            return None
        fmt = self._formats[name]
        outer = region_dtype(self.device_type)
        want = torch.float32 if fmt == FP32 else fmt.dtype if fmt.native else None  # None: _autocast refuses
        ctx = None
        if want != outer:  # entering autocast again in the same state would be a no-op
            try:
                ctx = self._autocast(fmt)
            except ValueError as exc:
                self._stack().append((None, outer))  # exit_layer (always called) pops it
                raise ValueError(f"layer {name}: {exc}") from None
            ctx.__enter__()
        self._stack().append((ctx, outer))
        # fp32 layers compute with autocast off: every 16-bit input goes up. A 16-bit layer
        # gets the *other* 16-bit dtype as fp32 (exact), never a mix of the two
        only = _16BIT if fmt == FP32 else tuple(d for d in _16BIT if d != want)
        new_args, new_kwargs = cast_floating(args, torch.float32, only), cast_floating(kwargs, torch.float32, only)
        if new_args is args and new_kwargs is kwargs:
            return None
        return new_args, new_kwargs

    def exit_layer(self, name: str, module: nn.Module, output: Any):
        """Close layer ``name``'s region (forward hook); a new output or None."""
        if self._global is not None:
            return None
        ctx, outer = self._stack().pop()
        if ctx is not None:
            ctx.__exit__(None, None, None)
        # the caller gets its own region's dtype: an fp32 caller fp32 (its ops run with autocast
        # off, where a 16-bit operand would fail or promote differently), a 16-bit caller its
        # 16-bit dtype in place of the other one; fp32 outputs stay fp32 (autocast casts them)
        only = _16BIT if outer == torch.float32 else tuple(d for d in _16BIT if d != outer)
        new = cast_floating(output, outer, only)
        return None if new is output else new

    def remove(self) -> None:
        """Detach every hook; the model runs as if adaprec were never there."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
