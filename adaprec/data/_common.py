"""Helpers the image loaders share: seeded stratified split, resize and channel repeat."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["stratified_split", "resize_and_repeat", "holdout_or_test"]


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
