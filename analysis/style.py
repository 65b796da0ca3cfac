"""One look for every figure: a fixed colour per format, a unique style per policy, paper rcParams.

Style contract (checked by ``tests/test_analysis_style_contract.py`` on the Matplotlib objects):

- every format keeps one colour in every figure (:func:`format_color`); formats are listed in
  the order of adaprec's format registry, so a newly registered format gets a colour too;
- every policy (controller) of a figure has its own colour, marker *and* line style
  (:func:`policy_styles`): no figure tells two policies apart by colour alone;
- colours come from colour-blind-safe palettes: Okabe & Ito (2008) first, then Paul Tol's
  "muted" scheme; yellow, the weakest colour on white paper, comes last and is drawn with a
  dark edge.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Iterable, Iterator

import matplotlib as mpl

from adaprec import FORMATS

__all__ = ["FORMAT_COLORS", "FORMAT_ORDER", "COLUMN_WIDTH_IN", "RC", "paper_rc", "format_color",
           "formats_in",
           "format_order", "policy_styles", "controller_styles", "cost_label", "LINESTYLES",
           "MARKERS"]

# Okabe & Ito (2008), "Color Universal Design".
_OKABE_ITO = {"blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "vermillion": "#D55E00",
              "purple": "#CC79A7", "sky": "#56B4E9", "black": "#000000", "yellow": "#F0E442"}
# Paul Tol's "muted" qualitative scheme (colour-blind safe), for what Okabe-Ito runs out of.
_TOL_MUTED = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677",
              "#882255", "#AA4499", "#DDDDDD")

# Fixed colours of the classic formats (the order readers know); other registered formats
# take Tol's colours in registry order.
_FIXED_FORMAT_COLORS = {"fp32": _OKABE_ITO["blue"], "bf16": _OKABE_ITO["orange"],
                        "fp16": _OKABE_ITO["green"], "fp8_e4m3": _OKABE_ITO["vermillion"],
                        "fp8_e5m2": _OKABE_ITO["purple"]}


def format_order() -> tuple[str, ...]:
    """Formats in legend/stacking order: adaprec's registry order (fp32 first)."""
    return tuple(FORMATS)


def _format_colors() -> dict[str, str]:
    colors = dict(_FIXED_FORMAT_COLORS)
    extras = iter(c for c in _TOL_MUTED if c not in colors.values())
    for name in format_order():
        if name not in colors:
            colors[name] = next(extras, None) or _stable_pick(name, _TOL_MUTED)
    return colors


def _stable_pick(name: str, options: tuple[str, ...]) -> str:
    return options[zlib.crc32(name.encode()) % len(options)]


FORMAT_COLORS: dict[str, str] = _format_colors()
FORMAT_ORDER: tuple[str, ...] = format_order()

# Non-format policies: the Okabe-Ito colours no classic format uses, then Tol's muted; yellow last.
_POLICY_COLORS = (_OKABE_ITO["sky"], _OKABE_ITO["black"], *_TOL_MUTED[:-1], "#777777",
                  _OKABE_ITO["yellow"])
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2)),
              (0, (3, 1, 1, 1)))

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


def _is_per_role(name: str) -> bool:
    """Whether ``name`` is a per-role plan entry (``fprop=bf16,dgrad=fp16,wgrad=bf16``)."""
    from adaprec import get_format
    try:
        return "=" in name and get_format(name).has_roles
    except ValueError:
        return False


def format_color(name: str) -> str:
    """The fixed colour of format ``name`` (any registered format; a per-role entry gets a
    stable colour of its own)."""
    if name in FORMAT_COLORS:
        return FORMAT_COLORS[name]
    if _is_per_role(str(name)):
        return _stable_pick(name, _TOL_MUTED)
    raise ValueError(f"unknown format {name!r}; known formats: {', '.join(FORMAT_ORDER)}")


def formats_in(names: Iterable[str]) -> list[str]:
    """Legend/code order for the formats a table holds: every registered format (registry
    order), then the per-role entries present, sorted. An unknown name raises."""
    present = {str(n) for n in names}
    extra = sorted(n for n in present - set(FORMAT_ORDER) if _is_per_role(n))
    unknown = sorted(present - set(FORMAT_ORDER) - set(extra))
    if unknown:
        raise ValueError(f"unknown formats {unknown}; known: {', '.join(FORMAT_ORDER)} "
                         "and per-role entries (fprop=..,dgrad=..,wgrad=..)")
    return [*FORMAT_ORDER, *extra]


def policy_styles(policies: Iterable[str]) -> dict[str, dict]:
    """``{policy: {"color", "marker", "linestyle", "edgecolor"}}``, unique per policy.

    Pass every policy of a sweep at once so that all of its figures agree. A policy named after
    a format (``fp32``, ``bf16``, ...) borrows that format's colour; the others take distinct
    colours no borrowed format uses. Markers and line styles are assigned in name order, each
    distinct within the set (colour, marker and line style each tell policies apart)."""
    names = sorted({str(p) for p in policies})
    taken = {FORMAT_COLORS[n] for n in names if n in FORMAT_COLORS}
    free = [c for c in _POLICY_COLORS if c not in taken]
    free += [c for c in FORMAT_COLORS.values() if c not in taken and c not in free]
    styles, others = {}, 0
    for i, name in enumerate(names):
        if name in FORMAT_COLORS:
            color = FORMAT_COLORS[name]
        else:
            color = free[others % len(free)]
            others += 1
        styles[name] = {"color": color, "marker": MARKERS[i % len(MARKERS)],
                        "linestyle": LINESTYLES[i % len(LINESTYLES)],
                        "edgecolor": "black" if color == _OKABE_ITO["yellow"] else color}
    return styles


controller_styles = policy_styles  # the name the loaders' column uses


def cost_label(column: str) -> str:
    """Axis/column label of a cost column: says whether it is modeled or measured, and its unit."""
    if column.startswith("rel_cost_"):
        return f"modeled {column[len('rel_cost_'):]} cost, relative to fp32"
    if column.startswith("cost_") and column.endswith("_s"):
        return f"modeled {column[len('cost_'):-2]} time per step (s)"
    if column == "wall_s":
        return "measured wall time (s)"
    if column == "cpu_s":
        return "measured CPU time (s)"
    return column.replace("_", " ")
