"""An MLP regressor whose layers have names that say what they do (``inp``, ``norm``,
``hidden.<i>``, ``head``), so per-layer precision plans read naturally."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["RegressorMLP"]


class RegressorMLP(nn.Module):
    """``inp -> [norm] -> ReLU -> [hidden.i -> ReLU]* -> head``, times ``out_scale``.

    Args:
        in_features, out_features: input width; targets per example (1 gives outputs ``[N]``).
        width: units of ``inp`` and of every hidden layer; ``depth``: number of hidden layers.
        input_norm: a LayerNorm (``norm``) right after ``inp``, so inputs in large raw units
            are brought to unit scale inside the model (the ``inp`` layer alone sees the range).
        head_bias: initial bias of ``head``, e.g. the targets' mean when they sit far from 0.
        out_scale: a fixed factor on the output (a unit conversion); a small one makes every
            gradient small too.
    """

    def __init__(self, in_features: int, out_features: int = 1, width: int = 128, depth: int = 1,
                 input_norm: bool = False, head_bias: float = 0.0, out_scale: float = 1.0):
        super().__init__()
        if min(in_features, out_features, width) <= 0 or depth < 0 or out_scale == 0:
            raise ValueError(f"RegressorMLP needs positive in_features, out_features and width, "
                             f"depth >= 0 and out_scale != 0; got {in_features}, {out_features}, "
                             f"{width}, {depth}, {out_scale}")
        self.inp = nn.Linear(in_features, width)
        self.norm = nn.LayerNorm(width) if input_norm else nn.Identity()
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, out_features)
        nn.init.constant_(self.head.bias, float(head_bias))
        self.act = nn.ReLU()
        self.out_features = out_features
        self.out_scale = float(out_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm(self.inp(torch.flatten(x, 1))))
        for layer in self.hidden:
            h = self.act(layer(h))
        out = self.head(h)
        if self.out_scale != 1.0:
            out = out * self.out_scale
        return out.squeeze(-1) if self.out_features == 1 else out
