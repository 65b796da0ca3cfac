"""Typed Hydra schemas generated from the classes themselves: one field per ``__init__``
argument, its type from the annotation and its default from the signature (the one place a
default is written), a closed set of names (``rule(names=...)``) as an Enum. The range rules stay
on the class (``adaprec.runtime.ranges``); ``adaprec.app.schema.validate`` runs them on the
composed config.

Every controller in ``adaprec.controllers.__all__`` that declares its ranges gets a schema,
stored in Hydra's ConfigStore under a top-level name (``controller_schema_<class>``), not in the
``controller`` group: ``--help`` lists only options a user can select, and
``controller=controller_schema_bandit`` is an unknown option. A preset extends its class's
schema and sets only what it changes::

    # conf/controller/bandit_ucb.yaml
    defaults:
      - /controller_schema_bandit@_here_
      - _self_
    algorithm: ucb1
"""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from enum import Enum
from typing import Any, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from adaprec import controllers
from adaprec.runtime.ranges import Rule, ranges_of

__all__ = ["schema_for", "register_controller_schemas", "register_option", "CONTROLLER_SCHEMAS",
           "schema_name"]

_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)
_MAPPINGS = (dict, collections.abc.Mapping)


def schema_for(cls: type, target: str | None = None) -> type:
    """A dataclass schema of ``cls(...)``'s arguments with ``_target_`` = ``target``
    (default ``<module>.<name>``). Named ``<Class>Schema`` and set as an attribute of this
    module, so configs that hold it (and its Enums) pickle into sweep workers."""
    target = target or f"{cls.__module__}.{cls.__qualname__}"
    hints = typing.get_type_hints(inspect.unwrap(cls.__init__))
    rules = ranges_of(cls)
    fields: list[tuple] = [("_target_", str, dataclasses.field(default=target))]
    for name, p in inspect.signature(cls).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        enum_name = cls.__name__ + name.title().replace("_", "")  # Bandit.algorithm -> BanditAlgorithm
        kind = _config_type(hints.get(name, Any), rules.get(name), enum_name)
        fields.append((name, kind, _field(p.default, kind)))
    schema = dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)
    _publish(schema)
    return schema


def _field(default: Any, kind: Any) -> dataclasses.Field:
    if default is inspect.Parameter.empty:
        return dataclasses.field(default=MISSING)
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda d=default: list(d))
    if isinstance(default, collections.abc.Mapping):
        return dataclasses.field(default_factory=lambda d=default: dict(d))
    if isinstance(kind, type) and issubclass(kind, Enum) and default is not None:
        default = kind(getattr(default, "value", default))
    return dataclasses.field(default=default)


def _config_type(t: Any, rule: Rule | None, enum_name: str) -> Any:
    """The OmegaConf field type of an annotation (Any where OmegaConf has no equivalent)."""
    if rule is not None and rule.names is not None:
        optional = type(None) in typing.get_args(t)
        names = _publish(Enum(enum_name, {n: n for n in rule.names}, type=str, module=__name__))
        return Optional[names] if optional else names
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = _config_type(rest[0], None, enum_name) if len(rest) == 1 else Any
        return Optional[inner] if type(None) in args and inner is not Any else inner
    if t in (int, float, bool, str) or (isinstance(t, type) and issubclass(t, Enum)):
        return t
    if origin in _SEQUENCES:
        return list[_config_type(args[0], None, enum_name) if args else Any]
    if origin in _MAPPINGS and len(args) == 2:
        return dict[_config_type(args[0], None, enum_name), _config_type(args[1], None, enum_name)]
    return Any


def _publish(obj: Any) -> Any:
    """Make ``obj`` importable as ``adaprec.app.controller_schemas.<name>`` (pickle finds it by
    that path); a second class of the same name (a plugin's ``Threshold``) gets a suffix."""
    name, n = obj.__name__, 1
    while name in globals() and globals()[name] is not obj:
        n += 1
        name = f"{obj.__name__}{n}"
    obj.__name__ = obj.__qualname__ = name
    obj.__module__ = __name__
    globals()[name] = obj
    return obj


def schema_name(cls: type) -> str:
    """The ConfigStore name of a controller class's schema (top level: not a group option)."""
    return f"controller_schema_{cls.__name__.lower()}"


def _controller_schemas() -> dict[str, type]:
    out = {}
    for name in controllers.__all__:
        cls = getattr(controllers, name)
        if isinstance(cls, type) and ranges_of(cls):  # the Protocol and the records have none
            out[schema_name(cls)] = schema_for(cls, f"adaprec.controllers.{name}")
    return out


# one schema per controller class that declares its ranges, keyed by its ConfigStore name
CONTROLLER_SCHEMAS: dict[str, type] = _controller_schemas()


def register_controller_schemas() -> None:
    """Store every controller schema in ConfigStore (top level, see the module docstring)."""
    cs = ConfigStore.instance()
    for name, node in CONTROLLER_SCHEMAS.items():
        cs.store(name=name, node=node)


def register_option(group: str, name: str, cls: type, target: str | None = None) -> type:
    """Make ``cls`` a selectable option ``<group>=<name>`` from Python (a plugin without a YAML):
    its generated schema with every default from the signature; its range rules are checked by
    ``validate`` like those of the built-in controllers. Returns the schema."""
    schema = schema_for(cls, target)
    ConfigStore.instance().store(group=group, name=name, node=schema)
    return schema
