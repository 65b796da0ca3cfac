"""CIFAR-10 from the official "python version" pickle batches (read from disk, never downloaded)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from adaprec.data._common import holdout_or_test, resize_and_repeat
from adaprec.data.bundle import DataBundle, DataError

__all__ = ["load_cifar10", "CIFAR10_MEAN", "CIFAR10_STD"]

# per-channel statistics of the 50,000 training images (pixel std, not the often-quoted
# 0.2023/0.1994/0.2010, which are averages of per-image stds)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_LAYOUT = ("expected CIFAR-10 python batches at {root}/cifar-10-batches-py/data_batch_1..5 and "
           "test_batch (download and untar 'CIFAR-10 python version', cifar-10-python.tar.gz, "
           "and set dataset.path to the folder holding cifar-10-batches-py)")


def load_cifar10(path: str, val_fraction: float | None = None, seed: int = 0,
                 image_size: int = 32, channels: int = 3, **_) -> DataBundle:
    """Float ``[N, 3, 32, 32]`` images normalized per channel with :data:`CIFAR10_MEAN` /
    :data:`CIFAR10_STD`, int64 labels 0..9.

    ``path`` is ``cifar-10-batches-py/`` or its parent. Validation is ``test_batch`` unless
    ``val_fraction`` holds out a stratified part of the training batches instead. A different
    ``image_size`` resizes bilinearly. Extra keys (``num_classes``, ``task``) are ignored.
    """
    root = _find_root(path)
    parts = [_read_batch(root / name) for name in _TRAIN_BATCHES]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = _read_batch(root / "test_batch")
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        # in place: the float training set alone is 600 MB
        x = x.float().div_(255.0).sub_(mean).div_(std)
        return resize_and_repeat(x, image_size, channels)

    train, test = (prepare(train[0]), train[1]), (prepare(test[0]), test[1])
    return DataBundle("classification", *holdout_or_test(train, test, val_fraction, seed),
                      num_classes=10)


def _find_root(path: str | None) -> Path:
    if path is None or str(path) == "???":
        raise DataError(_LAYOUT.format(root="<dataset.path>") + "; dataset.path is not set")
    p = Path(path).expanduser()
    for root in (p / "cifar-10-batches-py", p):
        if (root / "data_batch_1").is_file():
            return root
    raise DataError(_LAYOUT.format(root=p) + "; data_batch_1 not found there")


def _read_batch(file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 [N, 3, 32, 32], int64 [N])`` from one pickled batch dict."""
    folder = file.parent
    path = folder.parent if folder.name == "cifar-10-batches-py" else folder
    if not file.is_file():
        raise DataError(_LAYOUT.format(root=path) + f"; {file.name} is missing")
    try:
        with open(file, "rb") as f:
            # the official batches are Python 2 pickles: bytes keys, hence encoding="bytes"
            batch = pickle.load(f, encoding="bytes")
        data, labels = _field(batch, "data"), _field(batch, "labels")
        data = np.asarray(data)
        labels = np.asarray(labels, dtype=np.int64)
    except Exception as e:  # truncated or foreign files fail in many ways; report them as one
        raise DataError(_LAYOUT.format(root=path) + f"; {file} is not a readable CIFAR-10 batch "
                        f"({type(e).__name__}: {e})") from e
    bad_labels = labels.min(initial=0) < 0 or labels.max(initial=0) > 9
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels.shape != (len(data),) or bad_labels:
        raise DataError(_LAYOUT.format(root=path) + f"; {file} holds data {data.dtype} "
                        f"{data.shape} and {labels.shape} labels, expected uint8 [N, 3072] and "
                        f"N labels in 0..9")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _field(batch: dict, name: str):
    for key in (name.encode(), name):  # bytes in the official files, str if re-pickled in Py3
        if key in batch:
            return batch[key]
    raise KeyError(f"no {name!r} key")
