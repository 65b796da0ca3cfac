"""Controllers decide each layer's format while training runs."""
from .base import Controller, ControllerContext, StepRecord
from .static import Autocast, FixedPlan, Static
from .bandit import Bandit
from .threshold import Threshold

__all__ = ["Controller", "ControllerContext", "StepRecord", "Static", "FixedPlan", "Autocast",
           "Threshold", "Bandit"]
