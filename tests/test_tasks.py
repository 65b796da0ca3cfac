"""Tasks: every registered task batches, evaluates and names its quality; a new task is one
registration and trains end to end; the task layer imports no Hydra, OmegaConf or pandas."""
import ast
import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaprec.tasks
from adaprec.app.objective import objective_value
from adaprec.app.train import train
from adaprec.data import DataBundle, load_digits_regression
from adaprec.tasks import (Task, evaluate, get_task, higher_is_better, quality_metrics,
                           register_task, task_names, unregister_task)
from adaprec.tools import deploy

CPU = torch.device("cpu")


def _example(name: str) -> tuple[DataBundle, nn.Module]:
    """A tiny bundle of each built-in task and a model that fits it."""
    g = torch.Generator().manual_seed(0)
    if name == "lm":
        stream = torch.randint(0, 11, (200,), generator=g)
        data = DataBundle("lm", stream, None, stream[:77].clone(), None, vocab_size=11, block_size=8)
        return data, nn.Sequential(nn.Embedding(11, 16), nn.Linear(16, 11))
    x = torch.randn(50, 6, generator=g)
    if name == "classification":
        y = torch.randint(0, 3, (50,), generator=g)
        return DataBundle(name, x, y, x[:23], y[:23], num_classes=3), nn.Linear(6, 3)
    y = torch.randn(50, generator=g)
    return DataBundle(name, x, y, x[:23], y[:23]), nn.Sequential(nn.Linear(6, 1), nn.Flatten(0))


@pytest.mark.parametrize("name", task_names())
def test_every_task_evaluates_to_its_quality(name):
    task = get_task(name)
    assert task.name == name and (task.quality, task.higher_is_better) in quality_metrics()
    data, model = _example(name)
    x, y = task.batch(data, "train", torch.arange(4), CPU)
    loss = task.loss(model(x), y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    q = evaluate(model, None, data, batch_size=5, device=CPU)
    assert set(q) == {"val_loss", task.quality} and all(math.isfinite(v) for v in q.values())
    assert evaluate(model, None, data, batch_size=5, device=CPU, max_batches=1) != q  # fewer batches


def test_evaluate_matches_the_whole_split_computed_at_once():
    data, model = _example("classification")
    logits = model(data.val_x)
    q = evaluate(model, None, data, batch_size=5, device=CPU)  # 23 examples: a ragged last batch
    torch.testing.assert_close(q["val_loss"], F.cross_entropy(logits, data.val_y).item(), rtol=1e-6, atol=0)
    assert q["val_accuracy"] == (logits.argmax(-1) == data.val_y).double().mean().item()

    data, model = _example("regression")
    q = evaluate(model, None, data, batch_size=5, device=CPU)
    mse = F.mse_loss(model(data.val_x), data.val_y).item()
    torch.testing.assert_close(q["val_loss"], mse, rtol=1e-6, atol=0)
    assert q["val_rmse"] == math.sqrt(q["val_loss"])

    data, model = _example("lm")  # 77 tokens, block 8: 9 non-overlapping windows predict 72 tokens
    windows = torch.arange(9) * 8
    x, y = data.get_lm_batch("val", windows)
    ce = F.cross_entropy(model(x).reshape(-1, 11), y.reshape(-1)).item()
    q = evaluate(model, None, data, batch_size=4, device=CPU)
    torch.testing.assert_close(q["val_loss"], ce, rtol=1e-6, atol=0)
    assert q["val_perplexity"] == math.exp(q["val_loss"])


def test_lm_evaluation_sample_spreads_over_the_whole_split():
    data, model = _example("lm")  # 9 non-overlapping validation windows
    task = get_task("lm")
    assert torch.equal(torch.cat(task.eval_indices(data, 4, 0)), torch.arange(9) * 8)  # all of them
    sample = torch.cat(task.eval_indices(data, 2, 2))  # 4 of 9 windows: first, last, two between
    assert torch.equal(sample, torch.tensor([0, 2, 5, 8]) * 8)
    x, y = data.get_lm_batch("val", sample)
    ce = F.cross_entropy(model(x).reshape(-1, 11), y.reshape(-1)).item()
    q = evaluate(model, None, data, batch_size=2, device=CPU, max_batches=2)
    torch.testing.assert_close(q["val_loss"], ce, rtol=1e-6, atol=0)


def test_quality_directions_in_one_place():
    assert quality_metrics() == (("val_accuracy", True), ("val_perplexity", False),
                                 ("val_rmse", False), ("val_loss", False))
    assert higher_is_better("val_accuracy")
    assert not any(map(higher_is_better, ("val_perplexity", "val_rmse", "val_loss", "rel_cost_h100")))
    assert deploy.evaluate is evaluate  # deploy evaluates as the loop does, not via the loop


def test_unknown_or_clashing_task_names_fail_clearly():
    with pytest.raises(ValueError, match=r"task must be one of \('classification', 'lm', 'regression'"):
        get_task("segmentation")

    class Impostor(Task):
        name, quality, higher_is_better = "classification", "val_f1", True

    with pytest.raises(ValueError, match="already registered by Classification"):
        register_task(Impostor)
    assert get_task("classification").quality == "val_accuracy"


# --- a new task, defined here: one class, one register_task call --------------------------------

class MeanAbsoluteError(Task):
    """Regression scored by mean absolute error (lower is better)."""
    name, quality, higher_is_better = "mae_regression", "val_mae", False

    def loss(self, output, y):
        return F.l1_loss(output.float().reshape(y.shape), y.float())

    def metrics(self, val_loss, sums, count):
        return {"val_mae": val_loss}


def mae_digits(**kwargs) -> DataBundle:
    """The digits regression data, labelled as the new task (a Hydra ``_target_``)."""
    return dataclasses.replace(load_digits_regression(**kwargs), task="mae_regression")


@pytest.fixture
def mae_task():
    register_task(MeanAbsoluteError)
    yield get_task("mae_regression")
    unregister_task("mae_regression")


def test_a_new_task_registers_in_one_call_and_trains(mae_task, make_cfg, tmp_path):
    assert "mae_regression" in task_names() and ("val_mae", False) in quality_metrics()
    cfg = make_cfg("experiment=mixed_needs", "controller=fp32", "trainer.max_steps=3",
                   "trainer.batch_size=16", "trainer.eval_every=2", "monitor.every=0",
                   "cost.enabled=false")
    cfg.dataset._target_ = f"{__name__}.mae_digits"
    cfg.dataset.task = "mae_regression"
    metrics = train(cfg, tmp_path)
    assert metrics["status"] == "ok" and metrics["val_mae"] == metrics["val_loss"] > 0
    assert "val_rmse" not in metrics
    evals = (tmp_path / "evals.csv").read_text().splitlines()
    assert evals[0] == "step,val_loss,val_mae" and len(evals) == 3  # steps 2 and 3
    assert json.loads((tmp_path / "metrics.json").read_text())["val_mae"] == metrics["val_mae"]
    # the tuning objective, deploy and the analysis read its quality and direction from the task
    assert objective_value(metrics, "val_mae", "format_shares.fp32", budget=1.0) == metrics["val_mae"]
    assert deploy.primary_metric(metrics) == ("val_mae", False)
    from analysis.load import load_runs
    run = load_runs(tmp_path).iloc[0]
    assert (run.quality_metric, run.quality, run.higher_is_better) == ("val_mae", metrics["val_mae"], False)


def test_the_task_layer_imports_only_torch_the_stdlib_and_itself():
    # so no hydra, omegaconf or pandas, and nothing from a floor above (the app, tools, analysis)
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in Path(adaprec.tasks.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        foreign = [m for m in names if m.split(".")[0] not in stdlib | {"torch"}
                   and not m.startswith("adaprec.tasks")]
        assert foreign == [], path
