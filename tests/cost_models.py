"""Tiny models shared by the cost-model tests (no dependency on adaprec.models)."""
import dataclasses

import torch
from torch import nn

from adaprec.cost import load_profile


def ideal(name):
    """A datasheet profile as a pure roofline: peaks reached, no per-kernel cost, IEEE fp32, so
    byte and cast formulas can be checked exactly (and tiny models behave like large ones)."""
    return dataclasses.replace(load_profile(name), kernel_us=0.0, efficiency={}, tf32={})


class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt(d)) v, written with matmul so it owns those FLOPs."""

    adaprec_layer = True

    def forward(self, q, k, v):
        scores = torch.matmul(q, k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        return torch.matmul(torch.softmax(scores, dim=-1), v)


class AttentionBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.core = AttentionCore()
        self.out = nn.Linear(d, d)

    def forward(self, x):
        return self.out(self.core(self.q(x), self.k(x), self.v(x)))


class Residual(nn.Module):
    """y = body(x) + shortcut(x): two branches, the case that confuses hierarchical backward counting."""

    def __init__(self, d: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.shortcut = nn.Linear(d, d, bias=False)

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def mlp(d_in=8, d_hidden=16, d_out=4, depth=4):
    dims = [d_in] + [d_hidden] * (depth - 1) + [d_out]
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])
