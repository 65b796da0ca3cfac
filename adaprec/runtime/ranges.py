"""Range rules of a class's arguments, declared once beside the class.

The one implementation of "is this value allowed": a Python user constructing a class gets it on
every call, and the CLI runs the same rules on the composed config before anything is written
(``adaprec.app.schema.validate``, which also builds the typed Hydra schemas from the class
signatures: the default of each argument is written only in its signature)::

    @ranges("controller", interval=rule(ge=1), formats=rule(each=True, nonempty=True, **FORMAT))
    class MyController:
        def __init__(self, interval: int = 10, formats: Sequence[str] = ("bf16", "fp32")): ...

    MyController(interval=0)
    # ConfigError: controller.interval=0 is out of range; allowed: >= 1

No hydra or omegaconf here: controllers and the rest of the core use it.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from adaprec.numerics.formats import FORMATS, get_format

__all__ = ["ConfigError", "Rule", "rule", "ranges", "ranges_of", "check_args", "FORMAT",
           "is_format"]


class ConfigError(ValueError):
    """A value out of its allowed range (the one-line message names the key and the range)."""


@dataclass(frozen=True)
class Rule:
    """An allowed range: ``ok(value)`` decides, ``allowed`` says it in words.

    ``names`` (from ``rule(names=...)``) marks a closed set of names: typed schemas make the
    field an Enum of them, so the config rejects other names as a type error."""

    ok: Callable[[Any], bool]
    allowed: str
    names: tuple[str, ...] | None = None

    def check(self, key: str, value: Any) -> None:
        """Raise a one-line :class:`ConfigError` when ``value`` (not None) breaks the rule."""
        if value is None or _safe(self.ok, value):
            return
        if self.names is not None:
            raise ConfigError(f"{key}={value!r} is unknown; allowed: {self.allowed}")
        raise ConfigError(f"{key}={value!r} is out of range; allowed: {self.allowed}")


def rule(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, choices: Iterable[Any] | None = None,
         names: Iterable[str] | None = None, each: bool = False, nonempty: bool = False,
         ok: Callable[[Any], bool] | None = None, allowed: str | None = None,
         why: str | None = None) -> Rule:
    """A range rule: ``rule(ge=0, le=1)`` (allowed: ``[0, 1]``), ``rule(gt=0)`` (``> 0``),
    ``rule(choices=("bf16", "fp16"))``, ``rule(names=POLICIES)`` (a closed set of names),
    ``rule(ok=predicate, allowed="in words")``. ``each=True`` applies it to every value of a
    list or dict (``nonempty=True``: at least one); ``why`` is appended to the allowed text.
    ``None`` (an optional argument left unset) always passes."""
    checks: list[Callable[[Any], bool]] = []
    if ge is not None:
        checks.append(lambda v: v >= ge)
    if gt is not None:
        checks.append(lambda v: v > gt)
    if le is not None:
        checks.append(lambda v: v <= le)
    if lt is not None:
        checks.append(lambda v: v < lt)
    texts = [_bounds_text(ge, gt, le, lt)] if (ge, gt, le, lt) != (None,) * 4 else []
    closed = tuple(names) if names is not None else None
    if closed is not None:
        checks.append(lambda v: str(getattr(v, "value", v)) in closed)
        texts.append(", ".join(closed))
    if choices is not None:
        allowed_set = tuple(choices)
        checks.append(lambda v: v in allowed_set)
        texts.append("one of " + ", ".join(map(str, allowed_set)))
    if ok is not None:
        checks.append(ok)
        texts.append(allowed or ok.__name__)
    text = " and ".join(texts)
    single = lambda v: all(_safe(c, v) for c in checks)  # noqa: E731
    if each:
        test = lambda v: (not nonempty or len(_values(v)) > 0) and all(single(x) for x in _values(v))  # noqa: E731
        text = f"each value {text}" + (" (at least one)" if nonempty else "")
    else:
        test = single
    return Rule(test, text + (f" ({why})" if why else ""), closed)


def _bounds_text(ge, gt, le, lt) -> str:
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else None
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else None
    if low and high:
        return f"{low}, {high}"
    if low:
        return (">= " if ge is not None else "> ") + low[1:]
    return ("<= " if le is not None else "< ") + high[:-1]


def _safe(check: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(check(value))
    except (TypeError, ValueError, KeyError):
        return False


def _values(v: Any) -> list:
    if isinstance(v, Mapping):
        return list(v.values())
    if isinstance(v, (str, bytes)):
        raise TypeError("a list was expected, not one string")  # the rule then fails
    return list(v)


def is_format(name: Any) -> bool:
    """True for a registered format name or alias, or a per-role entry (a ``{role: format}``
    mapping or its ``fprop=..,dgrad=..`` string): what ``get_format`` accepts."""
    get_format(name if isinstance(name, Mapping) else str(name))  # ValueError: caught by the rule
    return True


# rule(**FORMAT): a format name; rule(each=True, **FORMAT): a list (or dict) of them
# (per-role entries pass too; the message names the plain formats a user most likely meant)
FORMAT = dict(ok=is_format, allowed="a format name: " + ", ".join(FORMATS))


def ranges(prefix: str, /, **rules: Rule) -> Callable[[type], type]:
    """Class decorator: the range rules of ``__init__``'s arguments, checked on every
    construction (errors read ``<prefix>.<argument>=<value> is out of range; allowed: ...``)
    and readable by config tools through :func:`ranges_of`."""
    def wrap(cls: type) -> type:
        init = cls.__init__
        sig = inspect.signature(init)
        unknown = sorted(set(rules) - set(sig.parameters))
        if unknown:
            raise TypeError(f"{cls.__name__}: range rules for unknown arguments {unknown}")

        @functools.wraps(init)
        def checked_init(self, *args, **kwargs):
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            check_args(cls, bound.arguments, prefix + ".")
            init(self, *args, **kwargs)

        cls.__init__ = checked_init
        cls.__ranges__ = MappingProxyType(dict(rules))
        return cls
    return wrap


def ranges_of(obj: Any) -> Mapping[str, Rule]:
    """The rules declared with :func:`ranges` on ``obj`` (a class), else an empty mapping."""
    return getattr(obj, "__ranges__", MappingProxyType({}))


def check_args(obj: Any, values: Mapping[str, Any], prefix: str = "") -> None:
    """Check each value that has a rule on ``obj``; keys without a value are skipped."""
    for name, r in ranges_of(obj).items():
        if name in values:
            r.check(prefix + name, values[name])
