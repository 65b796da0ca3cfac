"""Typed config schemas of the adaptive controllers, stored in Hydra's ConfigStore (group
``controller``, names ``<option>_schema``) and used as the first default of each
``conf/controller/<option>.yaml``: an unknown key or a wrong type fails when the config is
composed. Value ranges are checked by each class's ``__init__`` (one-line ValueError naming
the key and the allowed range)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hydra.core.config_store import ConfigStore

__all__ = ["ThresholdSchema", "BanditSchema", "MuPPETSchema", "AutoswitchSchema",
           "BanditAlgorithm", "register_controller_schemas"]


class BanditAlgorithm(str, Enum):
    ucb1 = "ucb1"
    discounted_ucb = "discounted_ucb"
    sliding_window_ucb = "sliding_window_ucb"
    thompson = "thompson"
    exp3 = "exp3"
    hedge = "hedge"


@dataclass
class ThresholdSchema:
    _target_: str = "adaprec.controllers.Threshold"
    overflow_max: float = 1e-4       # [0, 1] tolerated fp16 overflow rate (act, or grads at the loss scale)
    underflow_max: float = 0.01      # [0, 1] tolerated fp16 flush-to-zero rate at the loss scale
    rounding_err_max: float = 0.005  # [0, 1] tolerated relative rounding error of a 16-bit format
    patience: int = 3                # >= 0 clean windows before moving to a cheaper format
    cooldown: int = 20               # >= 0 steps after a switch without another (non-finite escapes excepted)
    interval: int = 10               # >= 1 steps per decision
    formats: list[str] = field(default_factory=lambda: ["bf16", "fp16", "fp32"])
    start: str = "cheapest"          # initial format of every layer, or "cheapest"
    cpu_fp16: bool = False           # keep fp16 on CPU/native for non-conv layers (slow kernels)


@dataclass
class BanditSchema:
    _target_: str = "adaprec.controllers.Bandit"
    algorithm: BanditAlgorithm = BanditAlgorithm.ucb1
    formats: list[str] = field(default_factory=lambda: ["bf16", "fp16", "fp32"])
    interval: int = 10
    cost_weight: float = 1.0
    nonfinite_penalty: float = 1.0
    overflow_weight: float = 100.0
    underflow_weight: float = 10.0
    err_weight: float = 10.0
    spike_weight: float = 1.0
    spike_tol: float = 0.1
    baseline_decay: float = 0.8
    block_windows: int = 5
    range_max: float = 0.0
    exploration: float = 0.2
    discount: float = 0.95
    window: int = 20
    sigma: float = 0.1
    exp3_gamma: float = 0.1
    eta: float = 2.0
    seed: int = 0
    cpu_fp16: bool = False


@dataclass
class MuPPETSchema:
    _target_: str = "adaprec.controllers.MuPPET"
    ladder: list[str] = field(default_factory=lambda: ["bf16", "fp16", "fp32"])
    interval: int = 20
    batches: int = 4
    patience: int = 2
    cpu_fp16: bool = False


@dataclass
class AutoswitchSchema:
    _target_: str = "adaprec.controllers.Autoswitch"
    low: str = "bf16"
    high: str = "fp32"
    underflow_max: float = 0.05
    mse_max: float = 1e-4
    cpu_fp16: bool = False


def register_controller_schemas() -> None:
    cs = ConfigStore.instance()
    for name, node in [("threshold_schema", ThresholdSchema), ("bandit_schema", BanditSchema),
                       ("muppet_schema", MuPPETSchema), ("autoswitch_schema", AutoswitchSchema)]:
        cs.store(group="controller", name=name, node=node)
