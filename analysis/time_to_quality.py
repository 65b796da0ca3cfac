"""Time to quality: how many steps, and how much modeled cost, each run needs to reach a stated
fraction of fp32's final quality.

The target per workload is ``fraction`` of the baseline policy's (fp32's) final quality,
the interquartile mean over its seeds: ``q >= fraction * Q`` where higher is better (accuracy),
``q <= Q / fraction`` where lower is better (perplexity, RMSE). A run reaches it at its first
evaluation that meets it (``evals.csv``, so the resolution is ``trainer.eval_every``).
Modeled cost to that step is the sum of the run's per-step modeled cost (``cost_<profile>_<unit>``
in ``steps.csv``) up to and including it, in units of one fp32 step of the same workload
(the baseline runs' median step cost), so 100 means "as much as 100 fp32 steps".
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .load import ok_runs
from .robust import iqm

__all__ = ["DEFAULT_FRACTION", "targets", "time_to_quality", "summarize"]

DEFAULT_FRACTION = 0.95
_STEP_COST = re.compile(r"^cost_(.+)_(s|ms|us)$")


def targets(runs: pd.DataFrame, fraction: float = DEFAULT_FRACTION,
            baseline: str = "fp32") -> pd.DataFrame:
    """Per workload: ``quality_metric``, ``higher_is_better``, the baseline's final quality IQM
    (``baseline_quality``) and the ``target``; workloads without baseline runs are left out."""
    if not 0 < fraction <= 1:
        raise ValueError(f"time-to-quality fraction must be in (0, 1], got {fraction}")
    ok = ok_runs(runs)
    rows = []
    for wl, part in ok[ok["controller"] == baseline].groupby("workload", sort=True):
        q = iqm(pd.to_numeric(part["quality"], errors="coerce"))
        if not np.isfinite(q):
            continue
        higher = bool(part["higher_is_better"].iloc[0])
        rows.append({"workload": wl, "quality_metric": part["quality_metric"].iloc[0],
                     "higher_is_better": higher, "baseline_quality": q,
                     "target": q * fraction if higher else q / fraction})
    return pd.DataFrame(rows, columns=["workload", "quality_metric", "higher_is_better",
                                       "baseline_quality", "target"])


def _cost_column(steps: pd.DataFrame, profile: str | None) -> str | None:
    cols = [c for c in steps.columns if _STEP_COST.match(c)]
    if profile is not None:
        cols = [c for c in cols if _STEP_COST.match(c).group(1) == profile]
    return cols[0] if cols else None


def time_to_quality(runs: pd.DataFrame, evals: pd.DataFrame, steps: pd.DataFrame | None = None,
                    fraction: float = DEFAULT_FRACTION, baseline: str = "fp32",
                    profile: str | None = None) -> pd.DataFrame:
    """One row per ok run of a workload with a target: ``reached`` (bool), ``steps_to_target``
    (the first evaluation step meeting it; NaN if never) and ``cost_to_target`` (modeled, in
    fp32 steps; NaN without step costs), plus the ``cost_profile`` used."""
    tgt = targets(runs, fraction, baseline).set_index("workload")
    cols = ["run_id", "workload", "controller", "seed", "target", "reached", "steps_to_target",
            "cost_to_target", "cost_profile"]
    if tgt.empty or evals.empty:
        return pd.DataFrame(columns=cols)
    steps = steps if steps is not None else pd.DataFrame()
    cost_col = _cost_column(steps, profile) if not steps.empty else None
    fp32_step = {}
    if cost_col is not None:
        base = steps[steps["controller"] == baseline]
        fp32_step = base.groupby("workload")[cost_col].median().to_dict()
    rows = []
    for run in ok_runs(runs).itertuples(index=False):
        if run.workload not in tgt.index:
            continue
        t = tgt.loc[run.workload]
        metric = t["quality_metric"]
        ev = evals[evals["run_id"] == run.run_id]
        if metric not in ev or ev[metric].notna().sum() == 0:
            continue
        ev = ev.dropna(subset=[metric]).sort_values("step")
        met = ev[metric] >= t["target"] if t["higher_is_better"] else ev[metric] <= t["target"]
        step = float(ev.loc[met, "step"].iloc[0]) if met.any() else float("nan")
        cost = float("nan")
        if np.isfinite(step) and cost_col is not None and fp32_step.get(run.workload):
            s = steps[(steps["run_id"] == run.run_id) & (steps["step"] <= step)]
            cost = float(s[cost_col].sum()) / fp32_step[run.workload]
        rows.append({"run_id": run.run_id, "workload": run.workload, "controller": run.controller,
                     "seed": getattr(run, "seed", None), "target": t["target"],
                     "reached": bool(met.any()), "steps_to_target": step, "cost_to_target": cost,
                     "cost_profile": _STEP_COST.match(cost_col).group(1) if cost_col else None})
    return pd.DataFrame(rows, columns=cols)


def summarize(ttq: pd.DataFrame) -> pd.DataFrame:
    """Per workload and controller: runs that reached the target out of all, and the IQM of
    steps and modeled cost over the runs that reached it."""
    rows = []
    for (wl, ctrl), g in ttq.groupby(["workload", "controller"], sort=True):
        hit = g[g["reached"]]
        rows.append({"workload": wl, "controller": ctrl, "reached": int(len(hit)), "n": int(len(g)),
                     "steps_iqm": iqm(hit["steps_to_target"]) if len(hit) else float("nan"),
                     "cost_iqm": iqm(hit["cost_to_target"]) if len(hit) else float("nan")})
    return pd.DataFrame(rows, columns=["workload", "controller", "reached", "n", "steps_iqm", "cost_iqm"])
