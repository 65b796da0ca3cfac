"""Name the layer that made a step non-finite.

Checking every layer's output on every step would cost a reduction and a host sync per layer,
so adaprec checks nothing on clean steps. When a step is found non-finite (loss or any
gradient inf/NaN, which the loss scaler's unscale detects anyway), ``AdaptivePrecision``
replays that one step from its starting RNG state inside :func:`find_nonfinite_layer`, whose
hooks check each layer's output (forward order) and output gradient (backward order). The
culprit is, in order of precedence:

1. the first layer, in forward order, whose output has an inf/NaN;
2. ``"(loss)"`` when every output was finite but the loss was not;
3. the first layer, in backward order, whose output gradient has an inf/NaN;
4. the first layer, in backward (reverse registration) order, whose parameter gradient has one.

None when the replay stays finite (a non-deterministic kernel). Under DDP each rank replays
and the culprit of highest precedence wins (lowest rank on ties): a NaN output on rank 1
beats the NaN parameter gradients the all-reduce then spreads to rank 0.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from adaprec.runtime.eager import eager

__all__ = ["find_nonfinite_layer", "NonfiniteDiagnosis", "LOSS_CULPRIT"]

LOSS_CULPRIT = "(loss)"


def _floats(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _floats(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _floats(o)]
    return []


def _nonfinite(t: torch.Tensor) -> bool:
    return not bool(torch.isfinite(t.detach()).all())


class NonfiniteDiagnosis:
    """What the replay saw: first non-finite output, loss, and first non-finite gradient."""

    def __init__(self, params_by_layer: Mapping[str, Sequence[torch.Tensor]] = {}) -> None:
        self.params_by_layer = params_by_layer
        self.forward: str | None = None
        self.backward: str | None = None
        self.loss_nonfinite = False

    def check_loss(self, loss: torch.Tensor) -> None:
        self.loss_nonfinite = self.loss_nonfinite or _nonfinite(loss)

    def culprit(self) -> tuple[int, str] | None:
        """``(precedence, layer)`` of the culprit (lower precedence wins, see module doc), so
        that ranks of a DDP run can agree on the most telling one; None if all stayed finite."""
        if self.forward is not None:
            return 0, self.forward
        if self.loss_nonfinite:
            return 1, LOSS_CULPRIT
        if self.backward is not None:
            return 2, self.backward
        for name in reversed(list(self.params_by_layer)):
            if any(p.grad is not None and _nonfinite(p.grad) for p in self.params_by_layer[name]):
                return 3, name
        return None

    def _forward_hook(self, name: str):
        def hook(module, args, output):
            tensors = _floats(output)
            if self.forward is None and any(_nonfinite(t) for t in tensors):
                self.forward = name
            for t in tensors:
                if t.requires_grad:
                    t.register_hook(self._grad_hook(name))
        return hook

    def _grad_hook(self, name: str):
        def hook(grad):
            if self.backward is None and _nonfinite(grad):
                self.backward = name
        return hook


@contextmanager
def find_nonfinite_layer(model: nn.Module, layers: Sequence[str]) -> Iterator[NonfiniteDiagnosis]:
    """Hooks that record the first non-finite layer while the block runs; removed on exit.

    Registered after the executor's hooks, so they see each layer's output as the executor
    leaves it (cast back to fp32 where the caller expects fp32)."""
    modules = dict(model.named_modules())
    diagnosis = NonfiniteDiagnosis({name: list(modules[name].parameters(recurse=False))
                                    for name in layers})
    handles = [modules[name].register_forward_hook(eager(diagnosis._forward_hook(name)))
               for name in layers]
    try:
        yield diagnosis
    finally:
        for h in handles:
            h.remove()
