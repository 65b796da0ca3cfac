"""Summary tables per workload: controller × quality ± CI, relative cost, format shares, skips.

:func:`summary_table` builds the numbers (a DataFrame, one row per controller) and
:func:`best_mask` marks the best value in each ranked column; :func:`to_markdown` and
:func:`to_latex` (booktabs) render both. "Best" compares seed means: highest (or lowest, per the
quality metric's direction) quality, lowest cost, fewest skipped steps; only a *unique* best
is marked (a tie marks nothing). Numbers are printed to three significant figures (scientific
below 1e-3 and from 1e5 up), so an RMSE of 1.8e-4 never reads 0.000. Format-share columns of
formats no policy used are left out; LaTeX output is split into tables of at most
:data:`MAX_COLUMNS` columns, each repeating the controller column.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from .stats import CONFIDENCE
from .style import FORMAT_ORDER, cost_label

__all__ = ["summary_table", "best_mask", "to_markdown", "to_latex", "caption", "sig", "MAX_COLUMNS"]

MAX_COLUMNS = 8  # per LaTeX table: wider ones do not fit a paper's column or page


def summary_table(agg: pd.DataFrame, costs: Sequence[str], welch: pd.DataFrame | None = None,
                  workload: str | None = None, group: str = "controller",
                  baseline: str = "fp32", poi: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per controller of one workload from :func:`analysis.stats.aggregate` output.

    Columns: ``quality, quality_ci95, n, n_runs``, ``p`` (Welch vs the baseline, when ``welch``
    is given), ``iqm, iqm_lo, iqm_hi`` (when the aggregate has them), ``poi_baseline,
    poi_best_static`` (when ``poi`` from :func:`analysis.stats.improvement_probabilities` is
    given), one column per cost in ``costs`` (seed mean), ``share_<fmt>`` (FLOP shares, or
    layer shares when the runs report no FLOP shares; only formats some policy used),
    ``skipped_steps``. ``attrs`` carries
    ``workload``, ``quality_metric``, ``higher_is_better``, ``share_basis``, ``costs``,
    ``baseline``. Rows: the baseline first, then the other controllers by name."""
    workloads = agg["workload"].unique()
    if workload is None and len(workloads) != 1:
        raise ValueError(f"aggregate holds workloads {list(workloads)}; pass workload=")
    workload = workloads[0] if workload is None else workload
    part = agg[agg["workload"] == workload].set_index(group)
    if part.empty:
        raise ValueError(f"no workload {workload!r} in the aggregate; have {list(workloads)}")
    # the baseline first, then the others by name: the order readers compare in
    part = part.loc[sorted(part.index, key=lambda c: (c != baseline, str(c)))]
    out = pd.DataFrame(index=part.index)
    out["quality"], out["quality_ci95"] = part["quality_mean"], part["quality_ci95"]
    out["n"], out["n_runs"] = part["n"], part["n_runs"]
    if welch is not None:
        w = welch[welch["workload"] == workload].set_index(group)
        out["p"] = w["p"].reindex(out.index)
    if "quality_iqm" in part:
        out["iqm"], out["iqm_lo"], out["iqm_hi"] = part["quality_iqm"], part["quality_iqm_lo"], part["quality_iqm_hi"]
    if poi is not None:
        pp = poi[poi["workload"] == workload].set_index(group)
        out["poi_baseline"] = pp["poi_baseline"].reindex(out.index)
        out["poi_best_static"] = pp["poi_best_static"].reindex(out.index)
    for cost in costs:
        out[cost] = part[f"{cost}_mean"]
    basis = next((b for b in ("flop_share", "format_share")
                  if any(f"{b}_{f}_mean" in part for f in FORMAT_ORDER)), None)
    for f in FORMAT_ORDER:
        if basis and f"{basis}_{f}_mean" in part and (part[f"{basis}_{f}_mean"].fillna(0) > 0).any():
            out[f"share_{f}"] = part[f"{basis}_{f}_mean"]
    if "skipped_steps_mean" in part:
        out["skipped_steps"] = part["skipped_steps_mean"]
    out.attrs.update(workload=workload, quality_metric=part["quality_metric"].iloc[0],
                     higher_is_better=bool(part["higher_is_better"].iloc[0])
                     if part["higher_is_better"].notna().any() else True,
                     share_basis=basis, costs=list(costs), baseline=baseline)
    return out


def best_mask(summary: pd.DataFrame) -> pd.DataFrame:
    """Boolean frame like ``summary``: True at the unique best value of each ranked column
    (nothing where two or more rows share the best value)."""
    mask = pd.DataFrame(False, index=summary.index, columns=summary.columns)
    higher = summary.attrs.get("higher_is_better", True)
    ranked = {"quality": "max" if higher else "min", "iqm": "max" if higher else "min",
              "skipped_steps": "min", **{c: "min" for c in summary.attrs.get("costs", [])}}
    for col, how in ranked.items():
        if col in summary and summary[col].notna().any():
            best = summary[col].max() if how == "max" else summary[col].min()
            hit = np.isclose(summary[col], best, rtol=1e-12, atol=0) & summary[col].notna()
            mask[col] = hit if hit.sum() == 1 else False
    return mask


def caption(summary: pd.DataFrame) -> str:
    """The table caption: what the numbers are and how the interval was computed."""
    metric = summary.attrs.get("quality_metric") or "quality"
    arrow = "higher" if summary.attrs.get("higher_is_better", True) else "lower"
    basis = "FLOPs" if summary.attrs.get("share_basis") == "flop_share" else "layers"
    baseline = summary.attrs.get("baseline", "fp32")
    text = (f"{summary.attrs.get('workload')}: {metric} ({arrow} is better), mean ± "
            f"{CONFIDENCE:.0%} Student-t confidence interval over seeds (n = ok runs / all runs)")
    if "iqm" in summary:
        text += f"; IQM: interquartile mean with {CONFIDENCE:.0%} percentile-bootstrap interval"
    if "p" in summary:
        text += f"; p: Welch's t-test against {baseline}"
    if "poi_baseline" in summary:
        text += (f"; P>{baseline}, P>static: probability that a run beats a run of {baseline} / "
                 f"of the best static plan")
    text += (f"; cost: seed mean; shares: fraction of {basis} per format (unused formats left out); "
             f"a unique best value per column in bold.")
    return text


def _cells(summary: pd.DataFrame, bold) -> tuple[list[str], list[list[str]]]:
    """Header and formatted body rows; ``bold(text)`` wraps a best cell."""
    mask = best_mask(summary)
    baseline = summary.attrs.get("baseline", "fp32")
    header = ["controller", str(summary.attrs.get("quality_metric") or "quality")]
    header += ["IQM [95% CI]"] if "iqm" in summary else []
    header += ["n"] + (["p"] if "p" in summary else [])
    header += [f"P>{baseline}", "P>static"] if "poi_baseline" in summary else []
    header += [cost_label(c) for c in summary.attrs.get("costs", [])]
    header += ["% " + c[len("share_"):] for c in summary if c.startswith("share_")]
    header += ["skipped"] if "skipped_steps" in summary else []
    rows = []
    for name, r in summary.iterrows():
        m = mask.loc[name]
        q = sig(r["quality"]) + (f" ± {sig(r['quality_ci95'], 2)}" if _finite(r["quality_ci95"]) else "")
        cells = [str(name), bold(q) if m["quality"] else q]
        if "iqm" in summary:
            iq = sig(r["iqm"]) + (f" [{sig(r['iqm_lo'])}, {sig(r['iqm_hi'])}]" if _finite(r["iqm_lo"]) else "")
            cells.append(bold(iq) if m["iqm"] else iq)
        cells.append(f"{int(r['n'])}/{int(r['n_runs'])}")
        if "p" in summary:
            cells.append(_p(r["p"]))
        if "poi_baseline" in summary:
            cells += [_prob(r["poi_baseline"]), _prob(r["poi_best_static"])]
        for c in summary.attrs.get("costs", []):
            cells.append(bold(sig(r[c])) if m[c] else sig(r[c]))
        cells += [_pct(r[c]) for c in summary if c.startswith("share_")]
        if "skipped_steps" in summary:
            s = sig(r["skipped_steps"]) if _finite(r["skipped_steps"]) else "–"
            cells.append(bold(s) if m["skipped_steps"] else s)
        rows.append(cells)
    return header, rows


def _column_groups(n_columns: int, limit: int = MAX_COLUMNS) -> list[list[int]]:
    """Column indices of each part when a table of ``n_columns`` (the first being the row
    name) is split into parts of at most ``limit`` columns, the row name repeated in each."""
    rest = list(range(1, n_columns))
    width = limit - 1
    return [[0] + rest[i:i + width] for i in range(0, len(rest), width)] or [[0]]


def to_markdown(summary: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (best values in ``**bold**``) under its caption."""
    header, rows = _cells(summary, lambda s: f"**{s}**")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return f"{caption(summary)}\n\n" + "\n".join(lines) + "\n"


def to_latex(summary: pd.DataFrame, label: str | None = None, max_columns: int = MAX_COLUMNS) -> str:
    """Booktabs ``table`` environments (best values in ``\\textbf``), captions included; a table
    wider than ``max_columns`` is split into parts that each repeat the controller column
    (labels ``<label>`` for the first part, ``<label>-2``, ... for the others)."""
    header, rows = _cells(summary, lambda s: f"\\textbf{{{s}}}")
    esc = _latex_escape
    groups = _column_groups(len(header), max_columns)
    out = []
    for k, cols in enumerate(groups, start=1):
        part = f" (part {k} of {len(groups)})" if len(groups) > 1 else ""
        body = [" & ".join(esc(header[i]) for i in cols) + r" \\", r"\midrule"]
        body += [" & ".join(_latex_cell(r[i]) for i in cols) + r" \\" for r in rows]
        lab = label if k == 1 else (f"{label}-{k}" if label else None)
        label_line = f"\\label{{{lab}}}\n" if lab else ""
        out.append("\\begin{table}[t]\n\\centering\n\\small\n"
                   f"\\caption{{{esc(caption(summary) + part)}}}\n{label_line}"
                   f"\\begin{{tabular}}{{l{'r' * (len(cols) - 1)}}}\n\\toprule\n"
                   + "\n".join(body) + "\n\\bottomrule\n\\end{tabular}\n\\end{table}\n")
    return "\n".join(out)


def _latex_cell(text: str) -> str:
    if text.startswith("\\textbf{"):
        return "\\textbf{" + _latex_escape(text[len("\\textbf{"):-1]) + "}"
    return _latex_escape(text)


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
                 ("#", r"\#"), ("±", r"$\pm$"), ("<", r"$<$"), (">", r"$>$"), ("–", "--")):
        text = text.replace(a, b)
    return text


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def sig(x, digits: int = 3) -> str:
    """``x`` to ``digits`` significant figures; scientific (``1.80e-04``) below 1e-3 and from
    1e5 up, so small errors never print as zero; "–" for missing or non-finite values."""
    if not _finite(x):
        return "–"
    x = float(x)
    if x == int(x) and abs(x) < 1e5:
        return str(int(x))  # counts (skipped steps) and exact integers stay integers
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.{digits - 1}e}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{decimals}f}"


def _prob(x) -> str:
    return f"{float(x):.2f}" if _finite(x) else "–"


def _p(x) -> str:
    if not _finite(x):
        return "–"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _pct(x) -> str:
    return f"{100 * float(x):.0f}%" if _finite(x) else "–"
