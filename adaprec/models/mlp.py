"""A plain multilayer perceptron; flattens its input so it also takes images."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """``Flatten -> [Linear -> ReLU (-> Dropout)] * len(hidden) -> Linear``.

    ``in_features`` is the flattened input size. Configs cannot multiply, so for images it may be
    left ``None`` and given as ``in_channels`` and ``image_size`` (``C * H * W`` is taken).
    """

    def __init__(self, in_features: int | None = None, num_classes: int = 10,
                 hidden: Sequence[int] = (256, 128), dropout: float = 0.0,
                 in_channels: int | None = None, image_size: int | None = None):
        super().__init__()
        in_features = _resolve_in_features(in_features, in_channels, image_size)
        if num_classes <= 0:
            raise ValueError(f"MLP needs num_classes > 0, got {num_classes}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's own message ("mat1 and mat2 shapes cannot be multiplied") does not name the fix
        if x[0].numel() != self.in_features:
            raise ValueError(f"MLP built for in_features={self.in_features} got inputs of shape "
                             f"{tuple(x.shape[1:])} ({x[0].numel()} features); set in_features "
                             f"(or in_channels and image_size) to match the data set")
        return self.net(x)


def _resolve_in_features(in_features, in_channels, image_size) -> int:
    if in_features is None:
        if in_channels is None or image_size is None:
            raise ValueError("MLP needs in_features, or in_channels and image_size")
        in_features = in_channels * image_size * image_size
    if in_features <= 0:
        raise ValueError(f"MLP needs in_features > 0, got {in_features}")
    return int(in_features)
