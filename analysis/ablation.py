"""Ablations: quality and modeled cost as one configuration key varies, per controller.

    python -m adaprec.run -m sweep=ablation_monitor_every
    python -m analysis.report runs/ablation_monitor_every --out reports/ablation_monitor_every --ablation monitor.every

:func:`ablation_table` groups ok runs by controller and the value of ``cfg.<key>`` (the run's
resolved config): quality IQM with a percentile-bootstrap 95% interval over seeds, the first
modeled cost column's IQM, skipped steps and plan changes. :func:`ablation_plot` draws quality
against the key's value, one line per controller in its policy style, a log axis where the values
span decades.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .load import ok_runs
from .robust import bootstrap_ci, iqm

__all__ = ["ablation_table", "ablation_plot"]

COLUMNS = ["workload", "controller", "key", "value", "n", "quality", "lo", "hi", "quality_metric",
           "cost", "cost_column", "skipped_steps", "plan_changes"]


def _value(v):
    """Numbers as floats (so 5 and 5.0 are one point), anything else as its string."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def ablation_table(runs: pd.DataFrame, key: str, cost: str | None = None,
                   group: str = "controller") -> pd.DataFrame:
    """One row per workload, controller and value of the config key ``key`` (``monitor.every``
    or ``cfg.monitor.every``). ``cost``: the cost column (default: the runs' first
    ``cost.profiles`` entry, the one the controllers priced on; else the first ``rel_cost_*``)."""
    col = key if key.startswith("cfg.") else f"cfg.{key}"
    ok = ok_runs(runs)
    if col not in ok:
        keys = sorted(c[4:] for c in ok.columns if c.startswith("cfg."))
        raise ValueError(f"no run has config key {col[4:]!r}; ablate one of the swept keys "
                         f"(e.g. {', '.join(k for k in keys if 'every' in k or 'interval' in k) or keys[:3]})")
    cost = cost or _priced_on(ok)
    rows = []
    ok = ok.assign(_value=ok[col].map(_value))
    for (wl, ctrl), part in ok.groupby(["workload", group], sort=True, dropna=False):
        for value, g in part.groupby("_value", sort=True):
            q = pd.to_numeric(g["quality"], errors="coerce")
            lo, hi = bootstrap_ci(q)
            rows.append({"workload": wl, "controller": ctrl, "key": col[4:], "value": value,
                         "n": int(q.notna().sum()), "quality": iqm(q), "lo": lo, "hi": hi,
                         "quality_metric": g["quality_metric"].iloc[0],
                         "cost": iqm(pd.to_numeric(g[cost], errors="coerce")) if cost else float("nan"),
                         "cost_column": cost,
                         "skipped_steps": iqm(pd.to_numeric(g.get("skipped_steps"), errors="coerce"))
                         if "skipped_steps" in g else float("nan"),
                         "plan_changes": iqm(pd.to_numeric(g.get("plan_changes"), errors="coerce"))
                         if "plan_changes" in g else float("nan")})
    return pd.DataFrame(rows, columns=COLUMNS)


def ablation_plot(table: pd.DataFrame, *, styles: dict | None = None, title: str | None = None, ax=None):
    """Quality (IQM, 95% bootstrap interval) against the ablated key, one line per controller."""
    from .figures import _axes, _need, _paper, _spans_decades
    from .style import policy_styles

    @_paper
    def draw():
        _need(table, ["controller", "value", "quality", "lo", "hi", "key", "quality_metric"], "ablation_plot")
        fig, axis = _axes(ax, height=2.4)
        st_all = styles or policy_styles(table["controller"])
        numeric = all(isinstance(v, float) for v in table["value"])
        cats = sorted({str(v) for v in table["value"]}) if not numeric else None
        for name, part in table.groupby("controller", sort=True):
            part = part.sort_values("value", key=lambda s: s.map(str) if not numeric else s)
            x = part["value"].to_numpy(float) if numeric else [cats.index(str(v)) for v in part["value"]]
            st = st_all[str(name)]
            err = np.vstack([part["quality"] - part["lo"], part["hi"] - part["quality"]])
            err = np.where(np.isfinite(err), np.clip(err, 0, None), 0)
            axis.errorbar(x, part["quality"], yerr=err, color=st["color"], ls=st["linestyle"],
                          marker=st["marker"], markersize=4, markeredgecolor=st["edgecolor"],
                          capsize=2, label=str(name), gid=f"ablation:{name}")
        key = table["key"].iloc[0]
        axis.set_xlabel(key)
        if numeric and _spans_decades(table["value"]) and (table["value"] > 0).all():
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(range(len(cats)), cats)
        axis.set_ylabel(f"{table['quality_metric'].iloc[0]} (IQM, 95% bootstrap CI)")
        axis.set_title(title or f"workload: {table['workload'].iloc[0]} — ablation of {key}")
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
        return fig, axis
    return draw()


def _priced_on(ok: pd.DataFrame) -> str | None:
    """``rel_cost_<first profile>`` of the runs' ``cost.profiles``, else the first rel_cost column."""
    profiles = ok["cfg.cost.profiles"].dropna() if "cfg.cost.profiles" in ok else []
    if len(profiles):
        first = str(profiles.iloc[0]).strip("[]").split(",")[0].strip(" '\"")
        if f"rel_cost_{first}" in ok:
            return f"rel_cost_{first}"
    return next((c for c in sorted(ok.columns) if c.startswith("rel_cost_")), None)
