"""The models the benchmarks time: ResNet-18 (CIFAR-style, 32x32) and the language workload's GPT."""
from __future__ import annotations

import torch

from adaprec.models.gpt import GPT
from adaprec.models.resnet import resnet18


def workload(name: str, batch: int, device: torch.device, image_size: int = 32):
    """(model, x, y, task) with fixed random inputs of the workload's shape."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "resnet18":
        model = resnet18(in_channels=3, num_classes=10)
        x = torch.randn(batch, 3, image_size, image_size, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        task = "classification"
    elif name == "gpt":
        model = GPT(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=128)
        x = torch.randint(0, 256, (batch, 64), generator=g)
        y = torch.randint(0, 256, (batch, 64), generator=g)
        task = "lm"
    else:
        raise ValueError(f"unknown workload {name!r}; choose resnet18 or gpt")
    return model.to(device), x.to(device), y.to(device), task
