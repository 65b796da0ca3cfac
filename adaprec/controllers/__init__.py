"""Controllers decide each layer's format while training runs.

Static: ``Static``, ``FixedPlan``, ``Autocast`` (the industry baseline). Adaptive: ``Threshold``
(rules with hysteresis), ``Bandit`` (per-layer bandits, algorithms in ``policies``), and the
published baselines ``MuPPET`` (Rajagopal et al., ICML 2020) and ``Autoswitch`` (Transformer
Engine's AutoswitchGemm rule). A user's own class is any object with the ``Controller`` methods.
"""
from adaprec.controllers.autoswitch import Autoswitch
from adaprec.controllers.bandit import Bandit
from adaprec.controllers.base import Controller, ControllerContext, StepRecord
from adaprec.controllers.muppet import MuPPET
from adaprec.controllers.static import Autocast, FixedPlan, Static
from adaprec.controllers.threshold import Threshold

__all__ = ["Controller", "ControllerContext", "StepRecord", "Static", "FixedPlan", "Autocast",
           "Threshold", "Bandit", "MuPPET", "Autoswitch"]
