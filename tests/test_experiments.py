"""The five workloads, the regression task, loss-scaling off, and the sweeps under each launcher."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaprec.data import DataBundle
from adaprec.numerics.formats import FP16
from adaprec.app.instantiate import instantiate
from adaprec.precision import AdaptivePrecision
from adaprec.numerics.scaler import LossScaler
from adaprec.controllers import Static
from adaprec.app.train import train
from adaprec.tasks import get_task

from .conftest import CONF

ROOT = CONF.parent
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SWEEP_AXES = ("experiment", "controller", "seed")


def _sweep_params(name: str) -> dict[str, list[str]]:
    from omegaconf import OmegaConf
    params = OmegaConf.load(CONF / "sweep" / f"{name}.yaml").hydra.sweeper.params
    return {k: [v.strip() for v in str(params[k]).split(",")] for k in SWEEP_AXES}


def test_the_five_workloads_exist():
    assert EXPERIMENTS == ["image", "language", "mixed_needs", "time_varying", "underflow"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_its_model_takes_its_data(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    data, model = instantiate(cfg.dataset), instantiate(cfg.model)
    task = get_task(data.task)
    x, y = task.batch(data, "train", torch.arange(2), torch.device("cpu"))
    loss = task.loss(model(x), y)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_mixed_needs_data_needs_range_in_inp_and_mantissa_in_head(make_cfg):
    cfg = make_cfg("experiment=mixed_needs")
    data = instantiate(cfg.dataset)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    # inputs in raw units leave fp16's range; after inp and its LayerNorm they are O(1)
    x = data.train_x
    assert (x[x > 0] > FP16.max).float().mean() > 0.2
    assert model.norm(model.inp(x)).abs().max() < 100
    # rounding the targets alone: bf16 leaves an RMSE floor above 1, fp16 one below 0.2
    y = data.val_y
    rmse = lambda dt: (y - y.to(dt).float()).pow(2).mean().sqrt().item()  # noqa: E731
    assert rmse(torch.bfloat16) > 1.0 > 0.2 > rmse(torch.float16)
    assert model.head.bias.item() == cfg.dataset.target_offset


def test_underflow_gradients_lie_below_fp16_subnormals(make_cfg):
    cfg = make_cfg("experiment=underflow")
    data = instantiate(cfg.dataset)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    x, y = data.get_batch("train", torch.arange(64))
    get_task("regression").loss(model(x), y).backward()
    g = model.hidden[0].weight.grad.abs()
    # below half the smallest fp16 subnormal, a value rounds to zero
    assert (g < FP16.smallest_subnormal / 2).float().mean() > 0.9
    assert not cfg.scaler.enabled


def test_regression_bundle_checks_its_targets():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="regression train_y must be a float tensor"):
        DataBundle("regression", x, torch.zeros(4, dtype=torch.long), x, torch.zeros(4))
    b = DataBundle("regression", x, torch.zeros(4, 2), x, torch.zeros(4, 2))
    assert b.num_train_examples == 4 and b.input_shape == (3,)
    assert b.get_batch("val", torch.tensor([1, 3]))[1].shape == (2, 2)


@pytest.mark.slow  # a few seconds: keeps the default suite under 3 minutes
def test_regression_run_reports_rmse(make_cfg, tmp_path):
    cfg = make_cfg("experiment=mixed_needs", "controller=fp32", "trainer.max_steps=3",
                   "trainer.batch_size=16", "monitor.every=1")
    metrics = train(cfg, tmp_path)
    assert metrics["status"] == "ok"
    assert metrics["val_rmse"] == pytest.approx(metrics["val_loss"] ** 0.5)
    assert "val_accuracy" not in metrics


def test_disabled_scaler_stays_inactive_with_fp16_layers():
    assert LossScaler(enabled=False).applied_scale == 1.0
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    on = AdaptivePrecision(model, controller=Static("fp16"), monitor_every=0)
    off = AdaptivePrecision(model, controller=Static("fp16"), monitor_every=0,
                            scaler={"enabled": False})
    assert on.scaler.active and on.scaler.applied_scale == 2.0**16
    assert not off.scaler.active and off.scaler.applied_scale == 1.0
    off.remove()
    on.remove()


def test_smoke_is_the_headline_grid_with_one_seed():
    smoke, headline = _sweep_params("smoke"), _sweep_params("headline")
    assert smoke["experiment"] == headline["experiment"] == EXPERIMENTS
    assert set(smoke["controller"]) <= set(headline["controller"]) and smoke["seed"] == ["0"]
    assert headline["seed"] == ["0", "1", "2", "3", "4"] and len(headline["controller"]) == 9


def _run_sweep(tmp_path: Path, *overrides: str) -> list[dict]:
    cmd = [sys.executable, "-m", "adaprec.run", "-m", "sweep=smoke",
           f"hydra.sweep.dir={tmp_path}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/metrics.json"))]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_smoke_sweep_writes_every_job(tmp_path, launcher):
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    runs = _run_sweep(tmp_path, *extra)
    grid = _sweep_params("smoke")
    assert sorted((m["choices"]["experiment"], m["choices"]["controller"]) for m in runs) == \
        sorted((e, c) for e in grid["experiment"] for c in grid["controller"])
    assert all(m["status"] == "ok" and m["error"] is None for m in runs)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path, launcher):
    pytest.importorskip({"joblib": "hydra_plugins.hydra_joblib_launcher",
                         "submitit_local": "hydra_plugins.hydra_submitit_launcher"}[launcher])
    runs = _run_sweep(tmp_path, "experiment=mixed_needs", "controller=fp32",
                      "dataset.input_scale=4000,-1", f"hydra/launcher={launcher}")
    by_scale = {json.loads((tmp_path / str(i) / "metrics.json").read_text())["status"]: i
                for i in range(2)}
    assert len(runs) == 2 and by_scale == {"ok": 0, "failed": 1}
    failed = runs[1]
    assert failed["error"].startswith("ValueError") and "input_scale must be > 0" in failed["error"]


def test_monitor_survives_a_loss_scale_collapsed_to_zero():
    # mixed_needs under static fp16 overflows every step until the scale halves to 0.0
    from adaprec.numerics.stats import probe
    p = probe(torch.zeros(8), scale=0.0, prescaled=0.0)
    assert p.absmax.item() == 0.0


def test_objective_is_quality_within_budget_and_penalized_beyond():
    import math

    from adaprec.app.objective import objective_value
    m = {"status": "ok", "val_rmse": 0.4, "val_accuracy": 0.9, "rel_cost_h100": 0.75,
         "format_shares": {"bf16": 0.75, "fp32": 0.25}}
    assert objective_value(m, "val_rmse", "rel_cost_h100", budget=0.8) == 0.4
    assert objective_value(m, "val_rmse", "rel_cost_h100", budget=0.5, penalty=10) == \
        pytest.approx(0.4 + 10 * 0.25 / 0.5)
    assert objective_value(m, "val_accuracy", "format_shares.fp32", budget=0.5) == pytest.approx(0.1)
    assert objective_value(m, "val_rmse", "format_shares.fp16", budget=0.5) == 0.4  # absent: 0
    assert math.isnan(objective_value({"status": "diverged"}, "val_rmse", "rel_cost_h100", 0.5))
    with pytest.raises(KeyError, match="metrics.json has no 'rel_cost_a100'"):
        objective_value(m, "val_rmse", "rel_cost_a100", budget=0.5)


@pytest.mark.parametrize("name", [  # the static formats compose alike, and the two bandits: slow suite
    n if n not in ("fp32", "bf16", "fp16", "autocast", "muppet", "bandit_thompson")
    else pytest.param(n, marks=pytest.mark.slow)
    for n in _sweep_params("headline")["controller"]])
def test_every_headline_policy_composes_on_every_workload(make_cfg, name):
    for experiment in EXPERIMENTS:
        controller = instantiate(make_cfg(f"experiment={experiment}", f"controller={name}").controller)
        assert hasattr(controller, "decide")


def test_the_two_bandit_points_differ_only_in_algorithm(make_cfg):
    ucb, ts = (make_cfg(f"controller={c}").controller for c in ("bandit_ucb", "bandit_thompson"))
    differ = {k for k in ucb if ucb[k] != ts[k]}
    assert differ == {"algorithm"}


@pytest.mark.parametrize("name", ["tune_threshold", "tune_bandit"])
def test_tuning_sweeps_compose(make_cfg, name):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = make_cfg(f"sweep={name}")
    assert cfg.objective.cost == "rel_cost_bitops" and cfg.model.input_norm


ABLATIONS = sorted(p.stem for p in (CONF / "sweep").glob("ablation_*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ABLATIONS)
def test_every_ablation_point_composes_and_instantiates(make_cfg, name):
    """Each ablation sweep varies keys its controllers really take, over valid values, and its
    header names the report command that draws it."""
    from omegaconf import OmegaConf
    sweep = OmegaConf.load(CONF / "sweep" / f"{name}.yaml")
    params = {k: [v.strip() for v in str(vals).split(",")] for k, vals in sweep.hydra.sweeper.params.items()}
    keys = [k for k in params if k not in SWEEP_AXES]
    assert keys, f"{name} varies nothing but the usual axes"
    header = (CONF / "sweep" / f"{name}.yaml").read_text()
    assert all(f"--ablation {k}" in header for k in keys)
    for ctrl in params["controller"]:
        for key in keys:
            for value in params[key]:
                cfg = make_cfg(f"sweep={name}", f"controller={ctrl}", f"{key}={value}")
                assert str(OmegaConf.select(cfg, key)) == value or float(OmegaConf.select(cfg, key)) == float(value)
                assert hasattr(instantiate(cfg.controller), "decide")
