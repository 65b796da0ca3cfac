"""Deterministic batch order: a pure function of (seed, step), so a resumed run sees exactly
the batches the uninterrupted one would have seen."""
from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["train_batch_indices"]


def train_batch_indices(n: int, batch_size: int, seed: int, index: int) -> torch.Tensor:
    """Indices of the ``index``-th training batch: epochs are seeded permutations of ``n``
    examples, walked in order; the last partial batch of an epoch wraps into the next."""
    if n <= 0:
        raise ValueError("the training split is empty")
    start = index * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = _epoch_order(n, seed, epoch)
        take = min(batch_size - len(out), n - offset)
        out.extend(perm[offset:offset + take].tolist())
    return torch.tensor(out, dtype=torch.long)



@lru_cache(maxsize=2)  # the epoch being walked and the one a wrapping batch reaches into
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    # cached: a permutation of a large corpus's windows (10M for the stdlib text) takes a second
    # to draw, and drawing it for every batch made the step 5x slower than the model
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
