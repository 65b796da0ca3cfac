"""Bandit analyses from each bandit run's ``controller.json``: regret against the best fixed
arm, arm-pull shares, and per-window traces of regret and reward.

:class:`adaprec.controllers.Bandit` writes, per layer, the pulls of each arm, the best fixed arm
in hindsight (largest summed reward over the run), the regret against it and a per-window
``trace`` (decision step, arm played, every arm's reward that window). From a runs table
(:func:`analysis.load.load_runs`):

- :func:`bandit_summaries`: ``{run_id: controller.json}`` of the ok bandit runs;
- :func:`pull_shares`: per run and format, the fraction of layer-windows played in it;
- :func:`window_table`: one row per run, layer and traced window (played and best-arm reward);
- :func:`regret_curves`: per run, cumulative regret over training steps,
  ``regret(t) = sum over layers of (best arm's summed reward up to t - reward earned up to t)``;
- :func:`bandit_table`: per workload and policy, IQM over seeds of the total regret (95%
  bootstrap CI) and of the regret per window, and the mean pull share of each format;
- :func:`policy_curve`: IQM over seeds per policy and step (the frame the figures draw);
- :func:`pull_share_bars`, :func:`regret_plot`, :func:`reward_plot`: the figures.

Rewards are the bandit's normalized rewards in [0, 1] (``1 + raw / (cost_weight + 1)``), so
regret is in reward units. Runs whose ``controller.json`` predates the trace (or whose trace
does not cover every pull: a resume from a checkpoint without one) keep their table row and
pull shares but have no curves.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .load import KEY_COLUMNS, ok_runs
from .robust import bootstrap_ci, iqm
from .style import FORMAT_ORDER

__all__ = ["bandit_summaries", "has_trace", "pull_shares", "window_table", "regret_curves",
           "bandit_table", "policy_curve", "share_frame", "pull_share_bars", "regret_plot",
           "reward_plot", "REGRET_LABEL", "REWARD_LABEL", "STEP_LABEL"]

REGRET_LABEL = "cumulative regret (reward units)"
REWARD_LABEL = "mean played reward per window\n(reward units, 0-1)"
STEP_LABEL = "training step"


def bandit_summaries(runs: pd.DataFrame) -> dict[str, dict]:
    """``{run_id: summary}`` for every ok run whose ``controller.json`` is a bandit's."""
    out = {}
    for row in ok_runs(runs).itertuples(index=False):
        path = Path(row.run_dir) / "controller.json"
        if not path.exists():
            continue
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable controller.json ({e}); rerun the job or "
                             "remove the file") from None
        if isinstance(summary, dict) and summary.get("controller") == "bandit":
            out[row.run_id] = summary
    return out


def has_trace(summary: dict) -> bool:
    """Whether every layer's trace covers every one of its pulls (complete per-window data)."""
    layers = summary.get("layers", {})
    return bool(layers) and all(
        "trace" in v and len(v["trace"]["step"]) == sum(v["pulls"].values()) for v in layers.values())


def _keys(runs: pd.DataFrame, summaries: dict[str, dict]) -> pd.DataFrame:
    """Key columns of the bandit runs, with ``policy``: the controller label, plus the
    algorithm where one label covers several (a sweep over ``controller.algorithm``)."""
    keys = runs[runs["run_id"].isin(summaries)][KEY_COLUMNS].copy()
    keys["controller"] = keys["controller"].fillna("bandit")  # a run without Hydra choices
    keys["algorithm"] = keys["run_id"].map(lambda r: summaries[r].get("algorithm"))
    mixed = keys.groupby("controller")["algorithm"].transform("nunique") > 1
    keys["policy"] = keys["controller"].astype(str).where(
        ~mixed, keys["controller"].astype(str) + "[" + keys["algorithm"].astype(str) + "]")
    return keys


def pull_shares(runs: pd.DataFrame, summaries: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per bandit run and format it could play: ``pulls`` summed over layers and
    ``share`` = pulls / layer-windows of the run (a run's shares sum to 1)."""
    summaries = bandit_summaries(runs) if summaries is None else summaries
    rows = []
    for key in _keys(runs, summaries).to_dict("records"):
        totals: dict[str, int] = {}
        for layer in summaries[key["run_id"]]["layers"].values():
            for fmt, n in layer["pulls"].items():
                totals[fmt] = totals.get(fmt, 0) + int(n)
        windows = sum(totals.values())
        rows += [{**key, "format": f, "pulls": n, "share": n / windows if windows else np.nan}
                 for f, n in totals.items()]
    return pd.DataFrame(rows, columns=[*KEY_COLUMNS, "algorithm", "policy", "format", "pulls", "share"])


def window_table(runs: pd.DataFrame, summaries: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per traced bandit run, layer and window: ``step`` (the decision that closed the
    window), ``played``, ``reward`` (the played arm's), ``best_arm`` (the layer's best fixed arm
    in hindsight) and ``best_reward`` (its reward that window). Runs without a complete
    trace contribute no rows."""
    summaries = bandit_summaries(runs) if summaries is None else summaries
    frames = []
    for key in _keys(runs, summaries).to_dict("records"):
        summary = summaries[key["run_id"]]
        if not has_trace(summary):
            continue
        for layer, v in summary["layers"].items():
            t = v["trace"]
            if not t["step"]:
                continue
            rewards = pd.DataFrame(t["rewards"])
            played = pd.Series(t["played"])
            best = v["best_fixed_arm"]
            frames.append(pd.DataFrame({
                **key, "layer": layer, "step": t["step"], "played": played,
                "reward": [rewards.at[i, f] for i, f in enumerate(played)],
                "best_arm": best, "best_reward": rewards[best]}))
    cols = [*KEY_COLUMNS, "algorithm", "policy", "layer", "step", "played", "reward", "best_arm",
            "best_reward"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def regret_curves(windows: pd.DataFrame) -> pd.DataFrame:
    """Per run and step: ``regret``, the cumulative regret summed over layers up to that step
    (each layer's best fixed arm minus the arm it played, window by window), and
    ``reward``, the played reward averaged over the layers traced in that window."""
    cols = [*KEY_COLUMNS, "algorithm", "policy", "step", "regret", "reward"]
    if windows.empty:
        return pd.DataFrame(columns=cols)
    w = windows.assign(gap=windows["best_reward"] - windows["reward"])
    by = [*KEY_COLUMNS, "algorithm", "policy", "step"]
    per_step = w.groupby(by, sort=True, dropna=False).agg(gap=("gap", "sum"), reward=("reward", "mean"))
    per_step = per_step.reset_index().sort_values(["run_id", "step"])
    per_step["regret"] = per_step.groupby("run_id")["gap"].cumsum()
    return per_step[cols].reset_index(drop=True)


def bandit_table(runs: pd.DataFrame, summaries: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per workload and bandit policy: ``seeds``, ``traced`` (runs with a complete
    trace), ``windows``, ``regret`` (IQM over seeds of the total regret, summed over layers)
    with its 95% bootstrap interval ``regret_lo``/``regret_hi``, ``regret_per_window`` (IQM of
    total regret / decision windows) and ``share_<fmt>``: the mean over seeds of the fraction
    of layer-windows played in each format (they sum to 1)."""
    summaries = bandit_summaries(runs) if summaries is None else summaries
    keys = _keys(runs, summaries)
    shares = pull_shares(runs, summaries)
    fmts = [f for f in FORMAT_ORDER if f in set(shares["format"])]
    rows = []
    for (wl, policy), part in keys.groupby(["workload", "policy"], sort=True, dropna=False):
        s = [summaries[r] for r in part["run_id"]]
        regret = np.array([float(x["regret"]) for x in s])
        windows = np.array([int(x.get("windows", 0)) for x in s])
        per_window = np.where(windows > 0, regret / np.maximum(windows, 1), np.nan)
        lo, hi = bootstrap_ci(regret)
        wide = (shares[shares["run_id"].isin(part["run_id"])]
                .pivot_table(index="run_id", columns="format", values="share", aggfunc="first")
                .reindex(columns=fmts).fillna(0.0))
        rows.append({"workload": wl, "policy": policy, "seeds": len(part),
                     "traced": sum(has_trace(x) for x in s), "windows": int(windows.max()),
                     "regret": iqm(regret), "regret_lo": lo, "regret_hi": hi,
                     "regret_per_window": iqm(per_window),
                     **{f"share_{f}": float(wide[f].mean()) for f in fmts}})
    return pd.DataFrame(rows, columns=["workload", "policy", "seeds", "traced", "windows", "regret",
                                       "regret_lo", "regret_hi", "regret_per_window",
                                       *[f"share_{f}" for f in fmts]])


def share_frame(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`bandit_table` rows as the long frame :func:`pull_share_bars` draws:
    ``policy, format, share, basis`` (basis ``pull_share``)."""
    cols = [c for c in table.columns if c.startswith("share_")]
    long = table.melt(id_vars=["policy"], value_vars=cols, var_name="format", value_name="share")
    long["format"] = long["format"].str[len("share_"):]
    long["basis"] = "pull_share"
    return long


def policy_curve(curves: pd.DataFrame, y: str) -> pd.DataFrame:
    """Per policy and step: the IQM over runs (seeds) of ``y`` and its 95% bootstrap interval
    (``policy, step, iqm, lo, hi, n``). Cumulative regret is carried forward over steps a run
    did not trace (a window without evidence adds no regret); rewards are not."""
    rows = []
    for policy, part in curves.groupby("policy", sort=True):
        wide = part.pivot_table(index="step", columns="run_id", values=y, aggfunc="first").sort_index()
        if y == "regret":
            wide = wide.ffill().fillna(0.0)
        for step, values in wide.iterrows():
            lo, hi = bootstrap_ci(values)
            rows.append({"policy": policy, "step": step, "iqm": iqm(values), "lo": lo, "hi": hi,
                         "n": int(values.notna().sum())})
    return pd.DataFrame(rows, columns=["policy", "step", "iqm", "lo", "hi", "n"])


def _styles(names, styles: dict | None) -> dict:
    from .style import policy_styles
    names = {str(n) for n in names}
    return styles if styles and names <= set(styles) else policy_styles(names)


def pull_share_bars(table: pd.DataFrame, *, title: str | None = None):
    """Stacked bars per policy of the share of layer-windows in each format (format colours,
    only used formats in the legend). ``table``: :func:`share_frame`."""
    from .figures import flop_share_bars
    return flop_share_bars(table, group="policy", title=title)


def regret_plot(curve: pd.DataFrame, *, styles: dict | None = None, title: str | None = None):
    """Cumulative regret against the best fixed arm over training, IQM over seeds per policy
    with its 95% bootstrap band. ``curve``: :func:`policy_curve` of ``"regret"``."""
    from .figures import training_curves
    fig, ax = training_curves(curve, group="policy", y="iqm", xlabel=STEP_LABEL,
                              ylabel=REGRET_LABEL + "\n(IQM over seeds, 95% CI)", log_y=False,
                              styles=_styles(curve["policy"], styles), title=title)
    ax.axhline(0.0, color="0.6", lw=0.6, zorder=0)
    return fig, ax


def reward_plot(curve: pd.DataFrame, *, styles: dict | None = None, title: str | None = None):
    """Mean played reward per window over training, IQM over seeds per policy with its 95%
    bootstrap band. ``curve``: :func:`policy_curve` of ``"reward"``."""
    from .figures import training_curves
    return training_curves(curve, group="policy", y="iqm", xlabel=STEP_LABEL, ylabel=REWARD_LABEL,
                           log_y=False, styles=_styles(curve["policy"], styles), title=title)
