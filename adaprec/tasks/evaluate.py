"""Validation under the current precision plan, for any registered task."""
from __future__ import annotations

from typing import Any

import torch

from adaprec.tasks.registry import get_task

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, ap: Any, data: Any, batch_size: int, device: torch.device,
             max_batches: int = 0) -> dict[str, float]:
    """``val_loss`` (mean per target) and the task's metrics on ``data``'s validation split.

    ``ap`` is an :class:`~adaprec.AdaptivePrecision` whose plan the forward runs under, or None
    for plain fp32. The model's train/eval mode is restored afterwards."""
    task = get_task(data.task)
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for idx in task.eval_indices(data, batch_size, max_batches):
        x, y = task.batch(data, "val", idx, device)
        with (ap.autocast() if ap is not None else torch.autocast(device.type, enabled=False)):
            output = model(x)
            loss = task.loss(output, y)
        k = y.numel()
        total_loss += loss.double() * k
        for name, value in task.eval_sums(output, y).items():  # summed on the device: no sync per batch
            sums.setdefault(name, torch.zeros((), dtype=torch.float64, device=device)).add_(value)
        count += k
    model.train(was_training)
    val_loss = (total_loss / max(count, 1)).item()
    return {"val_loss": val_loss, **task.metrics(val_loss, sums, count)}
