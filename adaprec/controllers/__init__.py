"""Controllers decide each layer's format while training runs.

Static: ``Static``, ``FixedPlan``, ``Autocast`` (the industry baseline). Adaptive: ``Threshold``
(rules with hysteresis), ``Bandit`` (per-layer bandits, algorithms in ``policies``), and the
published baselines ``MuPPET`` (Rajagopal et al., ICML 2020) and ``Autoswitch`` (Transformer
Engine's AutoswitchGemm rule). A user's own class is any object with the ``Controller`` methods.
"""
from .autoswitch import Autoswitch
from .bandit import Bandit
from .base import Controller, ControllerContext, StepRecord
from .muppet import MuPPET
from .static import Autocast, FixedPlan, Static
from .threshold import Threshold

__all__ = ["Controller", "ControllerContext", "StepRecord", "Static", "FixedPlan", "Autocast",
           "Threshold", "Bandit", "MuPPET", "Autoswitch"]
