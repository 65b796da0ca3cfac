"""Hand-built LayerStats and StepRecords for controller tests (no model needed)."""
from __future__ import annotations

from adaprec import Plan
from adaprec.controllers import ControllerContext, StepRecord
from adaprec.numerics.stats import LayerStats, TensorStats

BF16_ERR = 1.1e-3   # typical bf16 relative rounding error of a normal-range tensor
FP16_ERR = 1.4e-4


def tensor(overflow=0.0, flush=0.0, bf16_err=BF16_ERR, fp16_err=FP16_ERR, nonfinite=0.0, absmax=1.0):
    return TensorStats(numel=1000, absmax=absmax, mean_abs=absmax / 4, nonfinite_frac=nonfinite,
                       fp16_overflow=overflow, fp16_underflow=flush, fp16_flush=flush,
                       bf16_rel_err=bf16_err, fp16_rel_err=fp16_err, norm=10.0)


def layer_stats(name, fmt, step=0, grad=None, input=None, **act):
    """Stats of one layer: ``act`` keyword arguments shape the activation, ``grad`` and
    ``input`` are TensorStats (``input`` absent unless given)."""
    return LayerStats(layer=name, step=step, format=fmt, act=tensor(**act),
                      grad=grad or tensor(), weight=tensor(), wgrad=tensor(), input=input)


def operands_stats(plan, step=0, **overrides):
    """Every layer clean; ``overrides[layer] = dict(...)`` shapes that layer's input activation
    *and* output gradient (the tensors all three of its GEMMs read between them)."""
    return {name: layer_stats(name, plan.format_of(name), step, grad=tensor(**overrides.get(name, {})),
                              input=tensor(**overrides.get(name, {})))
            for name in plan}


def record(step, plan, stats=None, loss=1.0, skipped=False, scale=1.0, gradients=None):
    return StepRecord(step=step, loss=loss, skipped=skipped, loss_scale=scale, plan=plan, stats=stats,
                      gradients=gradients)


def clean_stats(plan, step=0, **overrides):
    """Every layer clean; ``overrides[layer] = dict(...)`` shapes that layer's activation."""
    return {name: layer_stats(name, plan.format_of(name), step, **overrides.get(name, {}))
            for name in plan}


def context(layers, **kw):
    return ControllerContext(layers=list(layers), **kw)


def run(controller, steps, stats_fn, layers, start=0):
    """Drive ``controller`` like AdaptivePrecision does; returns the plans for steps start..steps."""
    plan = controller.decide(start) if start == 0 else controller.plan
    plans = [plan]
    for step in range(start, steps):
        controller.observe(record(step, plan, stats_fn(step, plan)))
        plan = controller.decide(step + 1)
        plans.append(plan)
    return plans
