"""The figure style contract, checked on the Matplotlib objects of every figure kind:
a unique colour + marker + line style per policy, non-empty axis labels, no legend entry without
data, no legend over the data, only used formats in legends, workload titles."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from analysis import figures  # noqa: E402
from analysis.style import FORMAT_COLORS, FORMAT_ORDER, policy_styles  # noqa: E402

HEADLINE = ["fp32", "bf16", "fp16", "autocast", "threshold", "bandit_ucb", "bandit_thompson",
            "muppet", "autoswitch", "best_static", "plan", "threshold@0.5"]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _hexes(styles):
    return [to_hex(s["color"]) for s in styles.values()]


def test_every_policy_has_its_own_colour_marker_and_line_style():
    styles = policy_styles(HEADLINE)
    for key in ("color", "marker"):
        values = [to_hex(s[key]) if key == "color" else s[key] for s in styles.values()]
        assert len(set(values)) == len(HEADLINE), key
    assert len({str(s["linestyle"]) for s in styles.values()}) >= 8  # the table's line styles, all used
    assert len({(to_hex(s["color"]), s["marker"], str(s["linestyle"])) for s in styles.values()}) == len(HEADLINE)
    # policies named after formats borrow the format's colour; nobody else takes it
    assert styles["bf16"]["color"] == FORMAT_COLORS["bf16"]
    others = [to_hex(styles[p]["color"]) for p in HEADLINE if p not in FORMAT_COLORS]
    assert not set(others) & {to_hex(FORMAT_COLORS[f]) for f in ("fp32", "bf16", "fp16")}
    # deterministic and independent of the order the names arrive in
    assert policy_styles(reversed(HEADLINE)) == styles


def test_every_registered_format_has_a_distinct_colour():
    assert list(FORMAT_COLORS) == list(FORMAT_ORDER)
    assert len(set(map(to_hex, FORMAT_COLORS.values()))) == len(FORMAT_COLORS)


def _legend_entries(ax):
    leg = ax.get_legend()
    return [] if leg is None else [t.get_text() for t in leg.get_texts()]


def _check_contract(fig, ax, data_labels=None):
    """Labels non-empty; the legend outside the axes (never over data); every legend entry
    names something drawn (``data_labels``: extra names known to be drawn, e.g. formats)."""
    assert ax.get_xlabel().strip(), "x axis needs a label"
    assert ax.get_ylabel().strip() or [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    leg = ax.get_legend()
    if leg is not None:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        lb, axb = leg.get_window_extent(r), ax.get_window_extent(r)
        assert lb.x0 >= axb.x1 - 1 or lb.y1 <= axb.y0 + 1 or lb.y0 >= axb.y1 - 1, \
            "legend overlaps the axes' data area"
        drawn = set(data_labels or [])
        for artist in ax.collections + ax.lines + ax.patches:
            label = artist.get_label()
            has_data = (len(artist.get_offsets()) if hasattr(artist, "get_offsets") else
                        len(artist.get_xdata()) if hasattr(artist, "get_xdata") else 1)
            if has_data:
                drawn.add(label)
        for container in ax.containers:
            drawn.add(container.get_label())
        for text in _legend_entries(ax):
            assert text in drawn or text.startswith(("on Pareto front", "gaps:", "not sampled")), \
                f"legend entry {text!r} has no data"


def _scatter_table(n_policies=9):
    names = HEADLINE[:n_policies]
    q = np.linspace(0.80, 0.95, n_policies)
    q[3] = np.nan  # one diverged policy
    c = np.linspace(0.3, 1.0, n_policies)
    q[5], c[5] = q[6], c[6]  # two policies on one point
    table = pd.DataFrame({"workload": "image", "cost": "rel_cost_h100", "controller": names,
                          "quality_metric": "val_accuracy", "higher_is_better": True,
                          "quality_mean": q, "quality_ci95": 0.1, "cost_mean": c, "cost_ci95": 0.0,
                          "n": 5, "on_front": [False] * (n_policies - 1) + [True]})
    table.loc[0, "quality_mean"] = 0.97  # CI would reach past accuracy 1.0
    return table


def test_scatter_contract():
    table = _scatter_table()
    fig, ax = figures.quality_cost_scatter(table)
    _check_contract(fig, ax)
    assert "image" in ax.get_title() and "modeled h100 cost, relative to fp32" in ax.get_xlabel()
    entries = _legend_entries(ax)
    assert "autocast" not in entries  # diverged: no point, no legend entry ...
    note = next(t for t in ax.texts if t.get_gid() == "hidden-note")
    assert "autocast" in note.get_text()  # ... but named under the axes
    assert "Pareto front" not in entries and any(e.startswith("on Pareto front") for e in entries)
    points = {c.get_label(): c for c in ax.collections if c.get_gid() == "point"}
    # coincident policies: same data coordinates, drawn apart on the page
    a, b = points["bandit_ucb"], points["bandit_thompson"]
    np.testing.assert_array_equal(a.get_offsets(), b.get_offsets())
    fig.canvas.draw()
    assert a.get_offset_transform().transform(a.get_offsets())[0][0] != \
        b.get_offset_transform().transform(b.get_offsets())[0][0]
    # accuracy error bars stay inside [0, 1]
    for coll in ax.collections:
        if coll.get_gid() is None and hasattr(coll, "get_segments"):
            for seg in coll.get_segments():
                ys = np.asarray(seg)[:, 1]
                assert ys.max() <= 1.0 + 1e-12 and ys.min() >= 0.0


def test_scatter_draws_a_front_line_only_for_two_or_more_points():
    table = _scatter_table()
    table["on_front"] = [False] * 6 + [True, False, True]
    fig, ax = figures.quality_cost_scatter(table)
    assert "Pareto front" in _legend_entries(ax)
    assert any(line.get_gid() == "pareto" for line in ax.lines)


def test_curves_contract_unique_line_styles_and_markers():
    rows = [{"controller": p, "step": s, "mean": 2.0 - 0.1 * s + i * 0.01, "lo": np.nan, "hi": np.nan}
            for i, p in enumerate(HEADLINE[:9]) for s in range(0, 100, 10)]
    fig, ax = figures.training_curves(pd.DataFrame(rows), ylabel="val accuracy", title="workload: image")
    _check_contract(fig, ax)
    lines = [line for line in ax.lines if str(line.get_gid()).startswith("curve:")]
    assert len({(to_hex(line.get_color()), line.get_marker(), str(line.get_linestyle())) for line in lines}) == 9
    assert len({to_hex(line.get_color()) for line in lines}) == 9
    assert all(line.get_marker() not in (None, "None", "") for line in lines)  # sparse: markers


def test_timeline_contract_every_layer_labelled_switch_in_legend():
    layers = [f"layer{i}" for i in range(41)]
    rows = [{"step": s, "layer": name, "format": "bf16" if i % 3 else "fp32"}
            for s in range(0, 100, 10) for i, name in enumerate(layers)]
    fig, ax = figures.precision_timeline(pd.DataFrame(rows),
                                         pd.DataFrame({"step": [30], "layer": ["layer7"]}))
    _check_contract(fig, ax, data_labels=FORMAT_ORDER)
    assert [t.get_text() for t in ax.get_yticklabels()] == layers
    assert "sampled every 10 steps" in ax.get_xlabel()
    entries = _legend_entries(ax)
    assert entries == ["fp32", "bf16", "plan switch"]  # only used formats; switches explained


def test_rates_contract_empty_panel_has_no_colour_bar():
    table = pd.DataFrame({"step": [0, 0, 10, 10], "layer": ["a", "b", "a", "b"],
                          "overflow": [0.0, 0.0, 0.0, 0.0], "underflow": [0.1, np.nan, 0.3, 0.0]})
    fig, axes = figures.fp16_rates(table, kind="grad")
    over, under = axes
    assert any("no overflow" in t.get_text() for t in over.texts)
    colorbars = [a for a in fig.axes if a not in axes]
    assert len(colorbars) == 1 and "fraction of elements" in colorbars[0].get_ylabel()
    assert "output gradients" in colorbars[0].get_ylabel()


def test_share_bars_only_used_formats():
    table = pd.DataFrame({"controller": ["fp32", "fp32", "fp32", "mixed", "mixed", "mixed"],
                          "format": ["fp32", "bf16", "fp8_e4m3"] * 2,
                          "share": [1.0, 0.0, 0.0, 0.25, 0.75, 0.0], "basis": "flop_share"})
    fig, ax = figures.flop_share_bars(table, title="workload: image")
    _check_contract(fig, ax)
    assert _legend_entries(ax) == ["fp32", "bf16"]
    assert "averaged over steps" in ax.get_ylabel()


def test_loss_scale_gap_where_the_scaler_is_inactive():
    table = pd.DataFrame({"step": [0, 1, 2, 3], "loss_scale": [1.0, 1.0, 65536.0, 32768.0],
                          "skipped": [False, False, False, True],
                          "scaler_active": [False, False, True, True]})
    fig, ax = figures.loss_scale_trace(table)
    _check_contract(fig, ax)
    line = next(line for line in ax.lines if line.get_gid() == "scale")
    y = np.asarray(line.get_ydata(), dtype=float)
    assert np.isnan(y[:2]).all() and y[2] == 65536.0  # no fake scale of 1
    assert ax.get_yscale() == "log"


def test_deploy_sensitivity_infinite_drop_and_log_axis():
    table = pd.DataFrame({"layer": ["a", "a", "b", "b", "c", "c"],
                          "format": ["bf16", "fp16"] * 3,
                          "drop": [1e-4, 0.02, 0.5, np.inf, 0.001, 0.003]})
    fig, ax = figures.deploy_sensitivity(table, tolerance=0.01)
    _check_contract(fig, ax, data_labels=FORMAT_ORDER)
    assert ax.get_xscale() == "symlog"
    assert any(c.patches[0].get_gid() == "inf:fp16" for c in ax.containers)
    assert any(t.get_text().strip() == "∞" for t in ax.texts)
    assert "relative" in ax.get_xlabel()
