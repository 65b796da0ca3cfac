"""Robust aggregates over seeds, as rliable (Agarwal et al., NeurIPS 2021) recommends.

- :func:`iqm`: the interquartile mean (mean of the middle 50 % of the values, 25 % trimmed on
  each side: ``scipy.stats.trim_mean``); with fewer than 4 values nothing is trimmed.
- :func:`bootstrap_ci`: a percentile bootstrap interval of a statistic over seeds
  (``scipy.stats.bootstrap``, seeded, so reports are reproducible). Within one workload the
  seeds are the only stratum; :func:`stratified_bootstrap_ci` resamples each workload's runs
  independently for aggregates across workloads.
- :func:`probability_of_improvement`: P(X > Y) for a random run X of one policy and Y of
  another (the Mann-Whitney U statistic over ``n·m``; ties count one half).
- :func:`interval_pareto_mask`: a point is dominated only where the intervals say so.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["iqm", "bootstrap_ci", "stratified_bootstrap_ci", "probability_of_improvement",
           "interval_pareto_mask", "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED"]

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


def iqm(values) -> float:
    """Interquartile mean of the finite ``values`` (NaN when there are none)."""
    x = _finite(values)
    return float(sps.trim_mean(x, 0.25)) if len(x) else float("nan")


def _iqm_axis(sample, axis=-1):
    return sps.trim_mean(sample, 0.25, axis=axis)


def bootstrap_ci(values, statistic: Callable = iqm, confidence: float = 0.95,
                 n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` of ``statistic`` over the finite ``values``; NaN
    where fewer than two values exist; ``(v, v)`` when all values are equal."""
    x = _finite(values)
    if len(x) < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    vectorized = _iqm_axis if statistic is iqm else \
        (lambda s, axis=-1: np.apply_along_axis(statistic, axis, s))
    res = sps.bootstrap((x,), vectorized,
                        confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                        rng=np.random.default_rng(seed), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def stratified_bootstrap_ci(groups: Mapping[str, Sequence[float]], statistic: Callable = iqm,
                            confidence: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over the pooled values when each stratum (e.g.
    workload, values already normalized to be comparable) is resampled on its own."""
    rng = np.random.default_rng(seed)
    strata = [_finite(v) for v in groups.values()]
    strata = [s for s in strata if len(s)]
    if not strata or sum(len(s) for s in strata) < 2:
        return float("nan"), float("nan")
    stats = np.empty(n_resamples)
    for i in range(n_resamples):
        stats[i] = statistic(np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata]))
    alpha = (1 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def probability_of_improvement(x, y, higher_is_better: bool = True) -> float:
    """P(a run of ``x`` beats a run of ``y``): U / (n·m), ties one half; NaN if either is empty."""
    a, b = _finite(x), _finite(y)
    if not len(a) or not len(b):
        return float("nan")
    if not higher_is_better:
        a, b = -a, -b
    wins = (a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum()
    return float(wins / (len(a) * len(b)))


def interval_pareto_mask(q_lo, q_mean, q_hi, c_lo, c_mean, c_hi,
                         higher_is_better: bool = True) -> np.ndarray:
    """True for the points that no other point dominates *beyond the intervals*: j dominates i
    only when j's worst case is at least as good as i's best case in quality and in cost, and j
    is strictly better on a mean. NaN interval bounds count as zero width (then this is the
    ordinary front over the means); NaN means are never on the front."""
    sign = 1.0 if higher_is_better else -1.0
    qm, cm = sign * np.asarray(q_mean, float), np.asarray(c_mean, float)
    lo, hi = (np.asarray(q_lo, float), np.asarray(q_hi, float))
    ql = np.where(np.isfinite(lo), lo, np.asarray(q_mean, float))
    qh = np.where(np.isfinite(hi), hi, np.asarray(q_mean, float))
    q_worst, q_best = (ql, qh) if higher_is_better else (-qh, -ql)
    cl = np.where(np.isfinite(np.asarray(c_lo, float)), c_lo, cm)
    ch = np.where(np.isfinite(np.asarray(c_hi, float)), c_hi, cm)
    valid = np.isfinite(qm) & np.isfinite(cm)
    mask = np.zeros(len(qm), dtype=bool)
    for i in np.flatnonzero(valid):
        dominated = (valid & (q_worst >= q_best[i]) & (ch <= cl[i])
                     & ((qm > qm[i]) | (cm < cm[i])))
        mask[i] = not dominated.any()
    return mask
