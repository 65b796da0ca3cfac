"""The one place adaprec calls ``hydra.utils.instantiate`` (Hydra 1.4 changes ``_target_``
rules; keeping every call here keeps that migration to one function)."""
from __future__ import annotations

from typing import Any

import hydra.utils
from omegaconf import DictConfig

__all__ = ["instantiate"]


def instantiate(node: DictConfig | dict, **kwargs: Any) -> Any:
    """Instantiate a config node with ``_target_``; containers arrive as plain Python."""
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except hydra.errors.InstantiationException as exc:
        # Hydra wraps the real error in several lines; keep the cause on one line
        cause = exc.__cause__ or exc
        target = node.get("_target_", "?") if hasattr(node, "get") else "?"
        raise ValueError(f"could not build {target}: {cause}") from exc
