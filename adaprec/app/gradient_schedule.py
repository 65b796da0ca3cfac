"""A deterministic schedule on the size of every gradient: gradients that shrink late in training.

Micikevicius et al. (2018, *Mixed Precision Training*, Fig. 3) show activation gradients that
mostly lie below fp16's smallest subnormal (2^-24), and they shrink further as the loss falls;
without loss scaling fp16 then flushes them to zero and learning stops. ``trainer.grad_schedule``
makes that happen at a known step: from ``start`` the gradient that leaves the loss is multiplied
by a factor that falls geometrically from 1 to ``final`` over ``steps`` steps, then stays there,
and the parameters' gradients are divided by it again before the optimizer (as loss scaling
unscales). So every layer's backward pass - what a format must represent - carries small
gradients, while the update is the true one: an fp32 run trains as without the schedule (up to
rounding), a format without the range flushes the small gradients to zero and stops learning.
(Scaling without unscaling would not do: Adam's second-moment average remembers the earlier,
larger gradients for ~1/(1 - beta2) steps and shrinks every update too.) The forward pass and
the loss are untouched, so the logged loss and every evaluation are in the task's own units.
The factor is a pure function of the step, so a resumed run is bit-identical to an
uninterrupted one.
"""
from __future__ import annotations

import torch

__all__ = ["gradient_factor", "scale_gradient", "unscale_gradients"]


def gradient_factor(step: int, start: int = 0, steps: int = 0, final: float = 1.0) -> float:
    """The gradient multiplier at ``step``: 1 before ``start``, ``final ** ((step - start) / steps)``
    while ramping, ``final`` from ``start + steps`` on (at once when ``steps`` is 0)."""
    if final == 1.0 or step < start:
        return 1.0
    if steps <= 0 or step >= start + steps:
        return float(final)
    return float(final) ** ((step - start) / steps)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged in forward; in backward its gradient is multiplied by ``factor``."""
    return x if factor == 1.0 else _ScaleGradient.apply(x, factor)


def unscale_gradients(parameters, factor: float) -> None:
    """Divide every parameter's ``.grad`` by ``factor`` (after the backward passes of a step)."""
    if factor == 1.0:
        return
    for p in parameters:
        if p.grad is not None:
            p.grad.div_(factor)
