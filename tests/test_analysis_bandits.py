"""Bandit analyses: regret against the best fixed arm over training (hand-computed example),
arm-pull shares, the IQM table, the figures under the style contract, runs whose
controller.json has no trace, and a real tiny bandit run end to end."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from analysis import bandits  # noqa: E402
from analysis.report import _bandits  # noqa: E402
from tests.test_analysis_style_contract import _check_contract, _legend_entries  # noqa: E402

ARMS = ["fp32", "bf16", "fp16"]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def layer(steps, played, rewards, best, arms=ARMS):
    """A controller.json layer entry as the bandit writes it, from its trace; ``best`` and the
    regret's expected values are the test's own hand computation."""
    rewards = {f: rewards.get(f, [0.0] * len(steps)) for f in arms}
    earned = sum(rewards[f][i] for i, f in enumerate(played))
    pulls = {f: played.count(f) for f in arms}
    return {"arms": arms, "pulls": pulls, "best_fixed_arm": best, "earned": earned,
            "mean_reward": {f: sum(v) / len(steps) for f, v in rewards.items()},
            "regret": sum(rewards[best]) - earned,
            "trace": {"step": steps, "played": played, "rewards": rewards}}


def hand_example():
    """Two layers, windows closed at steps 10, 20, 30; layer b had no evidence at step 20.

    a: fp32 0.5 0.5 0.5 | bf16 0.7 0.2 0.8; played fp32 bf16 bf16 -> best bf16 (1.7 > 1.5),
       per-window regret 0.2, 0, 0
    b: fp32 0.5 0.5     | bf16 0.1 1.0;     played bf16 fp32      -> best bf16 (1.1 > 1.0),
       per-window regret 0, 0.5
    regret(t): 0.2 at 10, 0.2 at 20, 0.7 at 30; mean played reward 0.3, 0.2, 0.65."""
    return {"controller": "bandit", "algorithm": "ucb1", "seed": 0, "windows": 3, "regret": 0.7,
            "layers": {"a": layer([10, 20, 30], ["fp32", "bf16", "bf16"],
                                  {"fp32": [0.5] * 3, "bf16": [0.7, 0.2, 0.8]}, "bf16"),
                       "b": layer([10, 30], ["bf16", "fp32"],
                                  {"fp32": [0.5] * 2, "bf16": [0.1, 1.0]}, "bf16")}}


def untraced(regret, pulls):
    """A controller.json from before the trace: pulls and regret only."""
    return {"controller": "bandit", "algorithm": "thompson", "seed": 0, "windows": sum(pulls.values()),
            "regret": regret, "layers": {"a": {"arms": ARMS, "pulls": pulls, "best_fixed_arm": "fp32",
                                              "earned": 0.0, "regret": regret}}}


def runs_table(tmp_path, summaries, workload="image"):
    """A runs table (the columns the analysis reads) of run dirs holding ``summaries``."""
    rows = []
    for i, (controller, summary) in enumerate(summaries):
        run_dir = tmp_path / str(i)
        run_dir.mkdir()
        if summary is not None:
            (run_dir / "controller.json").write_text(json.dumps(summary))
        rows.append({"run_id": str(i), "workload": workload, "controller": controller, "seed": i,
                     "status": "ok", "run_dir": str(run_dir)})
    return pd.DataFrame(rows)


def test_regret_over_training_matches_the_hand_computation(tmp_path):
    runs = runs_table(tmp_path, [("bandit_ucb", hand_example()), ("fp32", None)])
    summaries = bandits.bandit_summaries(runs)
    assert list(summaries) == ["0"]  # the fp32 run has no controller.json
    curves = bandits.regret_curves(bandits.window_table(runs, summaries))
    assert curves["step"].tolist() == [10, 20, 30]
    np.testing.assert_allclose(curves["regret"], [0.2, 0.2, 0.7], atol=1e-12)
    np.testing.assert_allclose(curves["reward"], [0.3, 0.2, 0.65], atol=1e-12)
    assert curves["regret"].iloc[-1] == pytest.approx(summaries["0"]["regret"])  # ends at the total


def test_pull_shares_sum_to_one_and_count_layer_windows(tmp_path):
    runs = runs_table(tmp_path, [("bandit_ucb", hand_example()),
                                 ("bandit_thompson", untraced(1.0, {"fp32": 1, "bf16": 0, "fp16": 3}))])
    shares = bandits.pull_shares(runs)
    run0 = shares[shares["run_id"] == "0"].set_index("format")
    # a: fp32 1, bf16 2; b: bf16 1, fp32 1 -> 2/5 fp32, 3/5 bf16 of 5 layer-windows
    assert run0.loc["fp32", "pulls"] == 2 and run0.loc["bf16", "share"] == pytest.approx(0.6)
    assert shares.groupby("run_id")["share"].sum().tolist() == pytest.approx([1.0, 1.0])
    table = bandits.bandit_table(runs)
    share_cols = [c for c in table if c.startswith("share_")]
    assert share_cols == ["share_fp32", "share_bf16", "share_fp16"]  # registry order
    np.testing.assert_allclose(table[share_cols].sum(axis=1), 1.0)


def test_table_is_the_iqm_over_seeds_and_keeps_runs_without_a_trace(tmp_path):
    regrets = [0.0, 1.0, 2.0, 10.0]  # IQM 1.5 (the outlier 10 trimmed); the mean would be 3.25
    runs = runs_table(tmp_path, [("bandit_thompson", untraced(r, {"fp32": 2, "bf16": 2, "fp16": 0}))
                                 for r in regrets] + [("bandit_ucb", hand_example())])
    table = bandits.bandit_table(runs).set_index("policy")
    th = table.loc["bandit_thompson"]
    assert th["seeds"] == 4 and th["traced"] == 0 and th["regret"] == pytest.approx(1.5)
    assert th["regret_lo"] <= 1.5 <= th["regret_hi"]
    assert th["regret_per_window"] == pytest.approx(1.5 / 4)
    ucb = table.loc["bandit_ucb"]
    assert ucb["traced"] == 1 and ucb["regret_per_window"] == pytest.approx(0.7 / 3)
    assert bandits.window_table(runs)["run_id"].unique().tolist() == ["4"]  # only the traced run


def test_a_trace_that_misses_pulls_is_not_a_trace(tmp_path):
    summary = hand_example()
    summary["layers"]["a"]["trace"]["step"].pop()  # e.g. resumed from a pre-trace checkpoint
    assert not bandits.has_trace(summary) and bandits.has_trace(hand_example())


def test_one_label_over_several_algorithms_is_split_by_algorithm(tmp_path):
    thompson = {**hand_example(), "algorithm": "thompson"}
    runs = runs_table(tmp_path, [("bandit", hand_example()), ("bandit", thompson)])
    assert sorted(bandits.bandit_table(runs)["policy"]) == ["bandit[thompson]", "bandit[ucb1]"]


def _three_policies(tmp_path):
    second = hand_example()  # a's bf16 no better than fp32 at step 10: no regret there
    second["layers"]["a"] = layer([10, 20, 30], ["fp32", "bf16", "bf16"],
                                  {"fp32": [0.5] * 3, "bf16": [0.5, 0.3, 0.9]}, "bf16")
    return runs_table(tmp_path, [("bandit_ucb", hand_example()), ("bandit_ucb", second),
                                 ("bandit_thompson", hand_example()), ("bandit", second)])


def test_figures_pass_the_style_contract(tmp_path):
    runs = _three_policies(tmp_path)
    table = bandits.bandit_table(runs)
    fig, ax = bandits.pull_share_bars(bandits.share_frame(table), title="workload: image")
    _check_contract(fig, ax)
    assert _legend_entries(ax) == ["fp32", "bf16"]  # fp16 never pulled: not in the legend
    assert "image" in ax.get_title() and "arm pulls" in ax.get_ylabel()
    curves = bandits.regret_curves(bandits.window_table(runs))
    for y, plot, label in (("regret", bandits.regret_plot, "cumulative regret (reward units)"),
                           ("reward", bandits.reward_plot, "mean played reward")):
        curve = bandits.policy_curve(curves, y)
        fig, ax = plot(curve, title="workload: image")
        _check_contract(fig, ax)
        assert ax.get_xlabel() == "training step" and label in ax.get_ylabel()
        assert "image" in ax.get_title()
        lines = [line for line in ax.lines if str(line.get_gid()).startswith("curve:")]
        assert sorted(_legend_entries(ax)) == ["bandit", "bandit_thompson", "bandit_ucb"]
        styles = {(to_hex(line.get_color()), line.get_marker(), str(line.get_linestyle())) for line in lines}
        assert len(styles) == 3 and all(line.get_marker() not in (None, "None", "") for line in lines)
    # the IQM of the two ucb runs at step 20: their regrets 0.2 and 0.0 (no trimming with 2)
    regret = bandits.policy_curve(curves, "regret").set_index(["policy", "step"])
    assert regret.loc[("bandit_ucb", 20), "iqm"] == pytest.approx(0.1)
    assert regret.loc[("bandit_ucb", 20), "n"] == 2


@pytest.mark.slow  # a few seconds: keeps the default suite under 3 minutes
def test_report_section_writes_table_and_figures_and_notes_untraced_runs(tmp_path):
    (tmp_path / "runs_a").mkdir()
    runs = _three_policies(tmp_path / "runs_a")
    out = tmp_path / "wl"
    text = _bandits(runs, "image", out, None, draw=True)
    assert "| bandit_ucb | 2 | 3 |" in text and "| policy | fp32 | bf16 |" in text
    assert "Note:" not in text
    for stem in ("bandit_pulls", "bandit_regret", "bandit_reward"):
        for ext in ("csv", "pdf", "png"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0
    assert len(pd.read_csv(out / "bandits.csv")) == 3 and (out / "bandits.md").read_text() == text
    # only runs from before the trace: table and pull shares, no trace figures, a note
    (tmp_path / "runs_b").mkdir()
    old = runs_table(tmp_path / "runs_b", [("bandit_thompson", untraced(1.0, {"fp32": 3, "bf16": 1, "fp16": 0}))])
    out = tmp_path / "wl_old"
    text = _bandits(old, "image", out, None, draw=True)
    assert "1 bandit run(s) have no complete per-window trace" in text
    assert (out / "bandit_pulls.png").exists() and not (out / "bandit_regret.png").exists()
    assert _bandits(runs_table(tmp_path / "runs_b" / "0", [("fp32", None)]), "image", out, None, True) == ""
    assert _bandits(runs, "image", tmp_path / "lean", None, draw=False).startswith("Bandits:")
    assert not list((tmp_path / "lean").glob("*.png"))


def test_a_real_bandit_run_end_to_end(tmp_path):
    """The trainer's own controller.json: the trace is complete, the regret curve ends at the
    summary's regret, the table holds the run and the shares sum to one."""
    from adaprec.app.train import train
    from analysis.load import load_runs
    from tests.conftest import compose_config
    from tests.runtrees import TINY_MLP

    cfg = compose_config(*TINY_MLP, "controller=bandit_ucb", "controller.interval=2",
                         "controller.min_dwell=1", "trainer.max_steps=8", "trainer.eval_every=4",
                         "monitor.every=1", "trainer.progress=false")
    assert train(cfg, tmp_path / "run", choices={"controller": "bandit_ucb"})["status"] == "ok"
    runs = load_runs(tmp_path)
    summaries = bandits.bandit_summaries(runs)
    summary = next(iter(summaries.values()))
    assert bandits.has_trace(summary) and summary["windows"] == 4
    curves = bandits.regret_curves(bandits.window_table(runs, summaries))
    assert curves["step"].tolist() == [2, 4, 6, 8]
    assert curves["regret"].iloc[-1] == pytest.approx(summary["regret"], abs=1e-9)
    assert ((curves["reward"] >= 0) & (curves["reward"] <= 1)).all()
    table = bandits.bandit_table(runs, summaries)
    assert table["policy"].tolist() == ["bandit_ucb"] and table["seeds"].tolist() == [1]
    assert table.filter(like="share_").sum(axis=1).iloc[0] == pytest.approx(1.0)


def test_sweep_report_adds_the_bandit_section_for_workloads_with_bandit_runs(tmp_path, make_run):
    from analysis.report import sweep_report

    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(sweep / f"fp32_{seed}", controller="fp32", seed=seed)
        run = make_run(sweep / f"ucb_{seed}", controller="bandit_ucb", seed=seed)
        (run / "controller.json").write_text(json.dumps(hand_example()))
    text = sweep_report(sweep, tmp_path / "out", per_run=False, draw=False)
    assert "Bandits: regret against each layer's best fixed arm" in text
    assert "| bandit_ucb | 2 | 3 | 0.700 | [0.700, 0.700] | 0.233 |" in text
    table = pd.read_csv(tmp_path / "out" / "mlp_digits" / "bandits.csv")
    assert table["policy"].tolist() == ["bandit_ucb"] and table["seeds"].tolist() == [2]
    assert not list((tmp_path / "out").rglob("bandit_*.png"))  # tables only
