"""The in-memory data set every loader returns, and the one error loaders raise."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from adaprec.tasks import get_task

__all__ = ["DataBundle", "DataError"]


class DataError(ValueError):
    """A data set is missing or malformed; the message names the expected layout."""


@dataclass
class DataBundle:
    """Train and validation tensors held in memory (the data sets here are small).

    ``task`` names a registered task (:func:`adaprec.tasks.task_names`); the task checks the
    tensors' layout. For the built-in ones:

    classification: ``*_x`` float32 ``[N, C, H, W]`` (or ``[N, D]``), ``*_y`` int64 ``[N]``.
    regression: ``*_x`` as for classification, ``*_y`` float targets ``[N]`` or ``[N, k]``.
    lm: ``*_x`` an integer token stream ``[T]`` (uint8 for bytes, int64 for larger vocabularies),
    ``*_y`` None; windows of ``block_size`` tokens are cut from it by :meth:`get_lm_batch`.
    """

    task: str
    train_x: torch.Tensor
    train_y: torch.Tensor | None
    val_x: torch.Tensor
    val_y: torch.Tensor | None
    num_classes: int = 0
    vocab_size: int = 0
    block_size: int = 0

    def __post_init__(self):
        task = get_task(self.task)  # the registered tasks are the allowed ones
        for split in ("train", "val"):
            x, y = self._split(split)
            task.check(split, x, y, self.block_size)

    @property
    def _stream(self) -> bool:
        return get_task(self.task).stream

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if split == "train":
            return self.train_x, self.train_y
        if split == "val":
            return self.val_x, self.val_y
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")

    def num_examples(self, split: str) -> int:
        """classification: number of examples; lm: number of valid window starts."""
        x, _ = self._split(split)
        return len(x) - self.block_size if self._stream else len(x)

    @property
    def num_train_examples(self) -> int:
        return self.num_examples("train")

    @property
    def num_val_examples(self) -> int:
        return self.num_examples("val")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input: ``(C, H, W)`` / ``(D,)``, or ``(block_size,)`` for lm."""
        return (self.block_size,) if self._stream else tuple(self.train_x.shape[1:])

    def get_batch(self, split: str, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``indices`` of ``split`` as ``(x, y)`` (row data: classification, regression)."""
        if self._stream:
            raise ValueError(f"get_batch is for row data; a {self.task} bundle is a token "
                             "stream: use get_lm_batch")
        x, y = self._split(split)
        indices = torch.as_tensor(indices, dtype=torch.long, device=x.device)
        return x[indices], y[indices]

    def get_lm_batch(self, split: str, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``stream[s : s+block_size]`` as ``x`` and the same shifted by one as ``y``,
        both int64 ``[len(starts), block_size]``; valid starts are ``0 .. num_examples(split) - 1``."""
        if not self._stream:
            raise ValueError(f"get_lm_batch is for token streams; a {self.task} bundle is row "
                             "data: use get_batch")
        stream, _ = self._split(split)
        starts = torch.as_tensor(starts, dtype=torch.long, device=stream.device)
        if starts.numel() and (starts.min() < 0 or starts.max() >= self.num_examples(split)):
            raise ValueError(f"window starts must lie in [0, {self.num_examples(split)}) "
                             f"for split {split!r}")
        idx = starts[:, None] + torch.arange(self.block_size, device=stream.device)
        return stream[idx].long(), stream[idx + 1].long()  # a uint8 stream widens per batch only

    def to(self, device: torch.device | str) -> DataBundle:
        """A copy with every tensor on ``device`` (put it there once, not per batch)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, train_x=move(self.train_x), train_y=move(self.train_y),
                       val_x=move(self.val_x), val_y=move(self.val_y))
