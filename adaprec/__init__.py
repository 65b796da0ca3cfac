"""adaprec: adaptive mixed precision for PyTorch training."""
from adaprec.numerics.formats import FORMATS, Format, get_format
from adaprec.runtime.plan import Plan
from adaprec.precision import AdaptivePrecision

__all__ = ["AdaptivePrecision", "Plan", "Format", "FORMATS", "get_format"]
__version__ = "0.1.0"
