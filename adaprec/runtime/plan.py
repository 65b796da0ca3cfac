"""Plan: an immutable mapping layer name -> format name, with a default for everything unlisted.

An entry is one format for the layer or separate formats per GEMM operand role (fprop input
and weight, dgrad, wgrad: :func:`~adaprec.numerics.formats.per_role`). Either shape goes in --
a name, a ``{role: format}`` mapping, or the canonical string -- and the plan stores the
canonical name, so hash, JSON, diff and every table hold one string per layer::

    Plan({"fc1": {"fprop": "bf16", "dgrad": "fp16", "wgrad": "bf16"}, "fc2": "fp16"})
    plan.format_of("fc1")                    # 'fprop=bf16,dgrad=fp16,wgrad=bf16'
    plan.roles_of("fc1")["dgrad"]            # 'fp16'
    plan.with_changes({"fc2": {"fprop": "fp8_e4m3", "dgrad": "fp8_e5m2"}})

The executor applies a Plan; the logger records its hash; controllers return a new one each
decision. Layer names are qualified module names (``model.named_modules()``).

``region`` says how an executor runs the plan: ``"layer"`` (default) opens a region per layer;
``"global"`` asks for one ``torch.autocast`` region around the whole forward in the default
format, PyTorch's op lists deciding per op (the autocast baseline). A global plan is uniform.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Union

from adaprec.numerics.formats import Format, get_format

__all__ = ["Plan", "REGIONS", "Entry"]

REGIONS = ("layer", "global")
# what a plan entry may be given as: a format name (or Format), or {role: format} (per_role)
Entry = Union[str, Format, Mapping[str, str]]


class Plan(Mapping[str, str]):
    """Immutable ``layer -> format`` map. ``default`` covers the model's root and unlisted code.

    Values are format names; an entry given per role (a mapping) is stored as its canonical
    per-role name (module docstring)."""

    __slots__ = ("_entries", "_default", "_region", "_hash")

    def __init__(self, entries: Mapping[str, Entry] | None = None, default: Entry = "fp32",
                 region: str = "layer"):
        self._default = get_format(default).name
        self._entries = {str(k): get_format(v).name for k, v in sorted((entries or {}).items())}
        if region not in REGIONS:
            raise ValueError(f"plan region must be one of {', '.join(REGIONS)}, got {region!r}")
        if region == "global" and any(f != self._default for f in self._entries.values()):
            raise ValueError("a global-region plan runs every layer in its default format; "
                             "use region='layer' for per-layer formats")
        self._region = region
        content = {"default": self._default, "entries": self._entries}
        if region != "layer":  # per-layer plans keep the hashes they always had
            content["region"] = region
        self._hash = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def uniform(cls, fmt: str, layers: Iterable[str], region: str = "layer") -> "Plan":
        """Every layer (and the default) in ``fmt``; ``region="global"``: one autocast region."""
        return cls({name: fmt for name in layers}, default=fmt, region=region)

    @classmethod
    def from_patterns(cls, patterns: Mapping[str, Entry], layers: Iterable[str],
                      default: Entry = "fp32") -> "Plan":
        """Expand glob patterns (``{"layers.*.conv*": "fp16"}``) over ``layers``.

        Patterns apply in order, so a later pattern overrides an earlier one; a pattern that
        matches no layer is an error (it is almost always a typo).
        """
        layers = list(layers)
        entries = {name: default for name in layers}
        for pattern, fmt in patterns.items():
            hits = fnmatch.filter(layers, pattern)
            if not hits:
                raise ValueError(f"plan pattern {pattern!r} matches no layer; layers are: "
                                 f"{', '.join(layers[:20])}{' ...' if len(layers) > 20 else ''}")
            for name in hits:
                entries[name] = fmt
        return cls(entries, default=default)

    # -- mapping ------------------------------------------------------------------------------
    def __getitem__(self, layer: str) -> str:
        return self._entries[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def format_of(self, layer: str) -> str:
        """The layer's format, or the default when the plan does not list it."""
        return self._entries.get(layer, self._default)

    def roles_of(self, layer: str) -> dict[str, str]:
        """``{input, weight, dgrad, wgrad: format}`` of the layer (one format: all four equal)."""
        return get_format(self.format_of(layer)).roles()

    @property
    def default(self) -> str:
        return self._default

    @property
    def region(self) -> str:
        """``"layer"`` (a region per layer) or ``"global"`` (one autocast region for all)."""
        return self._region

    @property
    def hash(self) -> str:
        """Stable 12-hex-digit digest of the plan's content (independent of insertion order)."""
        return self._hash

    def with_changes(self, changes: Mapping[str, Entry]) -> "Plan":
        """A new plan with some layers reassigned (same region)."""
        return Plan({**self._entries, **changes}, default=self._default, region=self._region)

    def diff(self, other: "Plan") -> dict[str, tuple[str, str]]:
        """``{layer: (format here, format in other)}`` for every layer that differs."""
        names = set(self._entries) | set(other._entries)
        out = {n: (self.format_of(n), other.format_of(n)) for n in sorted(names)}
        return {n: pair for n, pair in out.items() if pair[0] != pair[1]}

    def shares(self) -> dict[str, float]:
        """Fraction of listed layers in each format."""
        if not self._entries:
            return {self._default: 1.0}
        counts: dict[str, int] = {}
        for fmt in self._entries.values():
            counts[fmt] = counts.get(fmt, 0) + 1
        return {k: v / len(self._entries) for k, v in sorted(counts.items())}

    # -- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {"default": self._default, "entries": dict(self._entries), "hash": self._hash}
        if self._region != "layer":
            out["region"] = self._region
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "Plan":
        try:
            return cls(data["entries"], default=data.get("default", "fp32"),
                       region=data.get("region", "layer"))
        except (KeyError, TypeError) as exc:
            raise ValueError("a plan needs the form {'default': fmt, 'entries': {layer: fmt}}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_json(Path(path).read_text())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._hash == other._hash

    def __hash__(self) -> int:
        return hash(self._hash)

    def __repr__(self) -> str:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in self.shares().items())
        region = f", region={self._region}" if self._region != "layer" else ""
        return f"Plan({len(self)} layers, default={self._default}, {shares}{region}, hash={self._hash})"
