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
import matplotlib.transforms as mtransforms
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm, Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from .style import (COLUMN_WIDTH_IN, FORMAT_COLORS, FORMAT_ORDER, cost_label, format_color, formats_in,
                    paper_rc, policy_styles)

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
                         quality_label: str | None = None, x_label: str | None = None,
                         title: str | None = None, ax=None):
    """Quality vs cost per policy with 95% CI error bars (clipped to the metric's range).

    Points on the Pareto front (``on_front``; see :func:`analysis.stats.pareto_front`, which
    respects the intervals) are ringed and, where there are two or more, joined by a dashed
    line. Policies whose points coincide are drawn side by side (a few points apart; the data
    coordinates stay exact). Policies without a finite quality (diverged, failed) get no point
    and no legend entry; they are named in a note under the axes. ``table``: rows of
    :func:`analysis.stats.pareto_front` for one workload and cost."""
    _need(table, [group, "quality_mean", "quality_ci95", "cost_mean", "cost_ci95", "on_front"],
          "quality_cost_scatter")
    fig, ax = _axes(ax, height=2.6)
    styles = styles or policy_styles(table[group])
    metric = table["quality_metric"].iloc[0] if "quality_metric" in table and len(table) else "quality"
    shown = table[np.isfinite(table["quality_mean"].astype(float)) & np.isfinite(table["cost_mean"].astype(float))]
    hidden = sorted(set(map(str, table[group])) - set(map(str, shown[group])))
    dodge = _dodge_offsets(shown["cost_mean"].to_numpy(float), shown["quality_mean"].to_numpy(float))
    lo_bound, hi_bound = _metric_bounds(metric)
    extent = []  # artists drawn with an offset transform do not grow the data limits themselves
    for (row, dx) in zip(shown.itertuples(index=False), dodge):
        name = str(getattr(row, group))
        st = styles[name]
        shift = mtransforms.offset_copy(ax.transData, fig=fig, x=dx, y=0, units="points")
        q, qe = float(row.quality_mean), float(np.nan_to_num(row.quality_ci95))
        yerr = [[q - max(q - qe, lo_bound)], [min(q + qe, hi_bound) - q]]
        ce = float(np.nan_to_num(row.cost_ci95))
        extent += [(row.cost_mean - ce, q - yerr[0][0]), (row.cost_mean + ce, q + yerr[1][0])]
        ax.errorbar(row.cost_mean, q, xerr=np.nan_to_num(row.cost_ci95), yerr=yerr, fmt="none",
                    ecolor=st["color"], elinewidth=0.8, capsize=1.5, transform=shift)
        ax.scatter([row.cost_mean], [q], color=st["color"], marker=st["marker"], s=24, zorder=3,
                   label=name, gid="point", transform=shift,
                   edgecolors="black" if row.on_front else st["edgecolor"],
                   linewidths=1.0 if row.on_front else 0.5)
    if extent:
        ax.update_datalim(extent)
        ax.autoscale_view()
    front = shown[shown["on_front"].astype(bool)].sort_values("cost_mean")
    if len(front) >= 2:
        ax.plot(front["cost_mean"], front["quality_mean"], ls="--", color="0.3", lw=0.8, zorder=2,
                gid="pareto", label="Pareto front")
    if len(front):  # the ring is the front's mark even when one point forms it
        ax.scatter([], [], marker="o", facecolors="none", edgecolors="black", linewidths=1.0, s=24,
                   label="on Pareto front (CI-aware)")
    cost = table["cost"].iloc[0] if "cost" in table and len(table) else "cost"
    ax.set_xlabel(x_label or cost_label(cost))
    ax.set_ylabel(quality_label or _metric_label(metric, table))
    ax.set_title(title or _workload_title(table))
    if _spans_decades(shown["cost_mean"]):
        ax.set_xscale("log")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, handletextpad=0.3)
    if hidden:
        ax.annotate("no point (diverged or failed): " + ", ".join(hidden), xy=(0, 0),
                    xycoords="axes fraction", xytext=(0, -26), textcoords="offset points",
                    fontsize=5.5, va="top", gid="hidden-note")
    return fig, ax


def _dodge_offsets(x: np.ndarray, y: np.ndarray, step_pt: float = 5.0) -> list[float]:
    """Horizontal offsets (points) that set coincident points side by side."""
    offsets = [0.0] * len(x)
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(np.round(x, 12), np.round(y, 12))):
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        for k, i in enumerate(members):
            offsets[i] = (k - (len(members) - 1) / 2) * step_pt
    return offsets


def _metric_bounds(metric: str) -> tuple[float, float]:
    """The range a quality metric can take (error bars never leave it)."""
    name = str(metric)
    if "accuracy" in name:
        return 0.0, 1.0
    if "perplexity" in name:
        return 1.0, np.inf
    if any(k in name for k in ("rmse", "loss", "mse")):
        return 0.0, np.inf
    return -np.inf, np.inf


def _metric_label(metric: str, table: pd.DataFrame) -> str:
    higher = bool(table["higher_is_better"].iloc[0]) if "higher_is_better" in table and len(table) else True
    return f"{str(metric).replace('_', ' ')} ({'higher' if higher else 'lower'} is better)"


def _workload_title(table: pd.DataFrame) -> str:
    return f"workload: {table['workload'].iloc[0]}" if "workload" in table and len(table) else ""


def _spans_decades(values, decades: float = 2.0) -> bool:
    v = pd.to_numeric(pd.Series(values), errors="coerce")
    v = v[np.isfinite(v) & (v > 0)]
    return len(v) >= 2 and np.log10(v.max() / v.min()) >= decades


@_paper
def precision_timeline(table: pd.DataFrame, switches: pd.DataFrame | None = None, *,
                       interval: int | None = None, ax=None):
    """Layers × sampled steps heat map of each layer's format (one colour per format, grey
    hatching where a layer was not sampled); plan switches from ``switches`` (``step, layer``)
    are small triangles at the top edge of the switched cell (in the legend). Every layer is
    labelled: the figure grows with the layer count instead of dropping labels. ``interval``:
    the sampling interval, stated on the x axis (inferred from the steps when omitted).
    ``table``: :func:`analysis.prep.timeline_table` (``step, layer, format``)."""
    _need(table, ["step", "layer", "format"], "precision_timeline")
    try:
        order = formats_in(table["format"])  # registered formats, then per-role entries
    except ValueError as exc:
        raise ValueError(f"{exc} (in timeline)") from None
    layers = list(dict.fromkeys(table["layer"]))
    steps = np.sort(table["step"].unique())
    codes = timeline_codes(table)
    row_in = 0.085 if len(layers) > 30 else 0.12
    fig, ax = _axes(ax, height=min(9.0, max(1.6, 0.7 + row_in * len(layers))))
    cmap = ListedColormap([format_color(f) for f in order])
    norm = BoundaryNorm(np.arange(len(order) + 1) - 0.5, len(order))
    ax.set_facecolor("0.92")  # not sampled: the hatched background shows through
    ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="////",
                           edgecolor="0.75", lw=0, zorder=0))
    ax.pcolormesh(_edges(steps), np.arange(len(layers) + 1) - 0.5, np.ma.masked_invalid(codes),
                  cmap=cmap, norm=norm, gid="timeline", rasterized=codes.size > _VECTOR_CELLS, zorder=1)
    handles = [Patch(color=format_color(f), label=f) for f in order if f in set(table["format"])]
    if np.isnan(codes).any():
        handles.append(Patch(facecolor="0.92", hatch="////", edgecolor="0.75", label="not sampled"))
    if switches is not None and len(switches):
        pos = {name: i for i, name in enumerate(layers)}
        sw = switches[switches["layer"].isin(pos)]
        up = mtransforms.offset_copy(ax.transData, fig=fig, x=0, y=_row_points(fig, ax, len(layers)) * 0.32,
                                     units="points")
        ax.scatter(sw["step"], sw["layer"].map(pos), marker="v", s=7, color="black",
                   edgecolors="white", linewidths=0.3, gid="switches", label="plan switch",
                   zorder=3, transform=up)
        handles.append(Line2D([], [], marker="v", ls="none", color="black", markeredgecolor="white",
                              markersize=3.5, label="plan switch"))
    _layer_ticks(ax, layers)
    interval = interval or _sampling_interval(steps)
    ax.set_xlabel("step" + (f" (formats sampled every {interval} steps)" if interval else ""))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return fig, ax


def _row_points(fig, ax, n_rows: int) -> float:
    """Height of one heat-map row in points (for marker offsets inside a row)."""
    return fig.get_figheight() * 72 * ax.get_position().height / max(1, n_rows)


def _sampling_interval(steps: np.ndarray) -> int | None:
    if len(steps) < 2:
        return None
    gaps = np.diff(np.asarray(steps, dtype=float))
    return int(np.median(gaps)) if np.all(gaps > 0) else None


def timeline_codes(table: pd.DataFrame) -> np.ndarray:
    """The (layers × sorted steps) matrix of format indices into ``FORMAT_ORDER`` (per-role
    entries after it: :func:`~analysis.style.formats_in`) that :func:`precision_timeline`
    draws (NaN where a layer was not sampled)."""
    layers = list(dict.fromkeys(table["layer"]))
    code = table["format"].map({f: i for i, f in enumerate(formats_in(table["format"]))}).astype(float)
    grid = pd.DataFrame({"layer": table["layer"], "step": table["step"], "code": code})
    grid = grid.pivot_table(index="layer", columns="step", values="code", aggfunc="last")
    return grid.reindex(index=layers, columns=np.sort(table["step"].unique())).to_numpy(dtype=float)


@_paper
def fp16_rates(table: pd.DataFrame, *, kind: str = "", axes=None):
    """Two stacked layers × steps heat maps: the fraction of a tensor's elements that an fp16
    cast would overflow / flush to zero (at the scale fp16 would use, whatever format the layer
    ran: hypothetical for layers not in fp16), per layer over time. Log colour scale; white =
    exactly zero, grey hatching = not sampled; a panel without any non-zero rate says so and
    has no colour bar. ``table``: :func:`analysis.prep.rates_table`.
    Returns ``(fig, axes)`` with ``axes = [overflow_ax, underflow_ax]``."""
    _need(table, ["step", "layer", "overflow", "underflow"], "fp16_rates")
    layers = list(dict.fromkeys(table["layer"]))
    steps = np.sort(table["step"].unique())
    if axes is None:
        fig, axes = plt.subplots(2, 1, sharex=True, layout="constrained",
                                 figsize=(COLUMN_WIDTH_IN, min(9.0, max(2.4, 1.0 + 0.2 * len(layers)))))
    fig = axes[0].figure
    what = {"act": "activations", "grad": "output gradients", "weight": "weights",
            "wgrad": "weight gradients", "inp": "inputs"}.get(kind, kind)
    for ax, col in zip(axes, ("overflow", "underflow")):
        values = rates_matrix(table, col)
        positive = values[np.isfinite(values) & (values > 0)]
        ax.set_facecolor("0.92")
        ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="////",
                               edgecolor="0.75", lw=0, zorder=0))
        white = np.where(np.isfinite(values), 0.0, np.nan)  # zero cells: white, not hatched
        ax.pcolormesh(_edges(steps), np.arange(len(layers) + 1) - 0.5, np.ma.masked_invalid(white),
                      cmap=ListedColormap(["white"]), vmin=0, vmax=1, zorder=1,
                      rasterized=values.size > _VECTOR_CELLS)
        norm = LogNorm(positive.min(), max(positive.max(), positive.min() * 10)) if positive.size \
            else Normalize(0, 1)
        mesh = ax.pcolormesh(_edges(steps), np.arange(len(layers) + 1) - 0.5,
                             np.ma.masked_less_equal(np.nan_to_num(values, nan=0.0), 0.0),
                             cmap="cividis", norm=norm, gid=col, zorder=2,
                             rasterized=values.size > _VECTOR_CELLS)
        label = f"fp16 {col} rate of {what}\n(fraction of elements)" if what else \
            f"fp16 {col} rate\n(fraction of elements)"
        if positive.size:
            fig.colorbar(mesh, ax=ax, label=label, pad=0.01)
        else:  # an all-white panel must not read as missing data, nor carry a meaningless bar
            ax.set_title(label.replace("\n", " "), fontsize=6)
            ax.text(0.5, 0.5, f"no {col} in any sampled step", transform=ax.transAxes,
                    ha="center", va="center", bbox=dict(facecolor="white", edgecolor="none"))
        _layer_ticks(ax, layers)
    interval = _sampling_interval(steps)
    axes[-1].set_xlabel("step" + (f" (sampled every {interval} steps)" if interval else ""))
    return fig, axes


def rates_matrix(table: pd.DataFrame, column: str) -> np.ndarray:
    """(layers in logged order × sorted steps) matrix of ``column`` as :func:`fp16_rates` draws it."""
    layers = list(dict.fromkeys(table["layer"]))
    grid = table.pivot_table(index="layer", columns="step", values=column, aggfunc="last", dropna=False)
    return grid.reindex(index=layers, columns=np.sort(table["step"].unique())).to_numpy(dtype=float)


@_paper
def training_curves(table: pd.DataFrame, *, group: str = "controller", ylabel: str = "loss",
                    styles: dict | None = None, log_y: bool | None = None, title: str | None = None,
                    y: str = "mean", xlabel: str = "step", ax=None):
    """One line per policy (column ``y``: the mean over seeds) with its 95% band (``lo``,
    ``hi``) where defined; each policy has its own colour, line style and marker (markers on
    every point of sparse series such as evaluations, on every tenth of dense ones).
    ``log_y=None`` picks a log axis when the values span two decades. ``table``:
    :func:`analysis.prep.curve_table` (``controller, step, mean, lo, hi``) or any frame with
    those columns (``analysis.bandits`` draws IQM curves with ``y="iqm"``)."""
    _need(table, [group, "step", y, "lo", "hi"], "training_curves")
    fig, ax = _axes(ax, height=2.4)
    styles = styles or policy_styles(table[group])
    for name, part in table.groupby(group, sort=True):
        part = part.sort_values("step")
        st = styles[str(name)]
        every = 1 if len(part) <= 20 else max(1, len(part) // 10)
        ax.plot(part["step"], part[y], color=st["color"], ls=st["linestyle"], marker=st["marker"],
                markevery=every, markersize=3, markeredgecolor=st["edgecolor"], label=str(name),
                gid=f"curve:{name}")
        band = np.isfinite(part["lo"]) & np.isfinite(part["hi"])
        if band.any():
            ax.fill_between(part["step"], part["lo"], part["hi"], where=band, color=st["color"],
                            alpha=0.15, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if log_y or (log_y is None and _spans_decades(table[y])):
        ax.set_yscale("log")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return fig, ax


_SHARE_LABELS = {"flop_share": "share of FLOPs\n(averaged over steps)",
                 "format_share": "share of layers\n(end-of-run plan)",
                 "pull_share": "share of layer-windows\n(arm pulls, mean over seeds)"}


@_paper
def flop_share_bars(table: pd.DataFrame, *, group: str = "controller", title: str | None = None, ax=None):
    """Stacked bars: each policy's share per format, only formats with a non-zero share
    anywhere. FLOP shares are averaged over the run's steps (time-weighted: a format that ran
    half the run at full share counts 0.5), so they differ from end-of-run plan shares; the
    y label says which basis is drawn (``basis``: ``flop_share``, ``format_share``, or
    ``pull_share``, a bandit's arm pulls per layer-window). ``table``:
    :func:`analysis.prep.share_table` (``controller, format, share``)."""
    _need(table, [group, "format", "share"], "flop_share_bars")
    wide = table.pivot_table(index=group, columns="format", values="share", aggfunc="first")
    names = list(wide.index)
    fig, ax = _axes(ax, height=2.4)
    if len(names) > 8:
        fig.set_figwidth(max(fig.get_figwidth(), 0.3 * len(names) + 1.2))
    bottom = np.zeros(len(names))
    for fmt in [f for f in FORMAT_ORDER if f in wide.columns and (wide[f].fillna(0) > 0).any()]:
        heights = wide[fmt].fillna(0.0).to_numpy()
        ax.bar(range(len(names)), heights, bottom=bottom, color=FORMAT_COLORS[fmt], label=fmt,
               width=0.7, gid=f"share:{fmt}")
        bottom += heights
    ax.set_xticks(range(len(names)), [str(n) for n in names], rotation=90)
    ax.set_xlabel("policy")
    basis = table["basis"].iloc[0] if "basis" in table and len(table) else "flop_share"
    ax.set_ylabel(_SHARE_LABELS.get(basis, _SHARE_LABELS["format_share"]))
    ax.set_ylim(0, max(1.0, float(bottom.max()) if len(bottom) else 1.0))
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return fig, ax


@_paper
def loss_scale_trace(table: pd.DataFrame, *, ax=None):
    """The dynamic loss scale over steps (log2 axis) with skipped steps marked by crosses.
    Steps where the scaler was inactive (no fp16 layer: ``scaler_active`` False) are a gap,
    not a scale of 1. ``table``: :func:`analysis.prep.scale_table` (``step, loss_scale, skipped``)."""
    _need(table, ["step", "loss_scale", "skipped"], "loss_scale_trace")
    fig, ax = _axes(ax, height=1.8)
    table = table.sort_values("step")
    scale = pd.to_numeric(table["loss_scale"], errors="coerce").astype(float)
    if "scaler_active" in table:
        active = table["scaler_active"].fillna(True).astype(bool)
        scale = scale.where(active)
    ax.plot(table["step"], scale, drawstyle="steps-post", color=FORMAT_COLORS["fp16"],
            gid="scale", label="loss scale")
    skipped = table[table["skipped"].astype(bool)]
    ax.scatter(skipped["step"], scale[skipped.index], marker="x", color="#D55E00", s=14,
               linewidths=0.8, zorder=3, gid="skipped", label=f"skipped step ({len(skipped)})")
    finite = scale[np.isfinite(scale)]
    if len(finite) and (finite > 0).all():
        ax.set_yscale("log", base=2)
    if "scaler_active" in table and not table["scaler_active"].fillna(True).astype(bool).all():
        ax.plot([], [], color="none", label="gaps: scaler inactive (no fp16 layer)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss scale")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return fig, ax


@_paper
def deploy_sensitivity(table: pd.DataFrame, *, tolerance: float | None = None,
                       drop_label: str | None = None, ax=None):
    """Per-layer sensitivity of a deploy search: quality drop with one layer in each format
    (all others fp32), one bar per format; layers the final plan put in 16-bit are starred.
    An infinite drop (the layer overflows in that format) is a hatched bar to the axis edge
    marked "∞". The x axis is symmetric-log when drops span decades. ``drop_label`` says what
    the drop measures (deploy: accuracy points lost, or the relative increase of perplexity /
    RMSE). ``table``: rows ``layer, format, drop`` (+ optional ``chosen`` bool) in layer order."""
    _need(table, ["layer", "format", "drop"], "deploy_sensitivity")
    layers = list(dict.fromkeys(table["layer"]))
    fmts = [f for f in FORMAT_ORDER if f in set(table["format"])]
    fig, ax = _axes(ax, height=min(8.0, 0.9 + 0.16 * len(layers) * max(1, len(fmts)) ** 0.5))
    drops = pd.to_numeric(table["drop"], errors="coerce").astype(float)
    finite = drops[np.isfinite(drops)].clip(lower=0)
    edge = float(finite.max()) * 1.5 if len(finite) and finite.max() > 0 else 1.0
    width = 0.8 / max(1, len(fmts))
    for i, fmt in enumerate(fmts):
        rows = table[table["format"] == fmt].set_index("layer").reindex(layers)
        d = pd.to_numeric(rows["drop"], errors="coerce").astype(float)
        inf = np.isinf(d.to_numpy()) & (d.to_numpy() > 0)
        y = np.arange(len(layers)) + (i - (len(fmts) - 1) / 2) * width
        ax.barh(y, d.where(~inf).clip(lower=0).fillna(0).to_numpy(), height=width,
                color=FORMAT_COLORS[fmt], label=fmt, gid=f"drop:{fmt}")
        if inf.any():
            ax.barh(y[inf], [edge] * int(inf.sum()), height=width, color=FORMAT_COLORS[fmt],
                    hatch="xxx", edgecolor="white", lw=0, gid=f"inf:{fmt}")
            for yy in y[inf]:
                ax.text(edge, yy, " ∞", va="center", ha="left", fontsize=6)
    if tolerance is not None:
        ax.axvline(tolerance, color="0.3", linestyle="--", linewidth=0.8, label="tolerance")
    chosen = set(table.loc[table.get("chosen", pd.Series(False, index=table.index)).astype(bool), "layer"])
    ax.set_yticks(range(len(layers)), [f"{n} *" if n in chosen else n for n in layers])
    ax.invert_yaxis()
    positive = finite[finite > 0]
    if len(positive) >= 2 and positive.max() / positive.min() >= 100:
        ax.set_xscale("symlog", linthresh=float(positive.min()))
    ax.set_xlabel(drop_label or "quality drop vs fp32, one layer changed\n"
                  "(accuracy points; relative for perplexity/RMSE)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
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


def _layer_ticks(ax, layers: list[str]) -> None:
    """Every layer name on the y axis, first layer on top (as in the model); deep models get a
    smaller font (the figure grows with the layer count) instead of dropped labels."""
    size = 6 if len(layers) <= 30 else 4.5 if len(layers) <= 60 else 3.5
    ax.set_yticks(range(len(layers)), layers, fontsize=size)
    ax.set_ylim(len(layers) - 0.5, -0.5)


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges halfway between (possibly unevenly) sampled steps."""
    c = np.asarray(centers, dtype=float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
