"""The block-format study's analysis (analysis/block_formats.py) on real tiny runs: a static block
format, a per-role plan, an fp32 run that never logs a decision and a best-static search over
{bf16, nvfp4} with the plan it trained."""
import json
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analysis import block_formats as bf  # noqa: E402
from analysis.load import load_decisions, load_runs  # noqa: E402
from tests.cli_inprocess import TINY  # noqa: E402
from tests.test_analysis_style_contract import _check_contract  # noqa: E402

STEPS = 4
ENTRY = "fprop=mxfp8_e4m3,dgrad=bf16,wgrad=bf16"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from tests.cli_inprocess import run_cli

    root = tmp_path_factory.mktemp("study")

    class _Cap:  # run_cli needs only readouterr() from capsys
        def readouterr(self):
            return type("o", (), {"out": "", "err": ""})()

    base = _base()
    runs = {"static": ["controller=nvfp4"],
            "plan": ["controller=plan", "controller.default=nvfp4", f"+controller.patterns={{net.1: '{ENTRY}'}}"],
            "fp32": ["controller=fp32"]}
    for name, args in runs.items():
        code, _, err = run_cli(_Cap(), *base, *args, f"hydra.run.dir={root / name}")
        assert code == 0, err
    return root


def _base():
    return [a for a in TINY if not a.startswith(("trainer.max_steps", "monitor.every"))] + [
        f"trainer.max_steps={STEPS}", "executor=emulated", "monitor.every=2"]


@pytest.fixture(scope="module")
def searched(study):
    """The study's runs and a best-static search over {bf16, nvfp4} beside them (its plans and
    the plan it trained in full)."""
    from adaprec.tools.best_static import find_best_static
    find_best_static([*_base(), "cost.profiles=[bitops]"], study / "best_static", profile="bitops",
                     formats=("bf16", "nvfp4"), search_steps=2, max_plans=1, include_uniform=True)
    return study


def test_low_fraction_counts_each_role_of_each_layer(study):
    runs = load_runs(study)
    low = bf.low_fraction(runs, load_decisions(runs))
    assert set(low["role"]) == set(bf.ROLES)
    by = low.set_index(["policy", "layer", "role"])["fraction"]
    static = low[low["policy"] == "nvfp4"]
    assert len(static) and (static["fraction"] == 1.0).all()  # every role of every layer, every step
    plan = "plan default=nvfp4"
    assert by[(plan, "net.1", "input")] == 1.0 and by[(plan, "net.1", "weight")] == 1.0
    assert by[(plan, "net.1", "dgrad")] == 0.0 and by[(plan, "net.1", "wgrad")] == 0.0
    order = bf.model_order(runs[runs["status"] == "ok"])  # call order, from layers.csv.gz
    assert order and set(order) == set(low["layer"]) and order == sorted(order)  # net.0, net.1, ...: this MLP's call order
    fp32 = low[low["policy"] == "fp32"]  # no decisions.csv rows: the final plan, all fp32
    assert len(fp32) and (fp32["fraction"] == 0.0).all()
    assert set(fp32["layer"]) == set(static["layer"])


def test_history_splits_a_switch_mid_run():
    d = pd.DataFrame({"step": [0, 3], "layer": ["a", "a"], "old": ["fp32", "nvfp4"], "new": ["nvfp4", "bf16"]})
    assert bf._history(d, 10) == {"a": [(0, 3, "nvfp4"), (3, 10, "bf16")]}


def test_quality_table_is_per_workload_and_relative_to_the_reference(study):
    runs = load_runs(study)
    low = bf.low_fraction(runs, load_decisions(runs))
    table = bf.quality_table(runs, low, reference="fp32")
    ref = table[table["policy"] == "fp32"]
    assert len(ref) == 1 and ref["change_vs_fp32"].iloc[0] == 0.0
    assert table.loc[table["policy"] == "nvfp4", "low_share"].iloc[0] == 1.0
    assert {"workload", "n", "quality"} <= set(table.columns)


def test_the_map_follows_the_figure_contract(study):
    runs = load_runs(study)
    low = bf.low_fraction(runs, load_decisions(runs))
    fig, ax = bf.low_fraction_map(low, title="workload: tiny")
    _check_contract(fig, ax)
    assert ax.get_title() == "workload: tiny"
    assert len(ax.get_yticklabels()) == len(set(low["policy"])) * len(bf.ROLES)
    assert "8-bit" in fig.axes[-1].get_ylabel()  # the colour bar says what the colour means
    plt.close(fig)


def test_cli_writes_every_output_and_refuses_an_empty_folder(study, tmp_path):
    out = tmp_path / "report"
    assert bf.main([str(study), "--out", str(out), "--reference", "fp32"]) == 0
    for name in ("low_fraction.csv", "low_fraction.pdf", "low_fraction.png", "quality.md", "stays_high.md"):
        assert (out / name).is_file(), name
    assert "`plan default=nvfp4`: net.1 (dgrad/wgrad)" in (out / "stays_high.md").read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run directories"):  # load_runs names the fix
        bf.main([str(tmp_path / "empty"), "--out", str(tmp_path / "r2")])


def test_a_best_static_run_is_labelled_with_its_formats_and_its_search_is_reported(searched, tmp_path):
    study = searched
    summary = json.loads((study / "best_static" / "best_static.json").read_text())
    trained = summary["trained"][0]
    runs = load_runs(study)
    low = bf.low_fraction(runs, load_decisions(runs))
    formats = ",".join(f for f in ("bf16", "nvfp4") if f in trained["plan"].values())
    label = f"{trained['label']} formats={formats}"  # the cost alone would not say bf16/nvfp4 vs bf16/mxfp8
    table = bf.quality_table(runs, low, reference="fp32")
    assert label in set(table["policy"]) and label in set(low["policy"])
    mine = low[low["policy"] == label].groupby("layer")["fraction"].mean()
    assert mine.to_dict() == {layer: float(fmt == "nvfp4") for layer, fmt in trained["plan"].items()}

    sens = bf.search_sensitivity(study / "best_static" / "best_static.json")
    assert list(sens["layer"]) == summary["layers"] and set(sens["format"]) == {"nvfp4"}
    search = __import__("pandas").read_csv(study / "best_static" / "search.csv")
    ref = summary["reference"]["quality"]
    for row in sens.itertuples():  # the row of the plan with only this layer in nvfp4
        alone = {**summary["reference"]["plan"], row.layer: "nvfp4"}
        q = search.loc[search["plan"].map(json.loads) == alone, "val_accuracy"].iloc[0]
        assert row.quality == q and row.drop == pytest.approx(ref - q)  # accuracy: absolute drop
        assert row.trained == f"{trained['label']}: {trained['plan'][row.layer]}"

    out = tmp_path / "report"
    assert bf.main([str(study), "--out", str(out), "--reference", "fp32"]) == 0
    report = (out / "best_static_search.md").read_text()
    assert report.startswith("## best_static") and f"{summary['plans_measured']} plans measured" in report
    assert all(f"| {layer} |" in report for layer in summary["layers"])
