"""The auto executor: per layer, native autocast where the device runs the format fast,
emulation elsewhere.

It is a policy over two executors, not a third implementation: a
:class:`~adaprec.runtime.executors.native.NativeExecutor` gets the plan with every emulated
layer in fp32 (so it opens autocast regions for the native layers, switches autocast off and
casts inputs to fp32 around the others), an
:class:`~adaprec.runtime.executors.emulated.EmulatedExecutor` gets the plan with every native
layer in fp32 (so it rounds only the emulated ones). One pair of hooks per layer enters the
native half, then the emulated half, and leaves them in reverse order.

Decisions come from :mod:`~adaprec.runtime.executors.capability`, per layer: native for fp32
and for bf16/fp16 where the device computes the layer's family fast (bf16 on an
AMX/AVX512-BF16 CPU, fp16/bf16 on CUDA) *and* a probe of the layer's type in that format ran
(``nn.LSTM`` in bf16 fails on some CPUs); emulated elsewhere (fp16 on a CPU without
AVX512-FP16/AMX-FP16, where convolution training takes minutes per step) and always for fp8.
``executor.choices`` and a log line per layer show it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Iterator

from torch import nn

from adaprec.numerics.formats import FP32, Format, get_format
from adaprec.runtime.executors.base import hook_layers
from adaprec.runtime.executors.capability import layer_family, native_error, native_is_fast
from adaprec.runtime.executors.emulated import EmulatedExecutor
from adaprec.runtime.executors.native import NativeExecutor
from adaprec.runtime.plan import Plan

__all__ = ["AutoExecutor", "native_is_fast", "layer_family"]

log = logging.getLogger(__name__)


class AutoExecutor:
    """Native where fast, emulated elsewhere, layer by layer (see the module docstring).

    Args:
        model, layers, device_type: as for :class:`~adaprec.runtime.executors.native.NativeExecutor`.
        **emulation: options of the emulated half (``fp8``, ``skip_rounded``).
    """

    name = "auto"

    def __init__(self, model: nn.Module, layers: Sequence[str], device_type: str = "cpu",
                 **emulation: Any):
        self.device_type = device_type
        self.layers = list(layers)
        self.native = NativeExecutor(model, self.layers, device_type, hook_layers=False)
        self.emulated = EmulatedExecutor(model, self.layers, device_type, hook_layers=False,
                                         **emulation)
        modules = dict(model.named_modules())
        self._modules = {name: modules[name] for name in self.layers}
        self._families = {name: layer_family(modules[name]) for name in self.layers}
        self._formats: dict[str, Format] = {name: FP32 for name in self.layers}
        self._choices: dict[str, str] = {name: "native" for name in self.layers}
        self._plan: Plan | None = None
        self._logged: dict[str, str] = {}
        self._handles = hook_layers(model, self.layers, self._enter, self._exit)

    # -- plan ---------------------------------------------------------------------------------
    def _runs_native(self, fmt: Format, family: str, module: nn.Module | None = None) -> bool:
        if not native_is_fast(fmt, family, self.device_type):
            return False
        return module is None or native_error(module, fmt, self.device_type) is None

    def runs(self, layer: str, fmt: Format) -> bool:
        """Every format runs: what the device cannot run natively is emulated."""
        return True

    def set_plan(self, plan: Plan) -> None:
        """Split ``plan`` into its native and emulated halves and apply both."""
        if plan == self._plan:
            return
        self._plan = plan
        default = get_format(plan.default)
        if plan.region == "global" and self._global_emulated(default):
            self._set_global_emulated(plan)
            return
        # a global region (the autocast baseline) stays one native region where that format is
        # fast; where it is not, the emulated half runs it as one region (above); other formats
        # in a global plan (none registered today) are emulated per layer like a uniform plan
        root_native = self._runs_native(default, "matmul")
        region = plan.region if root_native else "layer"
        if region == "global" and not all(self._runs_native(default, self._families[n], self._modules[n])
                                          for n in self.layers):
            region = "layer"  # a layer the device cannot run natively needs its own region
        native, emulated = {}, {}
        for name in self.layers:
            fmt = self._formats[name] = get_format(plan.format_of(name))
            fast = region == "global" or self._runs_native(fmt, self._families[name],
                                                           self._modules[name])
            self._choices[name] = "native" if fast else "emulated"
            native[name], emulated[name] = (fmt.name, FP32.name) if fast else (FP32.name, fmt.name)
        self.native.set_plan(Plan(native, default=default.name if root_native else FP32.name,
                                  region=region))
        self.emulated.set_plan(Plan(emulated))
        self._log_choices()

    def _global_emulated(self, default: Format) -> bool:
        """A global plan (the autocast baseline) in a 16-bit format the device does not run
        fast: the emulated half runs it as one ``torch.autocast`` region with fp32 kernels, so
        autocast's own op lists decide per op — also for the ops outside every layer — exactly
        as natively, only the arithmetic is emulated (recorded per layer as ``emulated``)."""
        return (not self._runs_native(default, "matmul") and self.emulated.runs_as_autocast(default)
                and all(self.emulated.autocast_runs(n, default) for n in self.layers))

    def _set_global_emulated(self, plan: Plan) -> None:
        for name in self.layers:
            self._formats[name] = get_format(plan.default)
            self._choices[name] = "emulated"
        self.native.set_plan(plan)     # the one torch.autocast region (its layer hooks idle)
        self.emulated.set_plan(plan)   # fp32 kernels for every 16-bit op in it, no rounding frames
        self._log_choices()

    def _log_choices(self) -> None:
        for name, choice in self._choices.items():
            fmt = self._formats[name].name
            text = f"{fmt} {choice}"
            if self._logged.get(name) != text:
                log.info("auto executor: %s (%s) runs %s %s", name, self._families[name], fmt, choice)
                self._logged[name] = text

    def format_of(self, layer: str) -> Format:
        return self._formats[layer]

    @property
    def choices(self) -> dict[str, str]:
        """How each layer runs now: ``"native"`` (fp32 or autocast) or ``"emulated"``."""
        return dict(self._choices)

    # -- regions ------------------------------------------------------------------------------
    @contextmanager
    def region(self) -> Iterator[None]:
        """The outermost region is the native half's: autocast in the plan's default format
        where that is fast, autocast off elsewhere; the emulated half's fp32 kernels for its
        16-bit layers."""
        self.emulated.begin_forward()
        with self.native.region(), self.emulated.kernels():
            yield

    def backward_region(self) -> AbstractContextManager[None]:
        """The emulated half's backward context (its 16-bit layers' kernels in fp32)."""
        return self.emulated.backward_region()

    def _enter(self, name: str, module: nn.Module, args: tuple, kwargs: dict):
        changed = self.native.enter_layer(name, module, args, kwargs)
        if changed is not None:
            args, kwargs = changed
        changed = self.emulated.enter_layer(name, module, args, kwargs)
        return changed if changed is not None else (args, kwargs)

    def _exit(self, name: str, module: nn.Module, output: Any):
        changed = self.emulated.exit_layer(name, module, output)
        output = changed if changed is not None else output
        changed = self.native.exit_layer(name, module, output)
        return changed if changed is not None else output

    # -- run state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.emulated.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.emulated.load_state_dict(state)

    def remove(self) -> None:
        """Detach every hook; the model runs as if adaprec were never there."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.native.remove()
        self.emulated.remove()
