"""Seed aggregates, confidence intervals, Welch's test and Pareto fronts against hand computation."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import aggregate, cost_columns, load_runs, pareto_front, pareto_mask, t_interval, welch_tests
T975 = {1: 12.706204736174707, 2: 4.302652729749464, 3: 3.182446305284263}  # t_{0.975, df}


def test_t_interval_by_hand():
    mean, std, half = t_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    assert half == pytest.approx(T975[3] * math.sqrt(5 / 3) / 2, rel=1e-9)
    assert t_interval([3.0, float("nan")])[0] == 3.0 and math.isnan(t_interval([3.0])[2])
    assert all(math.isnan(v) for v in t_interval([]))


def test_aggregate_of_the_tiny_sweep_by_hand(tiny_sweep):
    runs = load_runs(tiny_sweep)
    acc = {}
    for p in tiny_sweep.glob("*/metrics.json"):
        m = json.loads(p.read_text())
        if m["status"] == "ok":
            acc.setdefault(m["choices"]["controller"], []).append(m["val_accuracy"])
    agg = aggregate(runs).set_index(["workload", "controller"])
    for ctrl, (a, b) in acc.items():
        row = agg.loc[("mlp/digits", ctrl)]
        assert row["n"] == 2 and row["n_runs"] == 2
        assert row["quality_mean"] == pytest.approx((a + b) / 2, rel=1e-12)
        assert row["quality_std"] == pytest.approx(abs(a - b) / math.sqrt(2), rel=1e-12)
        # n = 2: half width = t_{0.975,1} * (|a-b|/sqrt 2) / sqrt 2
        assert row["quality_ci95"] == pytest.approx(T975[1] * abs(a - b) / 2, rel=1e-9)
        assert row["quality_lo"] == pytest.approx(row["quality_mean"] - row["quality_ci95"])
    failed = agg.loc[("mlp/mnist", "fp32")]
    assert failed["n"] == 0 and failed["n_runs"] == 1 and math.isnan(failed["quality_mean"])


def test_failed_runs_stay_out_of_aggregates(tmp_path, make_run):
    for seed, q in enumerate([0.8, 0.9, 0.7]):
        make_run(tmp_path / f"a{seed}", controller="fp32", seed=seed, quality=q)
    make_run(tmp_path / "bad", controller="fp32", seed=3, status="diverged", error="nan loss",
              extra={"val_accuracy": 0.0})
    row = aggregate(load_runs(tmp_path)).iloc[0]
    assert row["n"] == 3 and row["n_runs"] == 4
    assert row["quality_mean"] == pytest.approx(0.8)
    assert row["quality_ci95"] == pytest.approx(T975[2] * 0.1 / math.sqrt(3), rel=1e-9)


def test_welch_against_the_formula(tmp_path, make_run):
    base, other = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0]
    for i, (qb, qo) in enumerate(zip(base, other)):
        make_run(tmp_path / f"b{i}", controller="fp32", seed=i, quality=qb)
        make_run(tmp_path / f"o{i}", controller="bf16", seed=i, quality=qo)
    make_run(tmp_path / "single", controller="fp16", seed=0, quality=5.0)
    tests = welch_tests(load_runs(tmp_path)).set_index("controller")
    vb, vo = np.var(base, ddof=1) / 4, np.var(other, ddof=1) / 4
    t = (np.mean(other) - np.mean(base)) / math.sqrt(vb + vo)
    df = (vb + vo) ** 2 / (vb ** 2 / 3 + vo ** 2 / 3)
    assert tests.loc["bf16", "t"] == pytest.approx(t, rel=1e-9)
    assert tests.loc["bf16", "p"] == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-9)
    assert tests.loc["bf16", "diff"] == pytest.approx(5.25 - 2.5)
    assert "fp32" not in tests.index
    assert tests.loc["fp16", "n"] == 1 and math.isnan(tests.loc["fp16", "p"])  # one seed: no test


def test_pareto_mask_on_a_hand_made_table():
    #            A    B    C     D    E    F(=B)  G(nan)
    quality = [0.90, 0.80, 0.85, 0.70, 0.90, 0.80, float("nan")]
    cost = [1.00, 0.50, 0.80, 0.90, 1.20, 0.50, 0.10]
    # D is dominated by B and C, E by A (same quality, more cost); B and F tie: both stay.
    assert pareto_mask(quality, cost).tolist() == [True, True, True, False, False, True, False]
    # lower is better (perplexity): now the cheapest-and-lowest points win
    ppl = [30.0, 35.0, 31.0, 29.0]
    cst = [1.0, 0.5, 0.9, 2.0]
    assert pareto_mask(ppl, cst, higher_is_better=False).tolist() == [True, True, True, True]
    assert pareto_mask([30.0, 35.0], [1.0, 1.0], higher_is_better=False).tolist() == [True, False]
    with pytest.raises(ValueError, match="differ in length"):
        pareto_mask([1.0], [1.0, 2.0])


def test_pareto_front_per_workload_and_profile(tmp_path, make_run):
    specs = [("fp32", 0.90, {"a100": 1.0, "cpu": 1.0}), ("bf16", 0.89, {"a100": 0.5, "cpu": 1.1}),
             ("fp16", 0.80, {"a100": 0.6, "cpu": 0.9})]
    for ctrl, q, costs in specs:
        make_run(tmp_path / ctrl, controller=ctrl, seed=0, quality=q, costs=costs)
    runs = load_runs(tmp_path)
    costs, fallback = cost_columns(runs)
    assert costs == ["rel_cost_a100", "rel_cost_cpu"] and not fallback
    front = pareto_front(aggregate(runs), costs).set_index(["cost", "controller"])["on_front"]
    assert front["rel_cost_a100"].to_dict() == {"bf16": True, "fp16": False, "fp32": True}
    assert front["rel_cost_cpu"].to_dict() == {"bf16": False, "fp16": True, "fp32": True}


def test_cost_falls_back_to_wall_time(tiny_sweep):
    runs = load_runs(tiny_sweep)
    assert cost_columns(runs) == (["wall_s"], True)
    with pytest.raises(ValueError, match="wall_s"):
        cost_columns(pd.DataFrame({"status": ["ok"], "quality": [1.0]}))
