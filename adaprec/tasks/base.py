"""What a task is: how it cuts batches from a data bundle, its loss, the metrics its evaluation
reports, and which of them is its *quality* (and whether higher is better).

A task knows nothing of Hydra, pandas or the training loop; the loop, ``adaprec.tools.deploy``,
the tuning objective and the analysis all ask it. Subclass :class:`Task` and decorate it with
:func:`~adaprec.tasks.register_task` to add one.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

__all__ = ["Task", "eval_batches"]


def eval_batches(n: int, batch_size: int, max_batches: int = 0) -> list[torch.Tensor]:
    """Contiguous, unshuffled evaluation batches (all of them when ``max_batches`` is 0)."""
    batches = [torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return batches[:max_batches] if max_batches > 0 else batches


class Task:
    """One kind of learning problem. The defaults fit row data: ``x[i]`` is one example and
    ``y[i]`` its target; a task whose data is one token stream sets ``stream = True``."""

    name: ClassVar[str]             # what ``DataBundle.task`` and ``dataset.task`` say
    quality: ClassVar[str]          # the metric that says how good a model is (a key of evaluate())
    higher_is_better: ClassVar[bool]
    stream: ClassVar[bool] = False  # data is one 1-d stream cut into ``block_size`` windows

    def check(self, split: str, x: torch.Tensor, y: torch.Tensor | None, block_size: int) -> None:
        """Raise ``ValueError`` naming the expected layout if ``split``'s tensors do not fit."""
        if y is None or len(y) != len(x):
            raise ValueError(f"{split}_y must be a tensor as long as {split}_x")

    def batch(self, data: Any, split: str, idx: torch.Tensor,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of examples ``idx`` of ``split``, on ``device``."""
        x, y = data.get_batch(split, idx)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def eval_indices(self, data: Any, batch_size: int, max_batches: int) -> list[torch.Tensor]:
        """The validation batches, as ``batch`` indices: every example once, in order."""
        return eval_batches(data.num_val_examples, batch_size, max_batches)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The scalar training loss (also the evaluation's ``val_loss``, averaged per target)."""
        raise NotImplementedError

    def eval_sums(self, output: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-batch counts that evaluation sums on the device (e.g. correct predictions)."""
        return {}

    def metrics(self, val_loss: float, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """The task's metrics beside ``val_loss``, from the summed counts over ``count`` targets;
        must include :attr:`quality`."""
        raise NotImplementedError
