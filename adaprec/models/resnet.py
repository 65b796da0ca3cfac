"""CIFAR-style ResNet-18 (He et al. 2016): 3x3 stride-1 stem and no max-pool, so 32x32 inputs
keep enough resolution for four stages."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet", "resnet18"]


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with an identity (or 1x1 conv+BN projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv -> four stages of BasicBlocks -> global average pool -> fc."""

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], in_channels: int,
                 num_classes: int):
        super().__init__()
        if in_channels <= 0 or num_classes <= 0:
            raise ValueError(f"ResNet needs in_channels > 0 and num_classes > 0, "
                             f"got {in_channels} and {num_classes}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages, cin = [], widths[0]
        for i, (n, cout) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout,
                                                     stride if j == 0 else 1) for j in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """ResNet-18 for small images: blocks [2, 2, 2, 2], widths 64/128/256/512 (11,173,962
    parameters for 3 input channels and 10 classes). Inputs of 8x8 and larger."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), in_channels, num_classes)
