"""Every figure renders headless, saves PDF+PNG+CSV, and draws exactly its DataFrame's data."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from analysis import (FORMAT_COLORS, curve_table, flop_share_bars, fp16_rates, load_layers,  # noqa: E402
                      load_runs, load_steps, loss_scale_trace, precision_timeline,
                      quality_cost_scatter, rates_table, save_figure, scale_table, timeline_table,
                      training_curves)
from analysis.figures import rates_matrix, timeline_codes  # noqa: E402
from analysis.style import COLUMN_WIDTH_IN, FORMAT_ORDER  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def scatter_frame():
    return pd.DataFrame({"workload": "w", "cost": "rel_cost_a100", "controller": ["fp32", "bf16", "mixed"],
                         "quality_metric": "val_accuracy", "higher_is_better": True,
                         "quality_mean": [0.90, 0.89, 0.80], "quality_ci95": [0.01, np.nan, 0.02],
                         "cost_mean": [1.0, 0.5, 0.7], "cost_ci95": [0.0, 0.0, 0.1], "n": [2, 1, 2],
                         "on_front": [True, True, False]})


def timeline_frame():
    return pd.DataFrame({"step": [0, 0, 10, 10, 30, 30], "layer": ["b", "a", "b", "a", "b", "a"],
                         "format": ["fp32", "bf16", "fp16", "bf16", "fp16", "fp8_e4m3"]})


def rates_frame():
    return pd.DataFrame({"step": [0, 0, 5, 5], "layer": ["l1", "l2", "l1", "l2"],
                         "overflow": [0.0, 0.5, 0.25, 0.0], "underflow": [0.1, 0.2, 0.3, 0.4]})


def curves_frame():
    return pd.DataFrame({"controller": ["fp32"] * 3 + ["bf16"] * 3, "step": [0, 1, 2] * 2,
                         "mean": [2.0, 1.5, 1.2, 2.1, 1.6, 1.1], "lo": [1.9, 1.4, 1.1] + [np.nan] * 3,
                         "hi": [2.1, 1.6, 1.3] + [np.nan] * 3, "n": [2] * 3 + [1] * 3})


def shares_frame():
    return pd.DataFrame({"controller": ["fp32", "fp32", "mixed", "mixed"],
                         "format": ["fp32", "bf16", "fp32", "bf16"], "share": [1.0, 0.0, 0.25, 0.75],
                         "basis": "flop_share"})


def scale_frame():
    return pd.DataFrame({"step": [0, 1, 2, 3], "loss_scale": [65536.0, 32768.0, 32768.0, 32768.0],
                         "skipped": [True, False, False, False]})


FIGURES = {
    "scatter": lambda: quality_cost_scatter(scatter_frame()),
    "timeline": lambda: precision_timeline(timeline_frame()),
    "rates": lambda: fp16_rates(rates_frame(), kind="act"),
    "curves": lambda: training_curves(curves_frame()),
    "shares": lambda: flop_share_bars(shares_frame()),
    "scale": lambda: loss_scale_trace(scale_frame()),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_saves_pdf_png_and_its_csv(name, tmp_path):
    fig, _ = FIGURES[name]()
    assert fig.get_size_inches()[0] == pytest.approx(COLUMN_WIDTH_IN)
    data = pd.DataFrame({"x": [1, 2]})
    written = save_figure(fig, tmp_path / "sub" / f"{name}.csv", data=data)
    assert [p.name for p in written] == [f"{name}.csv", f"{name}.pdf", f"{name}.png"]
    pdf, png = (tmp_path / "sub" / f"{name}.pdf").read_bytes(), (tmp_path / "sub" / f"{name}.png").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType (Type 42) text, no Type 3 fonts
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "sub" / f"{name}.csv"), data)


def test_scatter_draws_the_table_and_its_front():
    table = scatter_frame()
    fig, ax = quality_cost_scatter(table)
    points = [c for c in ax.collections if c.get_gid() == "point"]
    assert sorted(map(tuple, np.concatenate([c.get_offsets() for c in points]))) == \
        sorted(zip(table["cost_mean"], table["quality_mean"]))
    front = next(line for line in ax.lines if line.get_gid() == "pareto")
    assert list(front.get_xdata()) == [0.5, 1.0] and list(front.get_ydata()) == [0.89, 0.90]
    fp32 = next(c for c in points if c.get_label() == "fp32")
    assert to_hex(fp32.get_facecolor()[0]) == FORMAT_COLORS["fp32"].lower()


def test_scatter_axes_show_every_point_off_the_front():
    # points drawn with an offset transform do not grow the axes by themselves: a policy far
    # off the front (here 0.80 +- 0.02, below the front's 0.89..0.90) must still be inside
    table = scatter_frame().assign(quality_mean=[0.90, 0.89, 0.50])
    fig, ax = quality_cost_scatter(table)
    lo, hi = ax.get_ylim()
    assert lo <= 0.48 and hi >= 0.90
    x0, x1 = ax.get_xlim()
    assert x0 <= 0.5 and x1 >= 1.0


def test_timeline_image_is_the_format_matrix():
    table = timeline_frame()
    fig, ax = precision_timeline(table, switches=pd.DataFrame({"step": [10], "layer": ["b"]}))
    mesh = next(c for c in ax.collections if c.get_gid() == "timeline")
    idx = {f: i for i, f in enumerate(FORMAT_ORDER)}
    expected = np.array([[idx["fp32"], idx["fp16"], idx["fp16"]],      # layer b first: logged order
                         [idx["bf16"], idx["bf16"], idx["fp8_e4m3"]]], dtype=float)
    np.testing.assert_array_equal(timeline_codes(table), expected)
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(2, 3), expected)
    for fmt, code in idx.items():  # one fixed colour per format
        assert to_hex(mesh.cmap(mesh.norm(code))) == FORMAT_COLORS[fmt].lower()
    switches = next(c for c in ax.collections if c.get_gid() == "switches")
    assert switches.get_offsets().tolist() == [[10, 0]]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["fp32", "bf16", "fp16", "fp8_e4m3", "plan switch"]


def test_timeline_rejects_unknown_formats():
    with pytest.raises(ValueError, match="unknown formats"):
        precision_timeline(pd.DataFrame({"step": [0], "layer": ["a"], "format": ["int4"]}))


def test_rates_meshes_are_the_rates():
    table = rates_frame()
    fig, axes = fp16_rates(table)
    for ax, col, expected in zip(axes, ("overflow", "underflow"),
                                 ([[0.0, 0.25], [0.5, 0.0]], [[0.1, 0.3], [0.2, 0.4]])):
        np.testing.assert_array_equal(rates_matrix(table, col), expected)
        mesh = next(c for c in ax.collections if c.get_gid() == col)
        np.testing.assert_array_equal(np.ma.filled(mesh.get_array(), 0.0).reshape(2, 2), expected)


def test_curves_are_the_means():
    table = curves_frame()
    fig, ax = training_curves(table)
    for ctrl, part in table.groupby("controller"):
        line = next(line for line in ax.lines if line.get_gid() == f"curve:{ctrl}")
        assert list(line.get_xdata()) == list(part["step"]) and list(line.get_ydata()) == list(part["mean"])
    assert len(ax.collections) == 1  # a band only where the interval is defined (fp32)


def test_share_bars_stack_the_shares():
    fig, ax = flop_share_bars(shares_frame())
    bars = {c.get_label(): c for c in ax.containers}
    fp32, bf16 = bars["fp32"], bars["bf16"]
    assert [p.get_height() for p in fp32] == [1.0, 0.25]
    assert [p.get_height() for p in bf16] == [0.0, 0.75]
    assert [p.get_y() for p in bf16] == [1.0, 0.25]  # stacked on fp32
    assert to_hex(bf16[0].get_facecolor()) == FORMAT_COLORS["bf16"].lower()


def test_loss_scale_trace_marks_skips():
    table = scale_frame()
    fig, ax = loss_scale_trace(table)
    line = next(line for line in ax.lines if line.get_gid() == "scale")
    assert list(line.get_ydata()) == list(table["loss_scale"])
    skipped = next(c for c in ax.collections if c.get_gid() == "skipped")
    assert skipped.get_offsets().tolist() == [[0.0, 65536.0]]
    assert ax.get_yscale() == "log"


def test_figures_from_the_tiny_sweep(tiny_sweep):
    runs = load_runs(tiny_sweep)
    ok = runs[runs["status"] == "ok"]
    run_id = ok.loc[ok["controller"] == "fp16", "run_id"].iloc[0]
    layers = load_layers(ok)
    timeline = timeline_table(layers[layers["run_id"] == run_id])
    fig, ax = precision_timeline(timeline)
    assert (timeline_codes(timeline) == FORMAT_ORDER.index("fp16")).all()
    rates = rates_table(layers[layers["run_id"] == run_id], "grad")
    fp16_rates(rates)
    steps = load_steps(ok)
    scale = scale_table(steps[steps["run_id"] == run_id])
    assert len(scale) == 6
    loss_scale_trace(scale)
    curves = curve_table(steps, "loss")
    assert set(curves["controller"]) == {"fp32", "fp16"} and (curves["n"] == 2).all()
    training_curves(curves)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="on_front"):
        quality_cost_scatter(scatter_frame().drop(columns="on_front"))


def test_curve_smoothing_is_per_run_trailing_mean():
    steps = pd.DataFrame({"run_id": ["a"] * 4 + ["b"] * 4, "controller": "fp32",
                          "step": [0, 1, 2, 3] * 2, "loss": [4.0, 2.0, np.inf, 0.0, 1.0, 1.0, 1.0, 1.0]})
    curve = curve_table(steps, "loss", smooth=2)
    # run a, windows of 2 over finite values: 4, (4+2)/2, 2 (inf left out), 0 (inf left out)
    a = [4.0, 3.0, 2.0, 0.0]
    np.testing.assert_allclose(curve["mean"], [(x + 1.0) / 2 for x in a])
    with pytest.raises(ValueError, match="smooth"):
        curve_table(steps, "loss", smooth=0)


def test_deploy_sensitivity_plots_each_drop(tmp_path):
    import pandas as pd
    from analysis.figures import deploy_sensitivity, save_figure
    table = pd.DataFrame({"layer": ["a", "a", "b", "b"], "format": ["bf16", "fp16", "bf16", "fp16"],
                          "drop": [0.0, 0.01, 0.5, 0.2], "chosen": [True, True, False, False]})
    fig, ax = deploy_sensitivity(table, tolerance=0.05)
    widths = {c.patches[0].get_gid(): [p.get_width() for p in c.patches] for c in ax.containers}
    assert widths == {"drop:bf16": [0.0, 0.5], "drop:fp16": [0.01, 0.2]}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a *", "b"]
    paths = save_figure(fig, tmp_path / "sens", data=table)
    assert all(p.stat().st_size > 0 for p in paths)
