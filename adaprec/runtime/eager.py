"""Hooks that torch.compile runs eagerly instead of tracing.

A layer's region is opened in its forward pre-hook and closed in its forward hook. Dynamo cannot
trace an autocast context entered in one function and exited in another (it fails with
"Global autocast state changed while dynamo tracing", or leaves a half-entered context), and it
would guard on the monitor's per-step sampling flag, recompiling at every change until its
recompile limit. Hooks wrapped with :func:`eager` run outside the graph: the compiled model
breaks into one graph per region change, but every region, cast and statistic is exactly what
eager mode does.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["eager"]

F = TypeVar("F", bound=Callable)


def eager(fn: F) -> F:
    """``fn`` as a function Dynamo never traces (a no-op outside torch.compile)."""
    return torch.compiler.disable(fn, recursive=True)
