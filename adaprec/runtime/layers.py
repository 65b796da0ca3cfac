"""Which modules of a model are *layers*: the units a plan assigns a format to."""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import nn

__all__ = ["discover_layers", "is_layer"]


def is_layer(module: nn.Module) -> bool:
    """A module is a layer when it owns parameters directly, or declares ``adaprec_layer = True``
    (a parameterless block that calls functional ops itself, such as an attention core)."""
    if getattr(module, "adaprec_layer", False):
        return True
    return next(module.parameters(recurse=False), None) is not None


def discover_layers(model: nn.Module, extra: Iterable[str] = ()) -> list[str]:
    """Qualified names of the model's layers, in registration order.

    ``extra`` adds glob patterns of module names to treat as layers too; a pattern that names
    no module is an error. The root module is a layer (named ``""``) only when it owns
    parameters itself (``AdaptivePrecision(nn.LSTM(...))``: one layer); otherwise its region is
    the plan's default.
    """
    names = [name for name, _ in model.named_modules() if name]
    chosen = {name for name, m in model.named_modules() if name and is_layer(m)}
    if next(model.parameters(recurse=False), None) is not None:
        names.insert(0, "")
        chosen.add("")
    for pattern in extra:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ValueError(f"layer pattern {pattern!r} matches no module of {type(model).__name__}")
        chosen.update(hits)
    return [name for name in names if name in chosen]
