"""The ``logger`` config group: a CLI run's tracker holds what steps.csv and decisions.csv hold."""
import pandas as pd
import pytest

from adaprec.app.train import train
from adaprec.integrations.trackers.base import decision_text

from .conftest import CONF

TINY = ["model=mlp", "controller=threshold", "controller.start=fp32", "controller.interval=2",
        "controller.patience=1",
        "trainer.max_steps=6", "trainer.batch_size=16", "trainer.eval_every=3", "trainer.eval_batches=1",
        "monitor.every=2", "cost.enabled=false"]


def test_every_logger_config_composes(make_cfg):
    names = sorted(p.stem for p in (CONF / "logger").glob("*.yaml"))
    assert names == ["csv", "mlflow", "tensorboard", "wandb"]
    for name in names:
        assert make_cfg(f"logger={name}").logger is not None
    assert make_cfg().logger._target_ is None  # csv: the run dir's tables only


@pytest.mark.slow  # a whole (tiny) training run
def test_cli_tensorboard_run_matches_steps_and_decisions_csv(make_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(make_cfg("logger=tensorboard", *TINY), tmp_path)
    steps, decisions = pd.read_csv(tmp_path / "steps.csv"), pd.read_csv(tmp_path / "decisions.csv")
    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    ea.Reload()
    for column in ("loss", "loss_scale", "share_bf16", "lr"):
        got = [(e.step, e.value) for e in ea.Scalars(f"train/{column}")]
        assert got == [(int(s), pytest.approx(v, rel=1e-6)) for s, v in zip(steps.step, steps[column])]
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in ea.Tensors("decisions/text_summary")}
    expected = {int(step): "\n".join(decision_text(r) for r in group.to_dict("records"))
                for step, group in decisions.groupby("step")}
    assert texts == expected and any(step > 0 for step in texts)  # the threshold controller switched
    assert ea.Histograms("layer_stats/act_absmax")
    assert ea.Scalars("eval/val_loss") and ea.Scalars("final/val_loss")
    assert "trainer.max_steps: 6" in ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


@pytest.mark.slow  # MLflow's SQLite store migrates its schema first
def test_cli_mlflow_run_matches_steps_csv(make_cfg, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    metrics = train(make_cfg("logger=mlflow", *TINY), tmp_path)
    steps = pd.read_csv(tmp_path / "steps.csv")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("adaprec").experiment_id])
    for column in ("loss", "loss_scale"):
        got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"train/{column}")]
        assert got == [(int(s), pytest.approx(v, rel=1e-12)) for s, v in zip(steps.step, steps[column])]
    assert run.data.params["trainer.max_steps"] == "6"
    assert run.data.metrics["final/val_loss"] == pytest.approx(metrics["val_loss"])
    assert run.info.status == "FINISHED"
