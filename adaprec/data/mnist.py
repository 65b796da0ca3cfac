"""MNIST read from its IDX files on disk.

Fashion-MNIST ships files of the same names and format and loads too (normalized with MNIST's
statistics, so its inputs are not exactly zero-mean).
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from adaprec.data._common import holdout_or_test, resize_and_repeat
from adaprec.data.bundle import DataBundle, DataError

__all__ = ["load_mnist", "read_idx", "MNIST_MEAN", "MNIST_STD"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # pixel statistics of the 60,000 training images
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049  # IDX: ubyte data, 3 dims / 1 dim
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_LAYOUT = ("expected MNIST IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
           "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz) in {root} "
           "(or its raw/ or MNIST/raw/ subfolder); set dataset.path to that folder")


def load_mnist(path: str, image_size: int = 28, channels: int = 1,
               val_fraction: float | None = None, seed: int = 0, **_) -> DataBundle:
    """Float ``[N, channels, image_size, image_size]`` images normalized with
    :data:`MNIST_MEAN` / :data:`MNIST_STD` (then resized bilinearly and repeated), int64 labels.

    Validation is the t10k set unless ``val_fraction`` holds out a stratified part of the training
    set instead. Extra keys (``num_classes``, ``task``) are ignored.
    """
    root = _find_root(path)
    splits = {}
    for split, (images_name, labels_name) in _FILES.items():
        images = read_idx(_locate(root, images_name), _IMAGES_MAGIC, path)
        labels = read_idx(_locate(root, labels_name), _LABELS_MAGIC, path)
        if len(images) != len(labels):
            raise DataError(_LAYOUT.format(root=path) + f"; {images_name} has {len(images)} "
                            f"images but {labels_name} has {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise DataError(_LAYOUT.format(root=path) + f"; {labels_name} holds label "
                            f"{labels.max()}, expected 0..9")
        x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)
        x = resize_and_repeat(x.sub_(MNIST_MEAN).div_(MNIST_STD), image_size, channels)
        splits[split] = (x, torch.from_numpy(labels.astype(np.int64)))
    return DataBundle("classification",
                      *holdout_or_test(splits["train"], splits["test"], val_fraction, seed),
                      num_classes=10)


def read_idx(file: Path, magic: int, path: str | None = None) -> np.ndarray:
    """An unsigned-byte IDX array (big-endian header: magic, then one int32 per dimension),
    checking the magic number and that the payload size matches the header."""
    try:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # how gzip fails on truncated or foreign files
        raise DataError(_LAYOUT.format(root=path or file.parent) + f"; cannot read {file} "
                        f"({type(e).__name__}: {e})") from e
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic or len(raw) < header:
        raise DataError(_LAYOUT.format(root=path or file.parent) + f"; {file} has magic number "
                        f"{found}, expected {magic} (IDX ubyte, {ndim}-d)")
    shape = tuple(int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in range(1, ndim + 1))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(_LAYOUT.format(root=path or file.parent) + f"; {file} header says "
                        f"{shape} = {int(np.prod(shape))} bytes but holds {len(raw) - header} "
                        f"(truncated or corrupt)")
    # copied: frombuffer views the immutable bytes, and torch wants writable arrays
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find_root(path: str | None) -> Path:
    if path is None or str(path) == "???":
        raise DataError(_LAYOUT.format(root="<dataset.path>") + "; dataset.path is not set")
    p = Path(path).expanduser()
    for root in (p, p / "raw", p / "MNIST" / "raw"):
        if any((root / (_FILES["train"][0] + ext)).is_file() for ext in ("", ".gz")):
            return root
    raise DataError(_LAYOUT.format(root=p) + f"; {_FILES['train'][0]}[.gz] not found there")


def _locate(root: Path, name: str) -> Path:
    for candidate in (root / name, root / (name + ".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(_LAYOUT.format(root=root) + f"; {name}[.gz] is missing")
