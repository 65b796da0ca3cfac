"""Helpers the image loaders share: seeded stratified split, resize and channel repeat."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["stratified_split", "resize_and_repeat", "holdout_or_test", "bundled_digits"]


def bundled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits as ``(pixels [1797, 64] fp32 in 0..16, labels)``.

    Read from the CSV that ships inside scikit-learn, which is what its ``load_digits`` reads:
    importing scikit-learn costs ~4 s of every fresh process (each CLI run); locating the
    package does not import it. A scikit-learn whose layout differs uses its own loader."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ImportError("the digits data ship with scikit-learn: pip install scikit-learn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits

        raw = load_digits()
        pixels, labels = raw.data, raw.target
    return torch.tensor(pixels, dtype=torch.float32), torch.tensor(labels, dtype=torch.long)


def stratified_split(labels: torch.Tensor, val_fraction: float,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted ``(train_idx, val_idx)`` with ``round(val_fraction * n_c)`` of each class's ``n_c``
    examples in validation, chosen by a permutation seeded with ``seed``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)
    val_parts = []
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        n_val = round(val_fraction * len(members))
        val_parts.append(members[torch.randperm(len(members), generator=gen)[:n_val]])
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[torch.cat(val_parts)] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def resize_and_repeat(x: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` to ``image_size`` squared, then repeat a single
    channel to ``channels`` (a 3-channel input must already have ``channels == 3``)."""
    if image_size <= 0 or channels <= 0:
        raise ValueError(f"image_size and channels must be positive, got {image_size}, {channels}")
    if x.size(1) != channels and x.size(1) != 1:
        raise ValueError(f"cannot turn {x.size(1)}-channel images into {channels} channels; "
                         f"set channels: {x.size(1)}")
    if x.shape[-2:] != (image_size, image_size):
        # antialias only matters (and only applies) when shrinking
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                          align_corners=False, antialias=image_size < min(x.shape[-2:]))
    return x.expand(-1, channels, -1, -1).contiguous()


Pair = tuple[torch.Tensor, torch.Tensor]


def holdout_or_test(train: Pair, test: Pair, val_fraction: float | None, seed: int):
    """``(train_x, train_y, val_x, val_y)``: the official test set as validation when
    ``val_fraction`` is None, else a stratified hold-out of the training set (test set unused)."""
    if val_fraction is None:
        return (*train, *test)
    tr, va = stratified_split(train[1], val_fraction, seed)
    return train[0][tr], train[1][tr], train[0][va], train[1][va]
