"""Static controllers: one fixed plan for the whole run."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from adaprec.numerics.formats import get_format
from adaprec.runtime.plan import Plan
from adaprec.controllers._common import FORMAT_RULE
from adaprec.controllers.base import Controller, ControllerContext, StepRecord
from adaprec.runtime.ranges import FORMAT, ranges, rule

__all__ = ["Static", "FixedPlan", "Autocast"]


class _StaticBase(Controller):
    """Shared plumbing: a plan built once in ``setup`` and returned forever."""

    def __init__(self) -> None:
        self._plan: Plan | None = None
        self.reasons: dict[str, str] = {}

    def setup(self, context: ControllerContext) -> None:
        self._plan = self._build(list(context.layers))
        self.reasons = {name: f"static {self.describe()}" for name in context.layers}

    def _build(self, layers: list[str]) -> Plan:  # pragma: no cover - overridden
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def observe(self, record: StepRecord) -> None:
        pass

    def decide(self, step: int) -> Plan:
        if self._plan is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before decide()")
        return self._plan

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@ranges("controller", format=FORMAT_RULE)
class Static(_StaticBase):
    """Every layer in one format: ``Static("bf16")``."""

    def __init__(self, format: str = "fp32"):
        super().__init__()
        self.format = get_format(format).name

    def _build(self, layers: list[str]) -> Plan:
        return Plan.uniform(self.format, layers)

    def describe(self) -> str:
        return self.format


@ranges("controller", default=FORMAT_RULE, patterns=rule(each=True, **FORMAT))
class FixedPlan(_StaticBase):
    """A fixed per-layer map from glob patterns: ``FixedPlan({"layer4.*": "fp32"}, default="bf16")``.

    Patterns apply in order (later ones win); a pattern that matches no layer is an error.
    """

    def __init__(self, patterns: Mapping[str, str] = MappingProxyType({}), default: str = "fp32"):
        super().__init__()
        self.patterns = dict(patterns or {})
        self.default = get_format(default).name

    def _build(self, layers: list[str]) -> Plan:
        return Plan.from_patterns(self.patterns, layers, default=self.default)

    def describe(self) -> str:
        return "plan"


@ranges("controller", dtype=rule(ok=lambda v: get_format(v).name in ("bf16", "fp16"),
                                  allowed="one of bf16, fp16"))
class Autocast(_StaticBase):
    """The industry baseline: one global ``torch.autocast`` region with PyTorch's own op
    lists (``dtype`` bf16 or fp16), dynamic loss scaling when fp16."""

    def __init__(self, dtype: str = "bf16"):
        super().__init__()
        self.dtype = get_format(dtype).name

    def _build(self, layers: list[str]) -> Plan:
        return Plan.uniform(self.dtype, layers, region="global")

    def describe(self) -> str:
        return f"autocast {self.dtype}"
