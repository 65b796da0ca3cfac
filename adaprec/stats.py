"""Per-tensor numerics statistics, reduced on the device and derived on the host.

``raw_stats`` returns a small vector of sums and counts (so statistics of several tensors, e.g.
a layer's weight and bias, combine by adding/maxing) without any host sync. ``derive`` turns
the read-back vector into the ratios a controller reads.

Definitions (``x`` evaluated in fp32; gradients first multiplied up to the loss scale under
which fp16 would see them):
- ``fp16_overflow``: fraction that becomes inf when cast to fp16 (|x| >= 65520 after RNE, plus
  values already inf); ``fp16_underflow``: nonzero finite values below fp16's smallest normal
  2^-14; ``fp16_flush``: nonzero values that round to zero in fp16 (|x| <= 2^-25).
- ``<fmt>_rel_err``: ||x - round_fmt(x)|| / ||x|| over elements finite in x and in the format,
  so the error measures mantissa loss and range problems are counted by the rates above.
- ``norm``: L2 norm of the finite values at the true (unscaled) magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .formats import FP16

__all__ = ["TensorStats", "LayerStats", "raw_stats", "combine_raw", "derive",
           "tensor_stats", "STAT_NAMES", "KINDS"]

KINDS = ("act", "grad", "weight", "wgrad")
# positions in the raw vector
_N, _NONFIN, _ABSMAX, _SUMABS, _SUMSQ, _OVF, _UNF, _FLUSH, _ERRBF, _ERRH, _SUMSQH, _SCALE = range(12)
_RAW_LEN = 12
_FP16_TINY = FP16.smallest_normal


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor (or a group, e.g. a layer's parameters) at one step."""

    numel: int
    absmax: float
    mean_abs: float
    nonfinite_frac: float
    fp16_overflow: float
    fp16_underflow: float
    fp16_flush: float
    bf16_rel_err: float
    fp16_rel_err: float
    norm: float


STAT_NAMES = tuple(f.name for f in fields(TensorStats) if f.name != "numel")


@dataclass(frozen=True)
class LayerStats:
    """What the monitor measured for one layer at one sampled step.

    ``act``: the layer's output; ``grad``: the gradient w.r.t. that output; ``weight`` and
    ``wgrad``: the layer's own parameters and their gradients. A kind is None when absent
    (no parameters, output not differentiable).
    """

    layer: str
    step: int
    format: str
    act: TensorStats | None = None
    grad: TensorStats | None = None
    weight: TensorStats | None = None
    wgrad: TensorStats | None = None

    def as_row(self) -> dict:
        """Flat ``{"step", "layer", "format", "<kind>_<stat>": value}`` (NaN where absent)."""
        row: dict = {"step": self.step, "layer": self.layer, "format": self.format}
        for kind in KINDS:
            ts = getattr(self, kind)
            for name in STAT_NAMES:
                row[f"{kind}_{name}"] = getattr(ts, name) if ts is not None else float("nan")
        return row

    def worst(self, stat: str, kinds: tuple[str, ...] = ("act", "grad")) -> float:
        """Largest value of ``stat`` over the given kinds (0 when none present)."""
        vals = [getattr(getattr(self, k), stat) for k in kinds if getattr(self, k) is not None]
        return max(vals, default=0.0)


def raw_stats(x: torch.Tensor, scale: float = 1.0, prescaled: float = 1.0) -> torch.Tensor:
    """Sums and counts for ``x`` as a float64 vector on ``x``'s device (no host sync).

    Range checks see ``x`` at loss scale ``scale``; ``prescaled`` is the scale ``x`` already
    carries (a gradient from a scaled backward). Norm, mean and absmax are reported back at
    the unscaled magnitude.
    """
    x = x.detach()
    xf = x.float()
    if scale != prescaled:
        xf = xf * (scale / prescaled)
    a = xf.abs()
    finite = torch.isfinite(a)
    af = torch.where(finite, a, torch.zeros((), device=a.device))
    h = af.to(torch.float16)
    hf = h.float()
    bf = af.to(torch.bfloat16).float()
    h_ok = torch.isfinite(hf)
    nonzero = af > 0
    sumsq = (af * af).sum(dtype=torch.float64)
    err_h = torch.where(h_ok, hf - af, torch.zeros((), device=a.device))
    af_h = torch.where(h_ok, af, torch.zeros((), device=a.device))
    out = torch.stack([
        torch.tensor(float(x.numel()), dtype=torch.float64, device=a.device),
        (~finite).sum(dtype=torch.float64),
        af.max().double() if x.numel() else torch.zeros((), dtype=torch.float64, device=a.device),
        af.sum(dtype=torch.float64),
        sumsq,
        # inf in fp16: finite values that overflow, plus values already inf (not NaN)
        (torch.isinf(h).sum(dtype=torch.float64) + torch.isinf(a).sum(dtype=torch.float64)),
        (nonzero & (af < _FP16_TINY)).sum(dtype=torch.float64),
        (nonzero & (h == 0)).sum(dtype=torch.float64),
        ((bf - af) ** 2).sum(dtype=torch.float64),
        (err_h * err_h).sum(dtype=torch.float64),
        (af_h * af_h).sum(dtype=torch.float64),
        torch.tensor(float(scale), dtype=torch.float64, device=a.device),
    ])
    return out


def combine_raw(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Combine raw vectors of several tensors into one (sums add, absmax takes the max)."""
    stacked = torch.stack(vectors)
    out = stacked.sum(0)
    out[_ABSMAX] = stacked[:, _ABSMAX].max()
    out[_SCALE] = stacked[0, _SCALE]
    return out


def derive(raw: list[float]) -> TensorStats:
    """Turn one read-back raw vector into :class:`TensorStats`."""
    n, nonfin = raw[_N], raw[_NONFIN]
    scale = raw[_SCALE] or 1.0
    n_fin = max(n - nonfin, 1.0)
    sumsq = raw[_SUMSQ]
    return TensorStats(
        numel=int(n),
        absmax=raw[_ABSMAX] / scale,
        mean_abs=raw[_SUMABS] / n_fin / scale,
        nonfinite_frac=nonfin / n if n else 0.0,
        fp16_overflow=raw[_OVF] / n if n else 0.0,
        fp16_underflow=raw[_UNF] / n if n else 0.0,
        fp16_flush=raw[_FLUSH] / n if n else 0.0,
        bf16_rel_err=(raw[_ERRBF] / sumsq) ** 0.5 if sumsq > 0 else 0.0,
        fp16_rel_err=(raw[_ERRH] / raw[_SUMSQH]) ** 0.5 if raw[_SUMSQH] > 0 else 0.0,
        norm=sumsq**0.5 / scale,
    )


def tensor_stats(x: torch.Tensor, scale: float = 1.0, prescaled: float = 1.0) -> TensorStats:
    """Convenience: raw stats read back and derived (one sync)."""
    return derive(raw_stats(x, scale, prescaled).tolist())

