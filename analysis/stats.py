"""Statistics over seeds: means with t confidence intervals, Welch's t-test, Pareto fronts.

Confidence intervals are two-sided Student-t intervals over seeds,
``mean ± t_{(1+c)/2, n-1} · s / sqrt(n)`` with the sample standard deviation ``s`` (ddof=1);
a group with one value has a mean but no interval (NaN). Only runs with status ``"ok"`` enter
any aggregate; the others are counted (``n_runs`` vs ``n``) so failures stay visible.
"""
from __future__ import annotations

import re
import warnings
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from adaprec.tasks import quality_metrics

from .load import ok_runs
from .robust import bootstrap_ci, interval_pareto_mask, iqm, probability_of_improvement

__all__ = ["CONFIDENCE", "t_interval", "default_metrics", "aggregate", "welch_tests",
           "pareto_mask", "cost_columns", "pareto_front", "improvement_probabilities",
           "is_static_policy"]

CONFIDENCE = 0.95
_AGG_PATTERN = re.compile(r"^(rel_cost_.+|cost_.+_s|flop_share_.+|format_share_.+|mem_.+_bytes"
                          r"|cuda_max_mem_bytes)$")
_RUN_METRICS = ("wall_s", "cpu_s", "skipped_steps", "plan_changes")


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, std, half_width)`` of the finite ``values``; the Student-t half width of the
    ``confidence`` interval. NaN where undefined (no values; std and width need two)."""
    x = np.asarray(list(values), dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan"), float("nan")
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf((1 + confidence) / 2, len(x) - 1) * std / np.sqrt(len(x)))
    return float(x.mean()), std, half


def default_metrics(runs: pd.DataFrame) -> list[str]:
    """Numeric metrics worth aggregating that ``runs`` has: quality, losses, wall time, skips,
    plan changes, modeled costs and format/FLOP shares."""
    qualities = [m for m, _ in quality_metrics() if m != "val_loss"]  # every task's (adaprec.tasks)
    base = ("quality", "val_loss", *qualities, *_RUN_METRICS)
    return [c for c in base if c in runs] + sorted(c for c in runs if _AGG_PATTERN.match(c))


def aggregate(runs: pd.DataFrame, metrics: Sequence[str] | None = None,
              by: Sequence[str] = ("workload", "controller"),
              confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per ``by`` group (over seeds) with, for each metric ``m``: ``m_mean``, ``m_std``,
    ``m_ci95`` (half width of the t interval), ``m_lo``, ``m_hi``; plus ``n`` (ok runs),
    ``n_runs`` (all runs, failed ones included), ``quality_metric`` and ``higher_is_better``;
    for ``quality`` also the robust ``quality_iqm`` with its percentile-bootstrap interval
    ``quality_iqm_lo`` / ``quality_iqm_hi`` (:mod:`analysis.robust`)."""
    metrics = list(metrics) if metrics is not None else default_metrics(runs)
    ok = ok_runs(runs)
    rows = []
    for key, group in runs.groupby(list(by), dropna=False, sort=True):
        good = ok.loc[ok.index.intersection(group.index)]
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update(n=len(good), n_runs=len(group),
                   quality_metric=group["quality_metric"].iloc[0] if "quality_metric" in group else None,
                   higher_is_better=group["higher_is_better"].iloc[0] if "higher_is_better" in group else None)
        for m in metrics:
            mean, std, half = t_interval(pd.to_numeric(good[m], errors="coerce"), confidence)
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_ci95": half,
                        f"{m}_lo": mean - half, f"{m}_hi": mean + half})
        if "quality" in metrics:
            q = pd.to_numeric(good["quality"], errors="coerce")
            lo, hi = bootstrap_ci(q, confidence=confidence)
            row.update(quality_iqm=iqm(q), quality_iqm_lo=lo, quality_iqm_hi=hi)
        rows.append(row)
    return pd.DataFrame(rows)


def welch_tests(runs: pd.DataFrame, metric: str = "quality", baseline: str = "fp32",
                by: str = "workload", group: str = "controller") -> pd.DataFrame:
    """Welch's unequal-variance t-test of each ``group`` (controller) against ``baseline`` on
    ``metric``, per ``by`` (workload), over ok runs. Columns: ``by, group, n, n_baseline, mean,
    mean_baseline, diff, t, p`` (two-sided). NaN where either side has fewer than two values or
    the baseline is absent."""
    ok = ok_runs(runs)
    rows = []
    for wl, runs_wl in ok.groupby(by, dropna=False, sort=True):
        base = _finite(runs_wl.loc[runs_wl[group] == baseline, metric])
        for ctrl, runs_c in runs_wl.groupby(group, sort=True):
            if ctrl == baseline:
                continue
            x = _finite(runs_c[metric])
            t, p = float("nan"), float("nan")
            if len(x) >= 2 and len(base) >= 2:
                with warnings.catch_warnings():  # zero variance on both sides: scipy warns, gives NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    t, p = (float(v) for v in sps.ttest_ind(x, base, equal_var=False))
            mean = x.mean() if len(x) else float("nan")
            mean_b = base.mean() if len(base) else float("nan")
            rows.append({by: wl, group: ctrl, "n": len(x), "n_baseline": len(base), "mean": mean,
                         "mean_baseline": mean_b, "diff": mean - mean_b, "t": t, "p": p})
    return pd.DataFrame(rows, columns=[by, group, "n", "n_baseline", "mean", "mean_baseline",
                                       "diff", "t", "p"])


def _finite(s: pd.Series) -> np.ndarray:
    x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
    return x[np.isfinite(x)]


def pareto_mask(quality: Sequence[float], cost: Sequence[float],
                higher_is_better: bool = True) -> np.ndarray:
    """True for the points no other point dominates (at least as good in quality and cost, and
    strictly better in one). Identical points are all kept; NaN points are never on the front."""
    q = np.asarray(quality, dtype=float) * (1 if higher_is_better else -1)
    c = np.asarray(cost, dtype=float)
    if q.shape != c.shape:
        raise ValueError(f"quality and cost differ in length ({q.shape} vs {c.shape})")
    valid = np.isfinite(q) & np.isfinite(c)
    mask = np.zeros(len(q), dtype=bool)
    for i in np.flatnonzero(valid):
        dominated = valid & (q >= q[i]) & (c <= c[i]) & ((q > q[i]) | (c < c[i]))
        mask[i] = not dominated.any()
    return mask


MEASURED_COSTS = ("wall_s", "cpu_s")


def cost_columns(runs: pd.DataFrame, measured: str = "wall_s", memory: bool = False
                 ) -> tuple[list[str], bool]:
    """The modeled cost columns (``rel_cost_<profile>``; with ``memory`` also the modeled
    ``mem_<profile>_bytes`` and, on CUDA, the measured ``cuda_max_mem_bytes``) that ok runs
    report, and whether they are missing so that the ``measured`` time stands in (then
    ``([measured], True)``): ``wall_s``, or ``cpu_s`` (process CPU time, robust on a shared
    machine)."""
    if measured not in MEASURED_COSTS:
        raise ValueError(f"measured={measured!r}; choose one of {MEASURED_COSTS}")
    ok = ok_runs(runs)
    cols = sorted(c for c in runs if c.startswith("rel_cost_") and ok[c].notna().any())
    if memory:
        cols += sorted(c for c in runs if (c.startswith("mem_") and c.endswith("_bytes")
                                           or c == "cuda_max_mem_bytes") and ok[c].notna().any())
    if cols:
        return cols, False
    if measured not in runs:
        raise ValueError(f"runs have neither rel_cost_<profile> nor {measured}; the trainer's "
                         "metrics.json reports wall_s and cpu_s")
    return [measured], True


def pareto_front(agg: pd.DataFrame, costs: Sequence[str], quality: str = "quality",
                 by: str = "workload", group: str = "controller") -> pd.DataFrame:
    """Quality vs each cost column per workload, from :func:`aggregate` output. One row per
    (workload, cost, controller): ``quality_mean, quality_ci95, cost_mean, cost_ci95, n,
    on_front`` — a point leaves the front only where the 95% intervals say another point is
    better (:func:`analysis.robust.interval_pareto_mask`; with one seed, over the means)."""
    frames = []
    for cost in costs:
        for wl, part in agg.groupby(by, dropna=False, sort=True):
            higher = bool(part["higher_is_better"].iloc[0]) if part["higher_is_better"].notna().any() else True
            frame = pd.DataFrame({
                by: wl, "cost": cost, group: part[group].to_numpy(),
                "quality_metric": part["quality_metric"].to_numpy(), "higher_is_better": higher,
                "quality_mean": part[f"{quality}_mean"].to_numpy(),
                "quality_ci95": part[f"{quality}_ci95"].to_numpy(),
                "cost_mean": part[f"{cost}_mean"].to_numpy(),
                "cost_ci95": part[f"{cost}_ci95"].to_numpy(), "n": part["n"].to_numpy()})
            qh, ch = frame["quality_ci95"].to_numpy(float), frame["cost_ci95"].to_numpy(float)
            qm, cm = frame["quality_mean"].to_numpy(float), frame["cost_mean"].to_numpy(float)
            frame["on_front"] = interval_pareto_mask(qm - qh, qm, qm + qh, cm - ch, cm, cm + ch, higher)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def is_static_policy(name: str) -> bool:
    """Whether a policy is a fixed plan (a format name, ``plan``, or a best-static plan), as
    opposed to an adaptive controller."""
    from adaprec import FORMATS
    name = str(name).split("@")[0]
    return name in FORMATS or name == "plan" or name.startswith(("plan:", "best_static"))


def improvement_probabilities(runs: pd.DataFrame, baseline: str = "fp32", by: str = "workload",
                              group: str = "controller") -> pd.DataFrame:
    """Per workload and policy: ``poi_baseline``, the probability that a run of the policy beats
    a run of ``baseline`` on quality, and ``poi_best_static``, the same against the best static
    policy of the workload (highest quality IQM among :func:`is_static_policy` names, the
    policy itself excluded), named in ``best_static``. Over ok runs; NaN where undefined."""
    ok = ok_runs(runs)
    rows = []
    for wl, part in ok.groupby(by, dropna=False, sort=True):
        higher = bool(part["higher_is_better"].iloc[0]) if "higher_is_better" in part and \
            part["higher_is_better"].notna().any() else True
        q = {c: pd.to_numeric(g["quality"], errors="coerce").to_numpy(float)
             for c, g in part.groupby(group, sort=True)}
        sign = 1.0 if higher else -1.0
        statics = {c: sign * iqm(v) for c, v in q.items() if is_static_policy(c) and np.isfinite(iqm(v))}
        for ctrl, values in q.items():
            best = max((c for c in statics if c != ctrl), key=statics.get, default=None)
            rows.append({by: wl, group: ctrl,
                         "poi_baseline": probability_of_improvement(values, q.get(baseline, []), higher)
                         if ctrl != baseline else float("nan"),
                         "best_static": best,
                         "poi_best_static": probability_of_improvement(values, q[best], higher)
                         if best is not None else float("nan")})
    return pd.DataFrame(rows, columns=[by, group, "poi_baseline", "best_static", "poi_best_static"])
