"""Summary tables per workload: controller × quality ± CI, relative cost, format shares, skips.

:func:`summary_table` builds the numbers (a DataFrame, one row per controller) and
:func:`best_mask` marks the best value in each ranked column; :func:`to_markdown` and
:func:`to_latex` (booktabs) render both. "Best" compares seed means: highest (or lowest, per the
quality metric's direction) quality, lowest cost, fewest skipped steps; ties are all marked.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from .stats import CONFIDENCE
from .style import FORMAT_ORDER, cost_label

__all__ = ["summary_table", "best_mask", "to_markdown", "to_latex", "caption"]


def summary_table(agg: pd.DataFrame, costs: Sequence[str], welch: pd.DataFrame | None = None,
                  workload: str | None = None, group: str = "controller",
                  baseline: str = "fp32") -> pd.DataFrame:
    """One row per controller of one workload from :func:`analysis.stats.aggregate` output.

    Columns: ``quality, quality_ci95, n, n_runs``, ``p`` (Welch vs the baseline, when ``welch``
    is given), one column per cost in ``costs`` (seed mean), ``share_<fmt>`` (FLOP shares, or
    layer shares when the runs report no FLOP shares), ``skipped_steps``. ``attrs`` carries
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
    for cost in costs:
        out[cost] = part[f"{cost}_mean"]
    basis = next((b for b in ("flop_share", "format_share")
                  if any(f"{b}_{f}_mean" in part for f in FORMAT_ORDER)), None)
    for f in FORMAT_ORDER:
        if basis and f"{basis}_{f}_mean" in part:
            out[f"share_{f}"] = part[f"{basis}_{f}_mean"]
    if "skipped_steps_mean" in part:
        out["skipped_steps"] = part["skipped_steps_mean"]
    out.attrs.update(workload=workload, quality_metric=part["quality_metric"].iloc[0],
                     higher_is_better=bool(part["higher_is_better"].iloc[0])
                     if part["higher_is_better"].notna().any() else True,
                     share_basis=basis, costs=list(costs), baseline=baseline)
    return out


def best_mask(summary: pd.DataFrame) -> pd.DataFrame:
    """Boolean frame like ``summary``: True at the best value of each ranked column."""
    mask = pd.DataFrame(False, index=summary.index, columns=summary.columns)
    ranked = {"quality": "max" if summary.attrs.get("higher_is_better", True) else "min",
              "skipped_steps": "min", **{c: "min" for c in summary.attrs.get("costs", [])}}
    for col, how in ranked.items():
        if col in summary and summary[col].notna().any():
            best = summary[col].max() if how == "max" else summary[col].min()
            mask[col] = np.isclose(summary[col], best, rtol=1e-12, atol=0) & summary[col].notna()
    return mask


def caption(summary: pd.DataFrame) -> str:
    """The table caption: what the numbers are and how the interval was computed."""
    metric = summary.attrs.get("quality_metric") or "quality"
    arrow = "higher" if summary.attrs.get("higher_is_better", True) else "lower"
    basis = "FLOPs" if summary.attrs.get("share_basis") == "flop_share" else "layers"
    return (f"{summary.attrs.get('workload')}: {metric} ({arrow} is better), mean ± "
            f"{CONFIDENCE:.0%} Student-t confidence interval over seeds (n = ok runs / all runs); "
            f"p: Welch's t-test against {summary.attrs.get('baseline', 'fp32')}; cost: seed mean; shares: fraction of {basis} per "
            f"format; best value per column in bold (compared on means).")


def _cells(summary: pd.DataFrame, bold) -> tuple[list[str], list[list[str]]]:
    """Header and formatted body rows; ``bold(text)`` wraps a best cell."""
    mask = best_mask(summary)
    header = ["controller", str(summary.attrs.get("quality_metric") or "quality"), "n"]
    header += ["p"] if "p" in summary else []
    header += [cost_label(c) for c in summary.attrs.get("costs", [])]
    header += ["% " + c[len("share_"):] for c in summary if c.startswith("share_")]
    header += ["skipped"] if "skipped_steps" in summary else []
    rows = []
    for name, r in summary.iterrows():
        m = mask.loc[name]
        q = _num(r["quality"]) + (f" ± {_num(r['quality_ci95'])}" if _finite(r["quality_ci95"]) else "")
        cells = [str(name), bold(q) if m["quality"] else q, f"{int(r['n'])}/{int(r['n_runs'])}"]
        if "p" in summary:
            cells.append(_p(r["p"]))
        for c in summary.attrs.get("costs", []):
            cells.append(bold(_num(r[c])) if m[c] else _num(r[c]))
        cells += [_pct(r[c]) for c in summary if c.startswith("share_")]
        if "skipped_steps" in summary:
            s = f"{r['skipped_steps']:.3g}" if _finite(r["skipped_steps"]) else "–"
            cells.append(bold(s) if m["skipped_steps"] else s)
        rows.append(cells)
    return header, rows


def to_markdown(summary: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (best values in ``**bold**``) under its caption."""
    header, rows = _cells(summary, lambda s: f"**{s}**")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return f"{caption(summary)}\n\n" + "\n".join(lines) + "\n"


def to_latex(summary: pd.DataFrame, label: str | None = None) -> str:
    """A booktabs ``table`` environment (best values in ``\\textbf``), caption included."""
    header, rows = _cells(summary, lambda s: f"\\textbf{{{s}}}")
    esc = _latex_escape
    body = [" & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    body += [" & ".join(_latex_cell(c) for c in r) + r" \\" for r in rows]
    label_line = f"\\label{{{label}}}\n" if label else ""
    return ("\\begin{table}[t]\n\\centering\n\\small\n"
            f"\\caption{{{esc(caption(summary))}}}\n{label_line}"
            f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}\n\\toprule\n"
            + "\n".join(body) + "\n\\bottomrule\n\\end{tabular}\n\\end{table}\n")


def _latex_cell(text: str) -> str:
    if text.startswith("\\textbf{"):
        return "\\textbf{" + _latex_escape(text[len("\\textbf{"):-1]) + "}"
    return _latex_escape(text)


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
                 ("#", r"\#"), ("±", r"$\pm$"), ("<", r"$<$"), ("–", "--")):
        text = text.replace(a, b)
    return text


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _num(x) -> str:
    if not _finite(x):
        return "–"
    x = float(x)
    digits = 3 if abs(x) < 10 else 2 if abs(x) < 100 else 1
    return f"{x:.{digits}f}"


def _p(x) -> str:
    if not _finite(x):
        return "–"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _pct(x) -> str:
    return f"{100 * float(x):.0f}%" if _finite(x) else "–"
