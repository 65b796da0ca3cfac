"""Regression: float targets, mean squared error; quality = validation RMSE (lower is better)."""
from __future__ import annotations

import math

import torch.nn.functional as F

from adaprec.tasks.base import Task
from adaprec.tasks.registry import register_task


@register_task
class Regression(Task):
    """``x`` ``[N, ...]`` examples, ``y`` float targets ``[N]`` or ``[N, k]``; ``val_loss`` is the MSE."""

    name = "regression"
    quality = "val_rmse"
    higher_is_better = False

    def check(self, split, x, y, block_size):
        if y is None or not y.is_floating_point() or y.dim() not in (1, 2) or len(y) != len(x):
            raise ValueError(f"regression {split}_y must be a float tensor [N] or [N, k] "
                             f"as long as {split}_x")

    def loss(self, output, y):
        # in fp32 on the (already rounded) prediction: the format's error shows, the loss adds none
        return F.mse_loss(output.float().reshape(y.shape), y.float())

    def metrics(self, val_loss, sums, count):
        return {"val_rmse": math.sqrt(val_loss) if val_loss >= 0 else float("nan")}
