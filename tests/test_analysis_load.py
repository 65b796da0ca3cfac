"""Loader column contract, against a real tiny sweep and copies of real runs with chosen metrics."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from analysis import load_decisions, load_evals, load_layers, load_runs, load_steps
from tests.runtrees import LAYERS

CONTRACT = ["run_id", "workload", "controller", "model", "dataset", "experiment", "seed", "status",
            "error", "quality_metric", "quality", "higher_is_better", "steps", "skipped_steps",
            "wall_s", "val_loss", "val_accuracy", "plan_changes", "final_plan", "overrides", "run_dir",
            "optimizer", "cfg.trainer.max_steps", "cfg.seed"]


@pytest.fixture(scope="module")
def runs(tiny_sweep):
    return load_runs(tiny_sweep)


def _metrics(sweep):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}


def test_one_row_per_run_with_every_contract_column(runs, tiny_sweep):
    assert len(runs) == len(list(tiny_sweep.glob("*/metrics.json"))) == 5
    missing = [c for c in CONTRACT if c not in runs.columns]
    assert not missing
    assert runs["run_id"].is_unique
    assert any(c.startswith("format_share_") for c in runs.columns)
    ok = runs["status"] == "ok"
    assert (runs.loc[ok, "cfg.trainer.max_steps"] == 6).all()
    # the failed job was refused before it wrote any config (issue 21): no cfg.*, but its row,
    # choices and error are there
    failed = runs[~ok].iloc[0]
    assert failed["controller"] == "fp32" and "dataset.path" in failed["error"]


def test_values_come_from_the_run_files(runs, tiny_sweep):
    for run_id, m in _metrics(tiny_sweep).items():
        row = runs.set_index("run_id").loc[run_id]
        assert row["controller"] == m["choices"]["controller"]
        assert row["dataset"] == m["choices"]["dataset"]
        assert row["seed"] == m["seed"]
        assert row["status"] == m["status"]
        flat = {k for k in m if k not in ("choices", "format_shares", "environment")}
        assert flat <= set(runs.columns)  # every value of metrics.json is a column
        env = {f"environment.{k}" for k, v in m.get("environment", {}).items() if not isinstance(v, (dict, list))}
        assert env <= set(runs.columns)  # its scalar entries are flattened into columns
        if m["status"] == "ok":
            assert row["val_accuracy"] == m["val_accuracy"] == row["quality"]
            assert row["final_plan"] == m["final_plan"]
            for fmt, share in m["format_shares"].items():
                assert row[f"format_share_{fmt}"] == share
    ok = runs[runs["status"] == "ok"]
    assert set(ok["workload"]) == {"mlp/digits"}
    assert (ok["quality_metric"] == "val_accuracy").all() and ok["higher_is_better"].all()
    assert set(ok["controller"]) == {"fp32", "fp16"} and set(ok["seed"]) == {0, 1}
    # a job refused before writing anything has no .hydra/overrides.yaml (issue 21); the others do
    assert ok["overrides"].str.contains("controller=").all()


def test_failed_run_is_listed_with_its_error(runs):
    failed = runs[runs["status"] != "ok"]
    assert len(failed) == 1
    row = failed.iloc[0]
    assert row["status"] == "failed" and row["dataset"] == "mnist"
    assert "nonexistent" in row["error"] and math.isnan(row["quality"])


def test_long_tables_are_keyed_by_run(runs):
    steps, evals = load_steps(runs), load_evals(runs)
    layers, decisions = load_layers(runs), load_decisions(runs)
    ok_ids = set(runs.loc[runs["status"] == "ok", "run_id"])
    for table in (steps, evals, layers):
        assert set(table["run_id"]) == ok_ids
        assert list(table.columns[:4]) == ["run_id", "workload", "controller", "seed"]
    first = runs.iloc[0]
    raw = pd.read_csv(Path(first["run_dir"]) / "steps.csv")
    mine = steps[steps["run_id"] == first["run_id"]].drop(columns=["run_id", "workload", "controller", "seed"])
    pd.testing.assert_frame_equal(mine.reset_index(drop=True), raw)
    assert {"step", "layer", "format", "act_fp16_overflow", "grad_fp16_underflow"} <= set(layers.columns)
    # the fp32 runs' decisions.csv holds only a header: no rows, no crash
    assert set(decisions["controller"]) <= {"fp16"}
    assert {"step", "layer", "old", "new", "reason"} <= set(decisions.columns)


def test_folder_names_are_never_parsed(tmp_path, make_run):
    make_run(tmp_path / "controller=bf16,seed=7", controller="fp32", seed=1)
    runs = load_runs(tmp_path)
    assert runs.loc[0, "controller"] == "fp32" and runs.loc[0, "seed"] == 1


def test_incomplete_and_broken_runs_are_listed_not_fatal(tmp_path, make_run):
    make_run(tmp_path / "a", controller="fp32", seed=0, quality=0.9)
    killed = make_run(tmp_path / "b", controller="bf16", seed=0)
    (killed / "metrics.json").unlink()  # config only: never finished
    running = make_run(tmp_path / "c", controller="bf16", seed=1, status="running")
    broken = make_run(tmp_path / "d", controller="bf16", seed=2)
    (broken / "metrics.json").write_text("{not json")
    make_run(tmp_path / "e", controller="bf16", seed=3, status="diverged", error="loss is nan")
    runs = load_runs(tmp_path).set_index("run_id")
    assert runs.loc["a", "status"] == "ok"
    assert runs.loc["b", "status"] == "incomplete" and "no metrics.json" in runs.loc["b", "error"]
    assert runs.loc["c", "status"] == "incomplete" and "running" in runs.loc["c", "error"]
    assert runs.loc["d", "status"] == "incomplete" and "unreadable" in runs.loc["d", "error"]
    assert runs.loc["e", "status"] == "diverged" and runs.loc["e", "error"] == "loss is nan"
    assert runs.loc["b", "seed"] == 0  # from config_resolved.yaml
    # tables are read wherever the files exist (b and d wrote steps.csv before they broke)
    assert set(load_steps(runs.reset_index())["run_id"]) == {"a", "b", "d"}
    assert pd.isna(runs.loc["d", "workload"])  # nothing readable names its workload


def test_quality_direction_and_experiment_workload(tmp_path, make_run):
    make_run(tmp_path / "lm", controller="bf16", seed=0, metric="val_perplexity", quality=31.0,
              model="gpt", dataset="text", experiment="lm_small")
    make_run(tmp_path / "cls", controller="bf16", seed=0, quality=0.8)
    runs = load_runs(tmp_path).set_index("run_id")
    assert runs.loc["lm", "workload"] == "lm_small" and runs.loc["cls", "workload"] == "mlp/digits"
    assert runs.loc["lm", "quality_metric"] == "val_perplexity" and not runs.loc["lm", "higher_is_better"]
    assert runs.loc["lm", "quality"] == 31.0
    assert runs.loc["cls", "quality_metric"] == "val_accuracy" and runs.loc["cls", "higher_is_better"]


def test_layers_table_reads_gzip(tmp_path, make_run):
    make_run(tmp_path / "r", controller="fp16", seed=0)
    layers = load_layers(tmp_path)
    assert len(layers) == 2 * len(LAYERS)  # steps 0 and 2 sampled, every layer
    assert list(layers["layer"][:3]) == list(LAYERS)


def test_bad_paths_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_runs(tmp_path / "nope")
    with pytest.raises(ValueError, match="no run directories"):
        load_runs(tmp_path)


def test_killed_run_takes_its_choices_from_hydra_files(tmp_path, tiny_sweep):
    import shutil
    run = shutil.copytree(tiny_sweep / "2", tmp_path / "2")
    (run / "metrics.json").unlink()  # as if the job was killed before it wrote its metrics
    row = load_runs(run).iloc[0]  # a run directory itself is a one-run tree
    assert row["run_id"] == "2" and row["status"] == "incomplete"
    assert (row["controller"], row["model"], row["dataset"]) == ("fp16", "mlp", "digits")
    assert row["workload"] == "mlp/digits" and row["seed"] == 0


def test_budget_runs_get_their_own_controller_label(tmp_path):
    import json
    from analysis.load import load_runs
    for name, budget in (("a", None), ("b", 0.6)):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"status": "ok", "seed": 0, "val_accuracy": 0.9,
                                                     "choices": {"controller": "threshold"}}))
        (d / "config_resolved.yaml").write_text(f"seed: 0\ncontroller:\n  cost_budget: {'null' if budget is None else budget}\n")
    runs = load_runs(tmp_path).set_index("run_id")
    assert runs.loc["a", "controller"] == "threshold" and runs.loc["b", "controller"] == "threshold@0.6"


def test_an_emulated_autocast_baseline_is_labelled_so(tmp_path):
    from analysis.load import MixedEnvironmentWarning, load_runs
    for name, how in (("native", "native"), ("emulated", "emulated"), ("mixed", "matmul: native, conv: emulated")):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({
            "status": "ok", "seed": 0, "val_accuracy": 0.9, "choices": {"controller": "autocast"},
            "environment": {"executors": {"fp32": "native", "bf16": how, "fp16": "emulated"}}}))
        (d / "config_resolved.yaml").write_text("seed: 0\ncontroller:\n  dtype: bf16\n")
    with pytest.warns(MixedEnvironmentWarning):  # the three ran in different environments
        labels = load_runs(tmp_path).set_index("run_id")["controller"].to_dict()
    assert labels == {"native": "autocast", "emulated": "autocast (emulated)", "mixed": "autocast (emulated)"}


def test_runs_that_differ_in_emulation_semantics_are_labelled_by_them(tmp_path):
    from analysis.load import load_runs, load_steps

    def write(name, controller, emulation):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"status": "ok", "seed": 0, "val_loss": 1.0,
                                                     "choices": {"controller": controller}}))
        (d / "config_resolved.yaml").write_text(
            "seed: 0\nemulation:\n" + "".join(f"  {k}: {v}\n" for k, v in emulation.items()))
        (d / "steps.csv").write_text("step,loss\n0,1.0\n")

    same = {"gemm_rounding": "boundary", "compiled_rounding": "false"}
    write("a", "mxfp8_e4m3", same)
    write("b", "mxfp8_e4m3", {**same, "compiled_rounding": "true"})  # the same values: one label
    assert set(load_runs(tmp_path)["controller"]) == {"mxfp8_e4m3"}
    write("c", "mxfp8_e4m3", {**same, "gemm_rounding": "operands"})
    runs = load_runs(tmp_path)
    labels = runs.set_index("run_id")["controller"].to_dict()
    assert labels == {"a": "mxfp8_e4m3 (gemm_rounding=boundary)", "b": "mxfp8_e4m3 (gemm_rounding=boundary)",
                      "c": "mxfp8_e4m3 (gemm_rounding=operands)"}
    assert set(load_steps(runs)["controller"]) == set(labels.values())  # the long tables agree
