"""Figure-ready frames: exactly the data one figure draws, and nothing more.

Each function turns loader/aggregate output into the small frame a function of
:mod:`analysis.figures` plots; the report saves that frame as the CSV beside the figure.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .stats import CONFIDENCE, t_interval
from .style import FORMAT_ORDER

__all__ = ["curve_table", "share_table", "timeline_table", "rates_table", "scale_table",
           "switch_table", "one_run"]


def one_run(table: pd.DataFrame, run_id: str | None = None) -> pd.DataFrame:
    """The rows of ``table`` (a long loader table) that belong to one run.

    With ``run_id=None`` the table must already hold exactly one run."""
    if run_id is not None:
        return table[table["run_id"] == run_id]
    ids = table["run_id"].unique() if "run_id" in table else []
    if len(ids) > 1:
        raise ValueError(f"table holds {len(ids)} runs; pass run_id= one of {list(ids)[:5]}")
    return table


def curve_table(steps: pd.DataFrame, y: str = "loss", by: str = "controller",
                confidence: float = CONFIDENCE, smooth: int = 1) -> pd.DataFrame:
    """Per ``by`` group and step: the mean of ``y`` over runs (seeds) and its t interval.

    Columns: ``by, step, mean, lo, hi, n``. Non-finite values (skipped steps) are left out.
    ``smooth > 1`` first replaces each run's ``y`` by its trailing mean over ``smooth`` logged
    steps (per run, so seeds never mix). ``steps`` must hold one workload (training curves of
    different tasks do not share an axis)."""
    _need(steps, ["step", y, by], "curve_table")
    if "workload" in steps and steps["workload"].nunique() > 1:
        raise ValueError("curve_table got several workloads; filter steps to one workload first")
    if smooth < 1:
        raise ValueError(f"smooth must be a window of at least 1 step, got {smooth}")
    if smooth > 1:
        steps = steps.sort_values("step").copy()
        values = pd.to_numeric(steps[y], errors="coerce").where(lambda v: np.isfinite(v))
        keys = steps["run_id"] if "run_id" in steps else pd.Series(0, index=steps.index)
        steps[y] = values.groupby(keys).transform(lambda v: v.rolling(smooth, min_periods=1).mean())
    rows = []
    for (group, step), part in steps.groupby([by, "step"], sort=True):
        mean, _, half = t_interval(pd.to_numeric(part[y], errors="coerce"), confidence)
        rows.append({by: group, "step": step, "mean": mean, "lo": mean - half, "hi": mean + half,
                     "n": int(part[y].notna().sum())})
    return pd.DataFrame(rows, columns=[by, "step", "mean", "lo", "hi", "n"])


def share_table(agg: pd.DataFrame, group: str = "controller") -> pd.DataFrame:
    """Share of FLOPs per format per controller (means over seeds) from :func:`aggregate`
    output for one workload, in long form: ``controller, format, share, basis``.

    ``basis`` is ``"flop_share"`` when the cost model reported FLOP shares, else
    ``"format_share"`` (the share of layers per format in the final plan)."""
    for basis in ("flop_share", "format_share"):
        cols = [f"{basis}_{f}_mean" for f in FORMAT_ORDER if f"{basis}_{f}_mean" in agg]
        if cols and agg[cols].notna().any().any():
            break
    else:
        raise ValueError("no flop_share_<fmt> or format_share_<fmt> columns in the aggregate; "
                         "aggregate runs whose metrics.json reports them")
    long = agg.melt(id_vars=[group], value_vars=cols, var_name="format", value_name="share")
    long["format"] = long["format"].str[len(basis) + 1:-len("_mean")]
    long["basis"] = basis
    long["format"] = pd.Categorical(long["format"], categories=FORMAT_ORDER, ordered=True)
    long = long.sort_values([group, "format"]).reset_index(drop=True)
    long["format"] = long["format"].astype(str)
    return long.fillna({"share": 0.0})


def timeline_table(layers: pd.DataFrame) -> pd.DataFrame:
    """``step, layer, format`` of one run's sampled steps, layers in logged (forward) order."""
    layers = one_run(layers)
    _need(layers, ["step", "layer", "format"], "timeline_table")
    return layers[["step", "layer", "format"]].reset_index(drop=True)


def rates_table(layers: pd.DataFrame, kind: str = "act") -> pd.DataFrame:
    """``step, layer, overflow, underflow``: one run's fp16 overflow/underflow rates of tensor
    ``kind`` (act, grad, weight, wgrad) per layer and sampled step."""
    layers = one_run(layers)
    over, under = f"{kind}_fp16_overflow", f"{kind}_fp16_underflow"
    _need(layers, ["step", "layer", over, under], "rates_table")
    out = layers[["step", "layer", over, under]].rename(columns={over: "overflow", under: "underflow"})
    return out.reset_index(drop=True)


def scale_table(steps: pd.DataFrame) -> pd.DataFrame:
    """``step, loss_scale, skipped`` of one run (skipped as bool), plus ``scaler_active``
    where the run logged it (False: no fp16 layer, the scale was not applied)."""
    steps = one_run(steps)
    _need(steps, ["step", "loss_scale", "skipped"], "scale_table")
    cols = ["step", "loss_scale", "skipped"] + (["scaler_active"] if "scaler_active" in steps else [])
    out = steps[cols].reset_index(drop=True)
    out["skipped"] = out["skipped"].fillna(False).astype(bool)
    return out


def switch_table(decisions: pd.DataFrame) -> pd.DataFrame:
    """``step, layer, old, new`` of one run's plan changes."""
    decisions = one_run(decisions)
    _need(decisions, ["step", "layer", "old", "new"], "switch_table")
    return decisions[["step", "layer", "old", "new"]].reset_index(drop=True)


def _need(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {missing}; got {list(df.columns)[:12]}")
