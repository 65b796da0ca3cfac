"""The Executor protocol: what the facade (and a user's own executor) relies on.

An executor applies a :class:`~adaprec.runtime.plan.Plan` to a model at run time. How it runs
(one global autocast region or per-layer regions) is part of the plan (``plan.region``), not
a separate switch. Executors that compose (``auto``) drive the per-layer halves of others
through :class:`LayerRegions`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from torch import nn

from adaprec.numerics.formats import Format
from adaprec.runtime.eager import eager
from adaprec.runtime.plan import Plan

__all__ = ["Executor", "LayerRegions", "hook_layers"]


@runtime_checkable
class Executor(Protocol):
    """Applies plans to the layers it was built for.

    ``set_plan(plan)`` takes effect from the next forward; ``region()`` is the outermost
    region (``ap.autocast()``); ``state_dict()`` holds run state a bit-exact resume needs
    (tensors and plain values only, ``torch.load(weights_only=True)``-safe). Optional:
    ``backward_region()``, a context ``ap.backward`` enters around ``loss.backward()`` (the
    emulated executor computes backward's 16-bit kernels in fp32 there).
    """

    name: str
    layers: list[str]

    def set_plan(self, plan: Plan) -> None: ...

    def region(self) -> AbstractContextManager[None]: ...

    def format_of(self, layer: str) -> Format: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def remove(self) -> None: ...


class LayerRegions(Protocol):
    """The per-layer half of an executor, for executors composed of others.

    ``enter_layer`` runs before the layer's forward and may return new ``(args, kwargs)``;
    ``exit_layer`` runs after it and may return a new output (None: unchanged). A composing
    executor calls them in nesting order: enter A, enter B, ..., exit B, exit A.
    """

    def enter_layer(self, name: str, module: nn.Module, args: tuple, kwargs: dict
                    ) -> tuple[tuple, dict] | None: ...

    def exit_layer(self, name: str, module: nn.Module, output: Any) -> Any: ...


def hook_layers(model: nn.Module, layers: Sequence[str],
                enter: Callable[[str, nn.Module, tuple, dict], tuple[tuple, dict] | None],
                exit: Callable[[str, nn.Module, Any], Any]) -> list:
    """Register ``enter``/``exit`` as forward pre-/post-hooks on every layer; returns the
    handles. The post-hook always runs (also when the forward raises) so regions unwind."""
    modules = dict(model.named_modules())
    handles = []
    for name in layers:
        mod = modules[name]
        handles.append(mod.register_forward_pre_hook(
            eager(lambda m, a, k, name=name: enter(name, m, a, k)), with_kwargs=True))
        handles.append(mod.register_forward_hook(
            eager(lambda m, a, o, name=name: exit(name, m, o)), always_call=True))
    return handles
