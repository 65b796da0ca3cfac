"""Language modelling: next-token prediction on a token stream; quality = validation
perplexity (lower is better)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adaprec.tasks.base import Task, eval_batches
from adaprec.tasks.registry import register_task


@register_task
class LanguageModelling(Task):
    """``x`` one integer token stream ``[T]`` (uint8 bytes or int64 ids); a batch is windows of ``block_size`` tokens and,
    as targets, the same windows shifted by one; the model returns logits ``[B, T, V]``."""

    name = "lm"
    quality = "val_perplexity"
    higher_is_better = False
    stream = True

    def check(self, split, x, y, block_size):
        if x.dim() != 1 or len(x) <= block_size or block_size <= 0:
            raise ValueError(f"lm {split}_x must be a 1-d token stream longer than "
                             f"block_size={block_size} (> 0), got shape {tuple(x.shape)}")

    def batch(self, data, split, idx, device):
        x, y = data.get_lm_batch(split, idx)  # idx: window starts; y = x shifted by one token
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def eval_indices(self, data, batch_size, max_batches):
        n = (data.val_x.numel() - 1) // data.block_size
        # non-overlapping windows: every validation token is predicted at most once
        windows = torch.arange(n)
        if 0 < max_batches * batch_size < n:  # a sample: spread evenly over the whole split,
            windows = torch.linspace(0, n - 1, max_batches * batch_size).long()  # not its head
        return [windows[idx] * data.block_size
                for idx in eval_batches(len(windows), batch_size, max_batches)]

    def loss(self, output, y):
        return F.cross_entropy(output.reshape(-1, output.size(-1)), y.reshape(-1))

    def metrics(self, val_loss, sums, count):
        return {"val_perplexity": math.exp(min(val_loss, 700.0))}  # 700: exp() stays finite
