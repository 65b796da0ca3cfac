"""Executors apply a Plan to a model at run time: ``native`` (per-layer torch.autocast),
``emulated`` (fp32 kernels on values rounded to each layer's format) and ``auto`` (a per-layer
policy over the two). Each satisfies :class:`~adaprec.runtime.executors.base.Executor`."""
from adaprec.runtime.executors.auto import AutoExecutor
from adaprec.runtime.executors.base import Executor
from adaprec.runtime.executors.emulated import EmulatedExecutor
from adaprec.runtime.executors.native import NativeExecutor

__all__ = ["Executor", "EXECUTORS", "NativeExecutor", "EmulatedExecutor", "AutoExecutor"]

EXECUTORS = {"native": NativeExecutor, "emulated": EmulatedExecutor, "auto": AutoExecutor}
