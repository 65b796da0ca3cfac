"""One look for every figure: a fixed colour per format, paper-width rcParams.

Colours come from the Okabe–Ito palette (safe for the common colour-vision deficiencies). A
format keeps its colour in every figure; a controller that is named after a format (``fp32``,
``bf16``, ...) borrows that colour, other controllers take the palette's remaining colours and a
distinct marker each, so no figure relies on colour alone.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import matplotlib as mpl

__all__ = ["FORMAT_COLORS", "FORMAT_ORDER", "COLUMN_WIDTH_IN", "RC", "paper_rc", "format_color",
           "controller_styles", "cost_label"]

# Okabe & Ito (2008), "Color Universal Design". Order = order in legends and stacked bars.
FORMAT_COLORS: dict[str, str] = {
    "fp32": "#0072B2",      # blue
    "bf16": "#E69F00",      # orange
    "fp16": "#009E73",      # bluish green
    "fp8_e4m3": "#D55E00",  # vermillion
    "fp8_e5m2": "#CC79A7",  # reddish purple
}
FORMAT_ORDER: tuple[str, ...] = tuple(FORMAT_COLORS)
# Left for controllers that are not formats: sky blue, black, then a neutral grey and yellow
# (yellow is last: it is the palette's weakest colour on white paper).
_OTHER_COLORS = ("#56B4E9", "#000000", "#999999", "#F0E442")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")

COLUMN_WIDTH_IN = 3.3  # single column of a two-column paper (IEEE/ACM/NeurIPS ~3.25-3.4 in)

RC = {
    "figure.figsize": (COLUMN_WIDTH_IN, 2.3),
    "figure.dpi": 150,
    "savefig.dpi": 300,
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "legend.frameon": False,
    "lines.linewidth": 1.0,
    "lines.markersize": 4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # TrueType (Type 42) fonts: editable text, accepted by conference PDF checkers (no Type 3).
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}


@contextmanager
def paper_rc() -> Iterator[None]:
    """Context in which figures are built and saved with the paper rcParams."""
    with mpl.rc_context(RC):
        yield


def format_color(name: str) -> str:
    """The fixed colour of format ``name``."""
    try:
        return FORMAT_COLORS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; known formats: {', '.join(FORMAT_ORDER)}") from None


def controller_styles(controllers: Iterable[str]) -> dict[str, dict[str, str]]:
    """``{controller: {"color": ..., "marker": ...}}``, deterministic for a given set of names.

    Pass every controller of a sweep at once so that all of its figures agree.
    """
    names = sorted({str(c) for c in controllers})
    others = [n for n in names if n not in FORMAT_COLORS]
    styles = {}
    for i, name in enumerate(names):
        if name in FORMAT_COLORS:
            color = FORMAT_COLORS[name]
        else:
            color = _OTHER_COLORS[others.index(name) % len(_OTHER_COLORS)]
        styles[name] = {"color": color, "marker": _MARKERS[i % len(_MARKERS)]}
    return styles


def cost_label(column: str) -> str:
    """Axis/column label of a cost column; says so when measured wall time stands in."""
    if column.startswith("rel_cost_"):
        return f"relative cost ({column[len('rel_cost_'):]})"
    if column == "wall_s":
        return "wall time, measured (s)"
    return column.replace("_", " ")
