"""Robust aggregates (IQM, bootstrap intervals, probability of improvement, CI-aware Pareto)
against direct computations and scipy."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.robust import (bootstrap_ci, interval_pareto_mask, iqm, probability_of_improvement,
                             stratified_bootstrap_ci)
from analysis.stats import improvement_probabilities, is_static_policy, pareto_mask


def test_iqm_is_the_mean_of_the_middle_half():
    x = [1.0, 2.0, 3.0, 4.0, 100.0, 5.0, 6.0, 7.0]
    assert iqm(x) == pytest.approx(np.mean(sorted(x)[2:6]))
    assert iqm([1.0, 2.0, 3.0]) == pytest.approx(2.0)  # fewer than 4 values: nothing trimmed
    assert np.isnan(iqm([np.nan]))


def test_bootstrap_ci_matches_scipy_and_is_reproducible():
    x = np.array([0.90, 0.91, 0.93, 0.89, 0.95])
    lo, hi = bootstrap_ci(x)
    ref = sps.bootstrap((x,), lambda s, axis=-1: sps.trim_mean(s, 0.25, axis=axis), n_resamples=2000,
                        method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    assert lo <= iqm(x) <= hi and bootstrap_ci(x) == (lo, hi)
    assert all(np.isnan(v) for v in bootstrap_ci([1.0]))
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_stratified_bootstrap_keeps_each_stratum_size():
    lo, hi = stratified_bootstrap_ci({"a": [0.0, 0.0, 0.0], "b": [1.0, 1.0, 1.0]},
                                     statistic=np.mean, n_resamples=200)
    assert lo == hi == pytest.approx(0.5)  # each resample keeps three of each stratum


def test_probability_of_improvement_counts_pairs_and_ties():
    assert probability_of_improvement([2, 3], [1, 2]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert probability_of_improvement([2, 3], [1, 2], higher_is_better=False) == pytest.approx(0.5 / 4)
    u = sps.mannwhitneyu([0.3, 0.5, 0.7], [0.4, 0.6], alternative="two-sided").statistic
    assert probability_of_improvement([0.3, 0.5, 0.7], [0.4, 0.6]) == pytest.approx(u / 6)


def test_interval_front_equals_the_mean_front_without_intervals_and_keeps_overlaps():
    q = np.array([0.9, 0.89, 0.8, 0.85])
    c = np.array([1.0, 0.5, 0.6, 0.55])
    nan = np.full(4, np.nan)
    assert interval_pareto_mask(nan, q, nan, nan, c, nan).tolist() == pareto_mask(q, c).tolist()
    # ±0.04: 0.8 at cost 0.6 is beaten by 0.89 at 0.5 even in the worst case (0.85 >= 0.84);
    # 0.85 at 0.55 is beaten on the means, but not beyond the intervals (0.85 < 0.89): kept
    m = interval_pareto_mask(q - 0.04, q, q + 0.04, c, c, c)
    assert m.tolist() == [True, True, False, True]


def test_improvement_probabilities_against_fp32_and_the_best_static_plan():
    rows = []
    for ctrl, qs in {"fp32": [0.90, 0.91], "bf16": [0.92, 0.93], "threshold": [0.95, 0.96]}.items():
        rows += [{"workload": "w", "controller": ctrl, "status": "ok", "quality": q,
                  "higher_is_better": True} for q in qs]
    poi = improvement_probabilities(pd.DataFrame(rows)).set_index("controller")
    assert poi.loc["threshold", "poi_baseline"] == 1.0 and poi.loc["threshold", "best_static"] == "bf16"
    assert poi.loc["threshold", "poi_best_static"] == 1.0
    assert poi.loc["bf16", "best_static"] == "fp32" and poi.loc["bf16", "poi_best_static"] == 1.0
    assert is_static_policy("fp16") and is_static_policy("plan") and not is_static_policy("bandit_ucb")
