"""Per-layer summaries of the sampled statistics seen during one decision window."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from adaprec.numerics.stats import LayerStats
from adaprec.controllers._common import flush_rate, overflow_rate, rel_err, trace_nonfinite

__all__ = ["Window", "summarize_step"]


@dataclass
class Window:
    """Worst values of one layer's signals over the sampled steps of a window.

    ``nonfinite`` holds the format the layer ran in when non-finite values were traced to it
    ("" when none were).
    """

    samples: int = 0
    overflow: float = 0.0
    flush: float = 0.0
    bf16_err: float = 0.0
    fp16_err: float = 0.0
    nonfinite: str = ""
    absmax: float = 0.0

    def add(self, other: "Window") -> None:
        self.samples += other.samples
        self.overflow = max(self.overflow, other.overflow)
        self.flush = max(self.flush, other.flush)
        self.bf16_err = max(self.bf16_err, other.bf16_err)
        self.fp16_err = max(self.fp16_err, other.fp16_err)
        self.absmax = max(self.absmax, other.absmax)
        self.nonfinite = self.nonfinite or other.nonfinite

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Window":
        return cls(**dict(d))


def _summary(s: LayerStats) -> Window:
    return Window(samples=1, overflow=overflow_rate(s), flush=flush_rate(s),
                  bf16_err=rel_err(s, "bf16"), fp16_err=rel_err(s, "fp16"),
                  absmax=s.worst("absmax", ("act", "grad")))


def summarize_step(stats: Mapping[str, LayerStats] | None, layers: Sequence[str],
                   plan, culprit: str | None = None) -> dict[str, Window]:
    """One step's per-layer summaries (``plan``: the Plan the step ran under).

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
        w = _summary(stats[culprit]) if culprit in stats else Window()
        w.nonfinite = plan.format_of(culprit)
        return {culprit: w}
    return {name: _summary(stats[name]) for name in layers if name in stats}
