"""scikit-learn's bundled handwritten digits (1,797 8x8 images): the embedded default data set.

The data ship inside scikit-learn, so this loader never touches the network.
"""
from __future__ import annotations

import torch

from adaprec.data._common import bundled_digits, resize_and_repeat, stratified_split
from adaprec.data.bundle import DataBundle

__all__ = ["load_digits"]


def load_digits(image_size: int = 16, channels: int = 3, val_fraction: float = 0.2,
                seed: int = 0, flatten: bool = False, **_) -> DataBundle:
    """Digits scaled to [0, 1], resized (bilinear) to ``image_size``, repeated to ``channels``,
    then normalized with the train split's mean and std. ``flatten`` gives ``[N, C*H*W]``.

    The split is stratified and fixed by ``seed``. Extra config keys (``num_classes``, ``task``)
    are accepted and ignored.
    """
    pixels, y = bundled_digits()
    x = pixels.view(-1, 1, 8, 8) / 16.0
    x = resize_and_repeat(x, image_size, channels)
    train_idx, val_idx = stratified_split(y, val_fraction, seed)
    # statistics of the training images only, so validation stays unseen
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    if flatten:
        x = x.flatten(1)
    return DataBundle("classification", x[train_idx], y[train_idx], x[val_idx], y[val_idx],
                      num_classes=10)
