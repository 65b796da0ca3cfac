"""What one optimizer step costs: kernels and fp32 passes over the parameters.

Counted from torch.optim's single-tensor (for-loop) implementations, fp32 master weights and
state; the foreach implementation (torch's default on CUDA) runs the same ops as one launch each
for all tensors. A pass is one read or write of every parameter element (4 bytes).

- ``none``: nothing (inference, frozen models).
- ``sgd``: 1 kernel, 3 passes, no state: ``p.add_(g, alpha=-lr)``.
- ``sgd_momentum``: 3 kernels, 8 passes, 1 state: ``buf.mul_(m).add_(g); p.add_(buf, alpha=-lr)``.
- ``adam`` / ``adamw``: 9 kernels, 20 passes, 2 states: step += 1, decay ``p.mul_``, ``lerp_``,
  ``mul_``, ``addcmul_``, ``sqrt``, ``div``, ``add_`` (eps), ``addcdiv_``.

Weight decay on SGD adds one kernel and three passes (``g.add(p, alpha=wd)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["OptimizerSpec", "OPTIMIZERS", "optimizer_spec"]


@dataclass(frozen=True)
class OptimizerSpec:
    """Per-step work of an optimizer: kernels per parameter tensor, fp32 passes, state tensors."""

    name: str
    kernels: int
    passes: int
    states: int


OPTIMIZERS = {s.name: s for s in (
    OptimizerSpec("none", 0, 0, 0),
    OptimizerSpec("sgd", 1, 3, 0),
    OptimizerSpec("sgd_momentum", 3, 8, 1),
    OptimizerSpec("adam", 9, 20, 2),
    OptimizerSpec("adamw", 9, 20, 2),
)}


def optimizer_spec(optimizer: "str | OptimizerSpec | torch.optim.Optimizer | None") -> OptimizerSpec:
    """The spec for a name in :data:`OPTIMIZERS`, or read off a torch optimizer instance."""
    if optimizer is None:
        return OPTIMIZERS["none"]
    if isinstance(optimizer, OptimizerSpec):
        return optimizer
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r} for the cost model; one of {sorted(OPTIMIZERS)}")
        return OPTIMIZERS[optimizer]
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    if isinstance(optimizer, torch.optim.SGD):
        base = OPTIMIZERS["sgd_momentum" if group.get("momentum", 0) else "sgd"]
        if group.get("weight_decay", 0):
            return OptimizerSpec(base.name + "_wd", base.kernels + 1, base.passes + 3, base.states)
        return base
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return OPTIMIZERS["adamw" if isinstance(optimizer, torch.optim.AdamW) else "adam"]
    raise ValueError(f"the cost model does not know {type(optimizer).__name__}; pass "
                     f"optimizer= one of {sorted(OPTIMIZERS)} (the closest in work per step)")
