"""Trackers from Python: what a run logs reaches TensorBoard, MLflow and W&B and reads back equal."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision
from adaprec.controllers import Static
from adaprec.integrations.trackers import Tracker, layer_rows, step_row
from adaprec.integrations.trackers.base import FORMAT_CODES, decision_text

from .wandb_records import config, history

STEPS, EVERY = 4, 2
CONFIG = {"trainer": {"max_steps": STEPS, "batch_size": 16}, "controller": {"format": "fp16"}}


def run(tracker: Tracker) -> dict[str, list[dict]]:
    """A short fp16 run with a manual plan switch at step 2, logged to ``tracker``; returns the
    rows it was sent (the tables of a run directory)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    ap = AdaptivePrecision(model, controller=Static("fp16"), executor="emulated", monitor_every=EVERY)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    sent = {"steps": [], "layers": [], "decisions": ap.pop_decisions()}
    tracker.log_config(CONFIG)
    tracker.log_rows("decisions", sent["decisions"])
    for step in range(STEPS):
        if step == 2:
            ap.set_plan({"0": "bf16", "2": "fp16"}, reason="manual switch for the test")
        opt.zero_grad()
        with ap.autocast():
            loss = F.cross_entropy(model(x), y)
        ap.backward(loss)
        record = ap.step(opt)
        decisions = ap.pop_decisions()
        tracker.log_record(record, decisions)
        sent["steps"].append(step_row(record))
        sent["layers"] += layer_rows(record)
        sent["decisions"] += decisions
    tracker.log_metrics({"status": "ok", "steps": STEPS, "val_loss": 0.25})
    tracker.close()
    return sent


def decision_steps(sent):
    return {d["step"] for d in sent["decisions"]}


def decision_lines(sent, step):
    return [decision_text(d) for d in sent["decisions"] if d["step"] == step]


def test_tensorboard_scalars_histograms_and_decision_texts_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from adaprec.integrations.trackers import TensorBoardTracker

    sent = run(TensorBoardTracker(tmp_path / "tb"))
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    ea.Reload()
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731  (event files hold fp32)
    for column in ("loss", "loss_scale", "share_fp16", "share_bf16"):
        assert [(e.step, e.value) for e in ea.Scalars(f"train/{column}")] == \
               [(r["step"], f32(r[column])) for r in sent["steps"]]
    for row in sent["layers"]:
        got = {e.step: e.value for e in ea.Scalars(f"layers/{row['layer']}/act_absmax")}
        assert got[row["step"]] == f32(row["act_absmax"])
        formats = {e.step: e.value for e in ea.Scalars(f"layers/{row['layer']}/format")}
        assert formats[row["step"]] == FORMAT_CODES[row["format"]]
    hist = ea.Histograms("layer_stats/act_absmax")
    assert [h.step for h in hist] == list(range(0, STEPS, EVERY))
    assert all(h.histogram_value.num == 2 for h in hist)  # two layers
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in ea.Tensors("decisions/text_summary")}
    assert set(texts) == decision_steps(sent) and 2 in texts
    for step, text in texts.items():
        assert text.split("\n") == decision_lines(sent, step)
    assert "manual switch for the test" in texts[2]
    assert "trainer.max_steps: 4" in ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert ea.Scalars("final/val_loss")[0].value == 0.25


@pytest.mark.slow  # MLflow's SQLite store migrates its schema first (~30 s on 2 busy cores)
def test_mlflow_metrics_params_and_decisions_read_back_from_a_local_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from adaprec.integrations.trackers import MLflowTracker

    sent = run(MLflowTracker(run_dir=tmp_path, run_name="t"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("adaprec").experiment_id])
    run_id = found.info.run_id
    assert found.info.status == "FINISHED"
    for column in ("loss", "loss_scale", "share_fp16"):
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, f"train/{column}")] == \
               [(r["step"], r[column]) for r in sent["steps"]]
    for row in sent["layers"]:
        got = {m.step: m.value for m in client.get_metric_history(run_id, f"layers/{row['layer']}/grad_absmax")}
        assert got[row["step"]] == row["grad_absmax"]
    assert found.data.params["trainer.max_steps"] == "4"
    assert json.loads(found.data.params["adaprec.format_codes"]) == FORMAT_CODES
    assert found.data.metrics["final/val_loss"] == 0.25
    for step in decision_steps(sent):
        text = (tmp_path / "mlartifacts").glob(f"*/artifacts/decisions/step_{step:06d}.txt")
        assert next(text).read_text().split("\n") == decision_lines(sent, step)


@pytest.mark.slow  # a few seconds: keeps the default suite under 3 minutes
def test_mlflow_tracker_writes_the_legacy_file_store_when_asked(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from adaprec.integrations.trackers import MLflowTracker

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it behind an opt-in
    uri = (tmp_path / "mlruns").as_uri()
    sent = run(MLflowTracker(tracking_uri=uri))
    client = MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("adaprec").experiment_id])
    assert [m.value for m in client.get_metric_history(found.info.run_id, "train/loss")] == \
           [r["loss"] for r in sent["steps"]]


@pytest.mark.slow  # starts wandb's service process
def test_wandb_offline_history_histograms_and_decision_tables(tmp_path):
    pytest.importorskip("wandb")
    from adaprec.integrations.trackers import WandbTracker

    sent = run(WandbTracker(dir=tmp_path, project="adaprec-test"))
    rows = history(tmp_path)
    losses = {r["_step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert losses == {r["step"]: r["loss"] for r in sent["steps"]}
    hist_steps = sorted(r["_step"] for r in rows if "layer_stats/act_absmax" in r)
    assert hist_steps == list(range(0, STEPS, EVERY))
    assert all(r["layer_stats/act_absmax"]["_type"] == "histogram" for r in rows if "layer_stats/act_absmax" in r)
    assert all(r["decisions"]["_type"] == "table-file" for r in rows if "decisions" in r)
    logged = sorted(r["_step"] for r in rows if "decisions" in r)
    assert logged == sorted(decision_steps(sent)) and 2 in logged
    assert config(tmp_path)["trainer.max_steps"] == 4
    assert [r["final/val_loss"] for r in rows if "final/val_loss" in r] == [0.25]
