"""Modeled memory of a training step: what a plan holds at its peak, in bytes.

- ``weights``: the fp32 master weights of every trainable parameter, plus, for each layer not
  in fp32, the copy its kernels read during the step (``p * b`` native, as torch.autocast caches
  it; ``p * 4`` emulated: the rounded values are an fp32 tensor);
- ``grads``: fp32 gradients of every trainable parameter (they land on the masters);
- ``optimizer``: the optimizer's fp32 state (momentum: 1 tensor per parameter, Adam: 2);
- ``activations``: what backward keeps from forward, modeled as each layer's inputs in the
  format the layer stores them in (``in * b``; emulated layers keep fp32 tensors).

A per-role entry (:func:`~adaprec.numerics.formats.per_role`) keeps its weight copy in its
``weight`` role's format and its inputs in its ``input`` role's.

Transient buffers (workspaces, the gradient of one activation at a time) are not modeled: on
CUDA, ``torch.cuda.max_memory_allocated`` measures them (the trainer logs it beside the model).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from adaprec.numerics.formats import get_format
from adaprec.cost.counting import LayerCount
from adaprec.cost.optimizer import OptimizerSpec
from adaprec.cost.profiles import DeviceProfile

__all__ = ["MemoryCost", "plan_memory"]


@dataclass(frozen=True)
class MemoryCost:
    """Bytes per category (see the module docstring)."""

    weights: int
    grads: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def plan_memory(counts: Sequence[LayerCount], formats: Sequence[str], profile: DeviceProfile,
                param_elems: int, optimizer: OptimizerSpec, inference: bool = False) -> MemoryCost:
    """Bytes held by a step whose layers ``counts`` run in ``formats`` (same order) on ``profile``."""
    weights, acts = 4 * param_elems, 0
    for c, fmt in zip(counts, formats):
        roles = get_format(fmt).roles()
        w, x = roles["weight"], roles["input"]
        if profile.resolve(w) != "fp32":
            weights += int(c.param_elems * get_format(profile.compute_format(w)).bytes)
        if not inference:
            acts += int(c.act_in_elems * get_format(profile.compute_format(x)).bytes)
    if inference:
        return MemoryCost(weights, 0, 0, 0)
    return MemoryCost(weights, 4 * param_elems, 4 * optimizer.states * param_elems, acts)
