"""Data sets as in-memory :class:`DataBundle`s; each loader is a Hydra ``_target_``."""
from adaprec.data.bundle import DataBundle, DataError
from adaprec.data.cifar10 import load_cifar10
from adaprec.data.digits import load_digits
from adaprec.data.digits_regression import load_digits_regression
from adaprec.data.mnist import load_mnist, read_idx
from adaprec.data.text import load_text

__all__ = ["DataBundle", "DataError", "load_digits", "load_digits_regression", "load_text", "load_cifar10",
           "load_mnist", "read_idx"]
