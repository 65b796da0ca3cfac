"""Paper figures: pure functions from a DataFrame to ``(fig, ax)``; no I/O but :func:`save_figure`.

Each function draws exactly the rows of the frame it is given (build it with
:mod:`analysis.prep` / :func:`analysis.stats.pareto_front`), so the CSV saved beside the figure
is the figure's data. Formats keep one colour everywhere (:mod:`analysis.style`).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm, Normalize
from matplotlib.patches import Patch

from .style import (COLUMN_WIDTH_IN, FORMAT_COLORS, FORMAT_ORDER, controller_styles, cost_label,
                    paper_rc)

__all__ = ["quality_cost_scatter", "precision_timeline", "fp16_rates", "training_curves",
           "flop_share_bars", "loss_scale_trace", "deploy_sensitivity", "save_figure",
           "timeline_codes", "rates_matrix"]


# Heat maps with more cells than this embed their mesh as an image inside the vector PDF (text
# and axes stay vector): tens of thousands of vector cells make PDFs slow to open and print.
_VECTOR_CELLS = 20_000


def _paper(fn: Callable) -> Callable:
    """Build the figure inside the paper rcParams (fonts are fixed when artists are created)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with paper_rc():
            return fn(*args, **kwargs)
    return wrapper


def _axes(ax, height: float = 2.3):
    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=(COLUMN_WIDTH_IN, height), layout="constrained")


def _need(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {missing}; build its frame with analysis.prep")


@_paper
def quality_cost_scatter(table: pd.DataFrame, *, group: str = "controller", styles: dict | None = None,
                         quality_label: str | None = None, x_label: str | None = None, ax=None):
    """Quality vs cost per controller with 95% CI error bars; the Pareto front is joined by a
    dashed line and its points ringed. ``table``: rows of :func:`analysis.stats.pareto_front`
    for one workload and cost (``quality_mean, quality_ci95, cost_mean, cost_ci95, on_front``)."""
    _need(table, [group, "quality_mean", "quality_ci95", "cost_mean", "cost_ci95", "on_front"],
          "quality_cost_scatter")
    fig, ax = _axes(ax)
    styles = styles or controller_styles(table[group])
    for row in table.itertuples(index=False):
        name, st = getattr(row, group), styles[getattr(row, group)]
        ax.errorbar(row.cost_mean, row.quality_mean, xerr=np.nan_to_num(row.cost_ci95),
                    yerr=np.nan_to_num(row.quality_ci95), fmt="none", ecolor=st["color"],
                    elinewidth=0.8, capsize=1.5)
        ax.scatter([row.cost_mean], [row.quality_mean], color=st["color"], marker=st["marker"],
                   s=22, zorder=3, label=str(name), gid="point",
                   edgecolors="black" if row.on_front else "none", linewidths=0.8)
    front = table[table["on_front"].astype(bool)].sort_values("cost_mean")
    ax.plot(front["cost_mean"], front["quality_mean"], ls="--", color="0.3", lw=0.8, zorder=2,
            gid="pareto", label="Pareto front")
    metric = table["quality_metric"].iloc[0] if "quality_metric" in table and len(table) else "quality"
    cost = table["cost"].iloc[0] if "cost" in table and len(table) else "cost"
    ax.set_xlabel(x_label or cost_label(cost))
    ax.set_ylabel(quality_label or str(metric).replace("_", " "))
    ax.legend(loc="best", handletextpad=0.3)
    return fig, ax


@_paper
def precision_timeline(table: pd.DataFrame, switches: pd.DataFrame | None = None, *, ax=None):
    """Layers × sampled steps heat map of each layer's format (one colour per format); plan
    switches from ``switches`` (``step, layer``) are marked with ticks. ``table``:
    :func:`analysis.prep.timeline_table` (``step, layer, format``)."""
    _need(table, ["step", "layer", "format"], "precision_timeline")
    unknown = sorted(set(table["format"]) - set(FORMAT_ORDER))
    if unknown:
        raise ValueError(f"unknown formats {unknown} in timeline; known: {', '.join(FORMAT_ORDER)}")
    layers = list(dict.fromkeys(table["layer"]))
    steps = np.sort(table["step"].unique())
    codes = timeline_codes(table)
    fig, ax = _axes(ax, height=min(4.0, max(1.6, 0.6 + 0.12 * len(layers))))
    cmap = ListedColormap([FORMAT_COLORS[f] for f in FORMAT_ORDER])
    norm = BoundaryNorm(np.arange(len(FORMAT_ORDER) + 1) - 0.5, len(FORMAT_ORDER))
    ax.pcolormesh(_edges(steps), np.arange(len(layers) + 1) - 0.5, np.ma.masked_invalid(codes),
                  cmap=cmap, norm=norm, gid="timeline", rasterized=codes.size > _VECTOR_CELLS)
    if switches is not None and len(switches):
        pos = {name: i for i, name in enumerate(layers)}
        sw = switches[switches["layer"].isin(pos)]
        ax.scatter(sw["step"], sw["layer"].map(pos), marker="|", s=30, color="black",
                   linewidths=0.8, gid="switches", label="switch", zorder=3)
    _layer_ticks(ax, layers)
    ax.set_xlabel("step")
    present = [f for f in FORMAT_ORDER if f in set(table["format"])]
    ax.legend(handles=[Patch(color=FORMAT_COLORS[f], label=f) for f in present],
              loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return fig, ax


def timeline_codes(table: pd.DataFrame) -> np.ndarray:
    """The (layers × sorted steps) matrix of format indices into ``FORMAT_ORDER`` that
    :func:`precision_timeline` draws (NaN where a layer was not sampled)."""
    layers = list(dict.fromkeys(table["layer"]))
    code = table["format"].map({f: i for i, f in enumerate(FORMAT_ORDER)}).astype(float)
    grid = pd.DataFrame({"layer": table["layer"], "step": table["step"], "code": code})
    grid = grid.pivot_table(index="layer", columns="step", values="code", aggfunc="last")
    return grid.reindex(index=layers, columns=np.sort(table["step"].unique())).to_numpy(dtype=float)


@_paper
def fp16_rates(table: pd.DataFrame, *, kind: str = "", axes=None):
    """Two stacked layers × steps heat maps: the fp16 overflow and underflow rates per layer
    over time (log colour scale; white = zero or not sampled). ``table``: :func:`analysis.prep.rates_table`.
    Returns ``(fig, axes)`` with ``axes = [overflow_ax, underflow_ax]``."""
    _need(table, ["step", "layer", "overflow", "underflow"], "fp16_rates")
    layers = list(dict.fromkeys(table["layer"]))
    steps = np.sort(table["step"].unique())
    if axes is None:
        fig, axes = plt.subplots(2, 1, sharex=True, layout="constrained",
                                 figsize=(COLUMN_WIDTH_IN, min(5.0, max(2.4, 1.0 + 0.2 * len(layers)))))
    fig = axes[0].figure
    for ax, col in zip(axes, ("overflow", "underflow")):
        values = rates_matrix(table, col)
        positive = values[np.isfinite(values) & (values > 0)]
        norm = LogNorm(positive.min(), max(positive.max(), positive.min() * 10)) if positive.size \
            else Normalize(0, 1)
        mesh = ax.pcolormesh(_edges(steps), np.arange(len(layers) + 1) - 0.5,
                             np.ma.masked_less_equal(np.nan_to_num(values, nan=0.0), 0.0),
                             cmap="cividis", norm=norm, gid=col, rasterized=values.size > _VECTOR_CELLS)
        fig.colorbar(mesh, ax=ax, label=f"{kind} fp16 {col}".strip(), pad=0.01)
        if not positive.size:  # an all-white panel must not read as missing data
            ax.text(0.5, 0.5, f"no {col}", transform=ax.transAxes, ha="center", va="center")
        _layer_ticks(ax, layers)
    axes[-1].set_xlabel("step")
    return fig, axes


def rates_matrix(table: pd.DataFrame, column: str) -> np.ndarray:
    """(layers in logged order × sorted steps) matrix of ``column`` as :func:`fp16_rates` draws it."""
    layers = list(dict.fromkeys(table["layer"]))
    grid = table.pivot_table(index="layer", columns="step", values=column, aggfunc="last", dropna=False)
    return grid.reindex(index=layers, columns=np.sort(table["step"].unique())).to_numpy(dtype=float)


@_paper
def training_curves(table: pd.DataFrame, *, group: str = "controller", ylabel: str = "loss",
                    styles: dict | None = None, log_y: bool = False, ax=None):
    """One line per controller (mean over seeds) with its 95% t band where defined.
    ``table``: :func:`analysis.prep.curve_table` (``controller, step, mean, lo, hi``)."""
    _need(table, [group, "step", "mean", "lo", "hi"], "training_curves")
    fig, ax = _axes(ax)
    styles = styles or controller_styles(table[group])
    for name, part in table.groupby(group, sort=True):
        part = part.sort_values("step")
        color = styles[name]["color"]
        ax.plot(part["step"], part["mean"], color=color, label=str(name), gid=f"curve:{name}")
        band = np.isfinite(part["lo"]) & np.isfinite(part["hi"])
        if band.any():
            ax.fill_between(part["step"], part["lo"], part["hi"], where=band, color=color,
                            alpha=0.2, lw=0)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.legend(loc="best")
    return fig, ax


@_paper
def flop_share_bars(table: pd.DataFrame, *, group: str = "controller", ax=None):
    """Stacked bars: each controller's share of FLOPs (or of layers, see ``basis``) per format.
    ``table``: :func:`analysis.prep.share_table` (``controller, format, share``)."""
    _need(table, [group, "format", "share"], "flop_share_bars")
    fig, ax = _axes(ax)
    wide = table.pivot_table(index=group, columns="format", values="share", aggfunc="first")
    names = list(wide.index)
    bottom = np.zeros(len(names))
    for fmt in [f for f in FORMAT_ORDER if f in wide.columns]:
        heights = wide[fmt].fillna(0.0).to_numpy()
        ax.bar(range(len(names)), heights, bottom=bottom, color=FORMAT_COLORS[fmt], label=fmt,
               width=0.7, gid=f"share:{fmt}")
        bottom += heights
    ax.set_xticks(range(len(names)), [str(n) for n in names], rotation=30, ha="right")
    basis = table["basis"].iloc[0] if "basis" in table and len(table) else "flop_share"
    ax.set_ylabel("share of FLOPs" if basis == "flop_share" else "share of layers")
    ax.set_ylim(0, max(1.0, float(bottom.max()) if len(bottom) else 1.0))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return fig, ax


@_paper
def loss_scale_trace(table: pd.DataFrame, *, ax=None):
    """The dynamic loss scale over steps (log axis) with skipped steps marked by crosses.
    ``table``: :func:`analysis.prep.scale_table` (``step, loss_scale, skipped``)."""
    _need(table, ["step", "loss_scale", "skipped"], "loss_scale_trace")
    fig, ax = _axes(ax, height=1.8)
    table = table.sort_values("step")
    ax.plot(table["step"], table["loss_scale"], drawstyle="steps-post", color=FORMAT_COLORS["fp16"],
            gid="scale", label="loss scale")
    skipped = table[table["skipped"].astype(bool)]
    ax.scatter(skipped["step"], skipped["loss_scale"], marker="x", color="#D55E00", s=14,
               linewidths=0.8, zorder=3, gid="skipped", label=f"skipped ({len(skipped)})")
    scale = pd.to_numeric(table["loss_scale"], errors="coerce")
    if (scale > 0).all() and scale.notna().all() and len(scale):
        ax.set_yscale("log", base=2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss scale")
    ax.legend(loc="best")
    return fig, ax


@_paper
def deploy_sensitivity(table: pd.DataFrame, *, tolerance: float | None = None, ax=None):
    """Per-layer sensitivity of a deploy search: quality drop with one layer in each format
    (all others fp32), one bar per format; layers the final plan put in 16-bit are starred.
    ``table``: rows ``layer, format, drop`` (+ optional ``chosen`` bool) in layer order."""
    _need(table, ["layer", "format", "drop"], "deploy_sensitivity")
    layers = list(dict.fromkeys(table["layer"]))
    fmts = [f for f in FORMAT_ORDER if f in set(table["format"])]
    fig, ax = _axes(ax, height=min(8.0, 0.9 + 0.16 * len(layers) * max(1, len(fmts)) ** 0.5))
    width = 0.8 / max(1, len(fmts))
    for i, fmt in enumerate(fmts):
        rows = table[table["format"] == fmt].set_index("layer").reindex(layers)
        ax.barh(np.arange(len(layers)) + (i - (len(fmts) - 1) / 2) * width,
                rows["drop"].clip(lower=0).fillna(0).to_numpy(), height=width,
                color=FORMAT_COLORS[fmt], label=fmt, gid=f"drop:{fmt}")
    if tolerance is not None:
        ax.axvline(tolerance, color="0.3", linestyle="--", linewidth=0.8, label="tolerance")
    chosen = set(table.loc[table.get("chosen", pd.Series(False, index=table.index)).astype(bool), "layer"])
    ax.set_yticks(range(len(layers)), [f"{n} *" if n in chosen else n for n in layers])
    ax.invert_yaxis()
    ax.set_xlabel("quality drop vs fp32 (one layer changed)")
    ax.legend(loc="lower right")
    return fig, ax


def save_figure(fig, path: str | Path, data: pd.DataFrame | None = None, close: bool = True) -> list[Path]:
    """Write ``<stem>.pdf`` and ``<stem>.png`` (and ``<stem>.csv`` from ``data``, the frame the
    figure was drawn from) where ``path`` is the CSV path or its stem. Returns the written paths."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".csv", ".pdf", ".png") else path
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if data is not None:
        written.append(stem.parent / (stem.name + ".csv"))
        data.to_csv(written[-1], index=False)
    with paper_rc():
        for ext in (".pdf", ".png"):
            written.append(stem.parent / (stem.name + ext))
            fig.savefig(written[-1])
    if close:
        plt.close(fig)
    return written


def _layer_ticks(ax, layers: list[str], max_labels: int = 30) -> None:
    """Layer names on the y axis, first layer on top (as in the model); thinned to at most
    ``max_labels`` so deep models stay legible at column width."""
    every = -(-len(layers) // max_labels)
    ax.set_yticks(range(0, len(layers), every), layers[::every])
    ax.set_ylim(len(layers) - 0.5, -0.5)


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges halfway between (possibly unevenly) sampled steps."""
    c = np.asarray(centers, dtype=float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
