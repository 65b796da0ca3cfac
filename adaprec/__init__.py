"""adaprec: adaptive mixed precision for PyTorch training."""
from .formats import FORMATS, Format, get_format
from .plan import Plan
from .precision import AdaptivePrecision

__all__ = ["AdaptivePrecision", "Plan", "Format", "FORMATS", "get_format"]
__version__ = "0.1.0"
