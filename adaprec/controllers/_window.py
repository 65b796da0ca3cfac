"""Per-layer summaries of the sampled statistics seen during one decision window."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from adaprec.numerics.formats import get_format
from adaprec.numerics.stats import FORMAT_STATS, LayerStats
from adaprec.controllers._common import RANGE_KINDS, flush_rate, overflow_rate, rel_err, trace_nonfinite

__all__ = ["Window", "summarize_step"]


@dataclass
class Window:
    """Worst values of one layer's signals over the sampled steps of a window.

    ``nonfinite`` holds the format the layer ran in when non-finite values were traced to it
    ("" when none were). ``overflow``/``flush``/``bf16_err``/``fp16_err`` are the fp16 and
    bf16 signals; ``errors[fmt]`` holds ``[overflow, underflow, rel_err, mse]`` of every judged
    candidate (:meth:`stat` reads either). ``shadow``: the worst shadow ``rel_spread`` and
    ``rel_err`` of the layer's output, and ``shadow_format`` the format it ran in then.
    """

    samples: int = 0
    overflow: float = 0.0
    flush: float = 0.0
    bf16_err: float = 0.0
    fp16_err: float = 0.0
    nonfinite: str = ""
    absmax: float = 0.0
    errors: dict = field(default_factory=dict)
    shadow: list = field(default_factory=list)
    shadow_format: str = ""
    shadow_pred: dict = field(default_factory=dict)

    def add(self, other: "Window") -> None:
        self.samples += other.samples
        self.overflow = max(self.overflow, other.overflow)
        self.flush = max(self.flush, other.flush)
        self.bf16_err = max(self.bf16_err, other.bf16_err)
        self.fp16_err = max(self.fp16_err, other.fp16_err)
        self.absmax = max(self.absmax, other.absmax)
        self.nonfinite = self.nonfinite or other.nonfinite
        for fmt, vals in other.errors.items():
            mine = self.errors.get(fmt)
            self.errors[fmt] = list(vals) if mine is None else [max(a, b) for a, b in zip(mine, vals)]
        if other.shadow:
            if self.shadow and self.shadow_format == other.shadow_format:
                self.shadow = [max(a, b) for a, b in zip(self.shadow, other.shadow)]
            else:  # a switch inside the window: the latest format's shadow speaks for it
                self.shadow, self.shadow_format = list(other.shadow), other.shadow_format
        for fmt, v in other.shadow_pred.items():
            self.shadow_pred[fmt] = max(self.shadow_pred.get(fmt, 0.0), v)

    def output_err(self, fmt: str) -> float | None:
        """The layer's output error in ``fmt`` as RMSE over the output's spread: measured by
        the shadow when the layer ran in ``fmt``; else predicted, from the fp32 output rounded
        to ``fmt`` and from the error measured in the format it ran in, scaled by the mantissa
        bits between the two. None when no shadow was taken (the rule does not apply)."""
        if not self.shadow and not self.shadow_pred:
            return None
        fmt = get_format(fmt).name
        if fmt == "fp32":
            return 0.0
        pred = self.shadow_pred.get(fmt, float("inf"))
        if self.shadow and self.shadow_format == fmt:
            return max(pred, self.shadow[0])
        if self.shadow and self.shadow_format not in ("", "fp32"):
            gap = get_format(self.shadow_format).mantissa_bits - get_format(fmt).mantissa_bits
            pred = max(pred, self.shadow[0] * 2.0 ** gap)
        return pred

    def stat(self, fmt: str, name: str) -> float:
        """Worst ``name`` (``overflow``, ``underflow``, ``rel_err``, ``mse``) of ``fmt`` in this
        window; 0 for fp32; inf for a format never judged (unknown is not safe)."""
        fmt = get_format(fmt).name
        if fmt == "fp32":
            return 0.0
        if fmt in self.errors:
            return self.errors[fmt][FORMAT_STATS.index(name)]
        legacy = {("fp16", "overflow"): self.overflow, ("fp16", "underflow"): self.flush,
                  ("fp16", "rel_err"): self.fp16_err, ("bf16", "rel_err"): self.bf16_err,
                  ("bf16", "overflow"): 0.0, ("bf16", "underflow"): 0.0}
        return legacy.get((fmt, name), float("inf"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Window":
        return cls(**dict(d))


def _summary(s: LayerStats, formats: Sequence[str]) -> Window:
    errors = {f: [s.worst_error(f, name, RANGE_KINDS) for name in FORMAT_STATS]
              for f in formats if f != "fp32"}
    shadow = [s.shadow.rel_spread, s.shadow.rel_err] if s.shadow is not None else []
    pred = {f: s.shadow.predicted(f) for f in formats if f != "fp32"} if s.shadow is not None else {}
    return Window(samples=1, overflow=overflow_rate(s), flush=flush_rate(s),
                  bf16_err=rel_err(s, "bf16"), fp16_err=rel_err(s, "fp16"),
                  absmax=s.worst("absmax", ("act", "grad")), errors=errors, shadow=shadow,
                  shadow_format=s.format if shadow else "", shadow_pred=pred)


def summarize_step(stats: Mapping[str, LayerStats] | None, layers: Sequence[str],
                   plan, culprit: str | None = None, formats: Sequence[str] = ()) -> dict[str, Window]:
    """One step's per-layer summaries (``plan``: the Plan the step ran under; ``formats``:
    the candidates whose judged errors the windows keep).

    When non-finite values are traced to a layer (``culprit``, else found by
    :func:`trace_nonfinite`), only that layer is summarized: every other layer's statistics of
    that step are contaminated by the inf/NaN it produced and would blame innocent layers.
    """
    if stats is None:
        if culprit is None:
            return {}
        return {culprit: Window(samples=0, nonfinite=plan.format_of(culprit))}
    culprit = culprit or trace_nonfinite(stats, layers)
    if culprit is not None:
        w = _summary(stats[culprit], formats) if culprit in stats else Window()
        w.nonfinite = plan.format_of(culprit)
        return {culprit: w}
    return {name: _summary(stats[name], formats) for name in layers if name in stats}
