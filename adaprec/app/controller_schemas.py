"""Typed config schemas of the adaptive controllers, stored in Hydra's ConfigStore (group
``controller``, names ``<option>_schema``) and used as the first default of each
``conf/controller/<option>.yaml``: an unknown key or a wrong type fails when the config is
composed; the range rules in field metadata are checked by ``adaprec.app.schema.validate`` right
after composition, before anything is written (each class's ``__init__`` repeats the checks
for Python users)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from adaprec.app.schema import FORMAT_RULE, _is_format, rule

__all__ = ["ThresholdSchema", "BanditSchema", "MuPPETSchema", "AutoswitchSchema",
           "BanditAlgorithm", "register_controller_schemas"]


class BanditAlgorithm(str, Enum):
    ucb1 = "ucb1"
    discounted_ucb = "discounted_ucb"
    sliding_window_ucb = "sliding_window_ucb"
    thompson = "thompson"
    exp3 = "exp3"
    hedge = "hedge"


def _r(default=None, factory=None, **kw):
    """A field with a range rule, checked by ``adaprec.app.schema.validate`` right after composition."""
    if factory is not None:
        return field(default_factory=factory, metadata=rule(**kw))
    return field(default=default, metadata=rule(**kw))


_FORMATS3 = lambda: ["bf16", "fp16", "fp32"]  # noqa: E731


@dataclass
class ThresholdSchema:
    _target_: str = "adaprec.controllers.Threshold"
    overflow_max: float = _r(default=1e-4, ge=0, le=1)      # tolerated fp16 overflow rate (act, or grads at the loss scale)
    underflow_max: float = _r(default=0.01, ge=0, le=1)     # tolerated fp16 flush-to-zero rate at the loss scale
    rounding_err_max: float = _r(default=0.005, ge=0, le=1)  # tolerated relative rounding error of a 16-bit format
    patience: int = _r(default=3, ge=0)                     # clean windows before moving to a cheaper format
    cooldown: int = _r(default=20, ge=0)                    # steps after a switch without another
    interval: int = _r(default=10, ge=1)                    # steps per decision
    formats: list[str] = _r(factory=_FORMATS3, each=True, **FORMAT_RULE)
    start: str = _r(default="cheapest", ok=lambda v: v == "cheapest" or _is_format(v),
                    allowed="'cheapest' or a format name")
    cpu_fp16: bool = False                                  # fp16 on CPU/native for non-conv layers
    cost_budget: Optional[float] = _r(default=None, gt=0)   # max modeled cost relative to all-fp32


@dataclass
class BanditSchema:
    _target_: str = "adaprec.controllers.Bandit"
    algorithm: BanditAlgorithm = BanditAlgorithm.ucb1
    formats: list[str] = _r(factory=_FORMATS3, each=True, **FORMAT_RULE)
    interval: int = _r(default=10, ge=1)
    cost_weight: float = _r(default=1.0, ge=0)
    nonfinite_penalty: float = _r(default=1.0, ge=0)
    overflow_weight: float = _r(default=100.0, ge=0)
    underflow_weight: float = _r(default=10.0, ge=0)
    err_weight: float = _r(default=10.0, ge=0)
    spike_weight: float = _r(default=1.0, ge=0)
    spike_tol: float = _r(default=0.1, ge=0)
    baseline_decay: float = _r(default=0.8, ge=0, le=1)
    block_windows: int = _r(default=5, ge=0)
    range_max: float = _r(default=0.0, ge=0, le=1)
    exploration: float = _r(default=0.2, ge=0)
    discount: float = _r(default=0.95, gt=0, le=1)
    window: int = _r(default=20, ge=1)
    sigma: float = _r(default=0.1, ge=0)
    exp3_gamma: float = _r(default=0.1, ge=0, le=1)
    eta: float = _r(default=2.0, ge=0)
    seed: int = 0
    cpu_fp16: bool = False
    cost_budget: Optional[float] = _r(default=None, gt=0)


@dataclass
class MuPPETSchema:
    _target_: str = "adaprec.controllers.MuPPET"
    ladder: list[str] = _r(factory=_FORMATS3, each=True, **FORMAT_RULE)
    interval: int = _r(default=20, ge=1)
    batches: int = _r(default=4, ge=2)
    patience: int = _r(default=2, ge=1)
    cpu_fp16: bool = False


@dataclass
class AutoswitchSchema:
    _target_: str = "adaprec.controllers.Autoswitch"
    low: str = _r(default="bf16", **FORMAT_RULE)
    high: str = _r(default="fp32", **FORMAT_RULE)
    underflow_max: float = _r(default=0.05, ge=0, le=1)
    mse_max: float = _r(default=1e-4, ge=0)
    cpu_fp16: bool = False


def register_controller_schemas() -> None:
    """Store each schema as ``controller/<name>_schema`` and register it for range checks."""
    from adaprec.app.schema import register_group_schema
    for name, node in [("threshold_schema", ThresholdSchema), ("bandit_schema", BanditSchema),
                       ("muppet_schema", MuPPETSchema), ("autoswitch_schema", AutoswitchSchema)]:
        register_group_schema("controller", name, node)
