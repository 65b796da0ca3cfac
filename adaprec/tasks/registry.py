"""The task registry: ``@register_task`` adds a task, :func:`task_names` lists them."""
from __future__ import annotations

from adaprec.tasks.base import Task

__all__ = ["register_task", "unregister_task", "get_task", "task_names", "quality_metrics",
           "higher_is_better"]

_TASKS: dict[str, Task] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    for attr in ("name", "quality", "higher_is_better"):
        if not hasattr(cls, attr):
            raise TypeError(f"task {cls.__name__} must set the class attribute {attr!r}")
    old = _TASKS.get(cls.name)
    if old is not None and type(old).__qualname__ != cls.__qualname__:
        raise ValueError(f"task {cls.name!r} is already registered by {type(old).__qualname__}; "
                         "pick another name or unregister_task() it first")
    _TASKS[cls.name] = cls()
    return cls


def unregister_task(name: str) -> None:
    """Remove a task (for tests and notebooks that define one for a while)."""
    _TASKS.pop(name, None)


def get_task(name: str) -> Task:
    """The registered task ``name``; ``ValueError`` listing the registered ones otherwise."""
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"task must be one of {task_names()}, got {name!r}") from None


def task_names() -> tuple[str, ...]:
    """Every registered task, in registration order."""
    return tuple(_TASKS)


def quality_metrics() -> tuple[tuple[str, bool], ...]:
    """``(metric, higher_is_better)`` of every task's quality, in registration order, then
    ``("val_loss", False)``: the order in which a result's quality metric is looked for."""
    seen = dict.fromkeys((t.quality, t.higher_is_better) for t in _TASKS.values())
    return (*seen, ("val_loss", False))


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better: true only for a task's quality that says so."""
    return any(m == metric and higher for m, higher in quality_metrics())
