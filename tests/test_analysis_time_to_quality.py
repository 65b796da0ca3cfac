"""Time to quality on real run trees whose evaluation curves the test chooses."""
import pandas as pd
import pytest

from analysis.load import load_evals, load_runs, load_steps
from analysis.time_to_quality import summarize, targets, time_to_quality


def _sweep(tmp_path, make_run, curves, metric="val_accuracy"):
    """One run per (controller, seed) with ``curves[(controller, seed)]`` as its evals.csv
    (evaluations at steps 0..3) and the last value as its final quality."""
    root = tmp_path / "sweep"
    for i, ((ctrl, seed), curve) in enumerate(curves.items()):
        d = make_run(root / str(i), controller=ctrl, seed=seed, quality=curve[-1], metric=metric)
        pd.DataFrame({"step": range(len(curve)), metric: curve}).to_csv(d / "evals.csv", index=False)
    runs = load_runs(root)
    return runs, load_evals(runs), load_steps(runs)


def test_first_evaluation_meeting_the_target_counts(tmp_path, make_run):
    runs, evals, steps = _sweep(tmp_path, make_run, {
        ("fp32", 0): [0.1, 0.5, 0.9, 1.0], ("fp32", 1): [0.1, 0.6, 0.9, 1.0],
        ("bf16", 0): [0.1, 0.96, 0.97, 0.99],   # 0.95 reached at step 1
        ("fp16", 0): [0.1, 0.2, 0.3, 0.94]})    # never
    tgt = targets(runs, 0.95).set_index("workload")
    assert tgt["target"].iloc[0] == pytest.approx(0.95)
    ttq = time_to_quality(runs, evals, steps, 0.95).set_index("controller")
    assert ttq.loc["bf16", "steps_to_target"] == 1 and ttq.loc["bf16", "reached"]
    assert not ttq.loc["fp16", "reached"] and pd.isna(ttq.loc["fp16", "steps_to_target"])
    assert (ttq.loc["fp32", "steps_to_target"] == 3).all()
    # the run's steps.csv has modeled step costs (the real trainer's cost meter): an fp32 run
    # reaching the target at step 3 has spent 4 fp32 steps
    assert ttq.loc["fp32", "cost_to_target"].tolist() == pytest.approx([4.0, 4.0])
    col = ttq["cost_profile"].iloc[0]
    col = next(c for c in steps if c.startswith(f"cost_{col}_"))
    per_step = steps.groupby("controller")[col].median()
    assert ttq.loc["bf16", "cost_to_target"] == pytest.approx(2 * per_step["bf16"] / per_step["fp32"])
    s = summarize(ttq).set_index("controller")
    assert s.loc["fp16", "reached"] == 0 and s.loc["bf16", "reached"] == 1 and s.loc["fp32", "n"] == 2


def test_lower_is_better_divides_the_target(tmp_path, make_run):
    runs, evals, steps = _sweep(tmp_path, make_run, {
        ("fp32", 0): [9.0, 6.0, 5.0], ("bf16", 0): [9.0, 5.2, 5.3]}, metric="val_perplexity")
    ttq = time_to_quality(runs, evals, steps, 0.95).set_index("controller")
    assert ttq.loc["bf16", "target"] == pytest.approx(5.0 / 0.95)
    assert ttq.loc["bf16", "steps_to_target"] == 1 and ttq.loc["fp32", "steps_to_target"] == 2


def test_fraction_out_of_range_is_refused(tmp_path, make_run):
    runs, _, _ = _sweep(tmp_path, make_run, {("fp32", 0): [0.5, 1.0]})
    with pytest.raises(ValueError, match="fraction"):
        targets(runs, 1.5)
