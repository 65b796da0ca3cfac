"""Classification: integer labels, cross-entropy; quality = validation accuracy (higher is better)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from adaprec.tasks.base import Task
from adaprec.tasks.registry import register_task


@register_task
class Classification(Task):
    """``x`` ``[N, ...]`` examples, ``y`` int64 labels ``[N]``; the model returns logits ``[N, C]``."""

    name = "classification"
    quality = "val_accuracy"
    higher_is_better = True

    def check(self, split, x, y, block_size):
        if y is None or y.dim() != 1 or len(y) != len(x):
            raise ValueError(f"{split}_y must be a 1-d label tensor as long as {split}_x")

    def loss(self, output, y):
        return F.cross_entropy(output, y)

    def eval_sums(self, output, y):
        return {"correct": (output.argmax(-1) == y).sum()}

    def metrics(self, val_loss, sums, count):
        correct = sums.get("correct", torch.zeros((), dtype=torch.float64))
        return {"val_accuracy": (correct / max(count, 1)).item()}
