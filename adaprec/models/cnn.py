"""A small, fast convolutional classifier for quick experiments on small images."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN"]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    # no conv bias: the BatchNorm shift that follows makes it redundant
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    """Three conv+BN+ReLU blocks (width, 2*width stride 2, 4*width stride 2), global average
    pool, linear head. Any input size works thanks to the adaptive pool."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 32):
        super().__init__()
        if min(in_channels, num_classes, width) <= 0:
            raise ValueError(f"SmallCNN needs positive in_channels, num_classes and width, "
                             f"got {in_channels}, {num_classes}, {width}")
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width, stride=1),
            _conv_bn_relu(width, 2 * width, stride=2),
            _conv_bn_relu(2 * width, 4 * width, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
