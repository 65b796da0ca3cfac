"""Ablation tables and figures over a config key, on real run trees."""
import pandas as pd
import pytest
import yaml

from analysis.ablation import ablation_plot, ablation_table
from analysis.load import load_runs
from analysis.report import main


def _ablation_sweep(tmp_path, make_run):
    """threshold and bandit_ucb at monitor.every 1, 10, 100 (3 seeds each); quality rises with
    the interval for threshold only."""
    root, i = tmp_path / "sweep", 0
    for ctrl in ("threshold", "bandit_ucb"):
        for every in (1, 10, 100):
            for seed in range(3):
                q = 0.5 + (0.1 * len(str(every)) if ctrl == "threshold" else 0.0) + 0.01 * seed
                d = make_run(root / str(i), controller=ctrl, seed=seed, quality=q, costs={"h100": 0.6})
                cfg_path = d / "config_resolved.yaml"
                cfg = yaml.safe_load(cfg_path.read_text())
                cfg["monitor"]["every"] = every
                cfg_path.write_text(yaml.safe_dump(cfg))
                i += 1
    return root


def test_table_groups_by_value_with_bootstrap_intervals(tmp_path, make_run):
    runs = load_runs(_ablation_sweep(tmp_path, make_run))
    table = ablation_table(runs, "monitor.every")
    assert len(table) == 6 and (table["n"] == 3).all()
    th = table[table["controller"] == "threshold"].set_index("value")
    assert list(th.index) == [1.0, 10.0, 100.0]
    assert th.loc[100.0, "quality"] == pytest.approx(0.81) and th.loc[1.0, "quality"] == pytest.approx(0.61)
    assert (table["lo"] <= table["quality"]).all() and (table["quality"] <= table["hi"]).all()
    assert table["cost"].to_numpy() == pytest.approx([0.6] * 6) and table["cost_column"].eq("rel_cost_h100").all()
    fig, ax = ablation_plot(table)
    assert ax.get_xscale() == "log"  # 1..100 spans two decades
    labels = ax.get_legend_handles_labels()[1]
    assert sorted(labels) == ["bandit_ucb", "threshold"]
    assert "monitor.every" in ax.get_xlabel() and "ablation" in ax.get_title()


def test_unknown_key_names_the_fix(tmp_path, make_run):
    runs = load_runs(_ablation_sweep(tmp_path, make_run))
    with pytest.raises(ValueError, match="no run has config key 'monitor.evry'"):
        ablation_table(runs, "monitor.evry")


@pytest.mark.slow
def test_report_cli_writes_the_ablation(tmp_path, make_run, capsys):
    root = _ablation_sweep(tmp_path, make_run)
    out = tmp_path / "rep"
    assert main([str(root), "--out", str(out), "--ablation", "monitor.every", "--no-per-run"]) == 0
    text = capsys.readouterr().out
    assert "Ablation of `monitor.every`" in text and "| threshold | 100 | 3 |" in text
    wl = next(p for p in out.iterdir() if p.is_dir())
    for ext in ("csv", "pdf", "png"):
        assert (wl / f"ablation_monitor_every.{ext}").stat().st_size > 0
    assert len(pd.read_csv(wl / "ablation_monitor_every.csv")) == 6


def test_cost_column_defaults_to_the_profile_the_controllers_priced_on():
    from analysis.ablation import _priced_on
    runs = pd.DataFrame({"rel_cost_a100": [1.1], "rel_cost_bitops": [0.4], "rel_cost_h100": [1.2],
                         "cfg.cost.profiles": ["['bitops', 'h100', 'a100']"]})
    assert _priced_on(runs) == "rel_cost_bitops"
    assert _priced_on(runs.drop(columns="cfg.cost.profiles")) == "rel_cost_a100"  # first by name
    assert _priced_on(runs.assign(**{"cfg.cost.profiles": ["['b200']"]})) == "rel_cost_a100"  # not reported
