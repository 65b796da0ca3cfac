"""A linear layer whose three GEMMs read their operands in the layer's formats, each blocked over
that GEMM's own reduction dimension: Transformer Engine's and torchao's MX training linear.

For ``y = x W^T + b`` with ``x`` of ``T x K`` (tokens by input features) and ``W`` of ``N x K``:

* fprop: ``y = Q_input(x) Q_weight(W)^T + b``, both blocked over ``K``;
* dgrad: ``dx = Q_dgrad(g) Q_weight(W)``, the output gradient ``g`` and the weight blocked over
  ``N``;
* wgrad: ``dW = Q_dgrad(g)^T Q_input(x)``, both blocked over the tokens ``T``; the weight
  gradient is then held in the ``wgrad`` format (:mod:`adaprec.cost.model` prices the same three
  GEMMs and the weight gradient's format). ``wgrad=fp32`` is torchao's ``mx_mm`` exactly (bit for
  bit, tests/test_gemm_operands.py).

The output, the input gradient and the bias (and its gradient) stay fp32, as the GEMMs'
accumulators write them; whichever layer reads them rounds them to its own format. A per-tensor
or unscaled format's values do not depend on the blocking, so its operands are rounded once and
reused transposed (delayed scaling records each tensor's amax once, as natively).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adaprec.numerics.formats import Format

__all__ = ["Operands", "LinearOperandsFn"]

Rounder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Operands:
    """How one linear layer rounds its GEMM operands: ``input``/``weight``/``grad`` round a
    tensor in blocks over its last dimension, or over ``axis`` (``fn(t, axis=-1)``: an fp32
    tensor in, its format's values out, in the same shape);
    ``weight_grad`` rounds the weight gradient; ``*_fmt``: whether re-blocking along another
    dimension changes values (block and tile formats) is read from them."""

    input: Rounder
    weight: Rounder
    grad: Rounder
    weight_grad: Rounder
    input_fmt: Format
    weight_fmt: Format
    grad_fmt: Format

    def reblocks(self, fmt: Format) -> bool:
        return fmt.scaling in ("block", "tiles")


class LinearOperandsFn(torch.autograd.Function):
    """``F.linear`` with operands rounded per GEMM (module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                ops: Operands, x_rounded: bool = False) -> torch.Tensor:
        """``x_rounded``: ``x`` already holds the input format's values in fprop's blocks."""
        x2 = x.reshape(-1, x.shape[-1]).float()
        xq, wq = (x2 if x_rounded else ops.input(x2)), ops.weight(weight.float())
        ctx.ops, ctx.x_shape, ctx.has_bias = ops, x.shape, bias is not None
        ctx.save_for_backward(x2, weight, xq, wq)
        y = F.linear(xq, wq, bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        ops = ctx.ops
        x2, weight, xq, wq = ctx.saved_tensors
        g2 = gy.reshape(-1, gy.shape[-1]).float()
        gq = ops.grad(g2)
        dx = dw = db = None
        # each GEMM's operands blocked along its reduction dimension, in place (no transposed
        # copies: the GEMMs read them transposed)
        if ctx.needs_input_grad[0]:
            # dgrad reduces over the output features: the weight blocked along them
            wq_n = ops.weight(weight.float(), 0) if ops.reblocks(ops.weight_fmt) else wq
            dx = (gq @ wq_n).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            # wgrad reduces over the tokens: gradient and input blocked along them
            gq_t = ops.grad(g2, 0) if ops.reblocks(ops.grad_fmt) else gq
            xq_t = ops.input(x2, 0) if ops.reblocks(ops.input_fmt) else xq
            dw = ops.weight_grad(gq_t.t() @ xq_t).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db, None, None
