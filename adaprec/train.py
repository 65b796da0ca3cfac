"""The training loop: one function, readable top to bottom.

``train(cfg, out_dir)`` builds data, model, optimizer and controller from the config, trains
with :class:`~adaprec.AdaptivePrecision`, and writes the run directory (see ``runlog``).
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .batching import eval_batches, train_batch_indices
from .cost import CostMeter, CostModel
from .formats import FORMATS
from .instantiate import instantiate
from .layers import discover_layers
from .precision import AdaptivePrecision
from .runlog import RunLog, save_atomic
from .schema import validate

__all__ = ["train", "evaluate", "lr_lambda"]


def lr_lambda(warmup: int, total: int, min_ratio: float = 0.0):
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _get_batch(data, split: str, idx: torch.Tensor, device: torch.device):
    if data.task == "lm":
        x, y = data.get_lm_batch(split, idx)
    else:
        x, y = data.get_batch(split, idx)
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _loss(task: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task == "lm":
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    if task == "regression":
        # in fp32 on the (already rounded) prediction: the format's error shows, the loss adds none
        return F.mse_loss(logits.float().reshape(y.shape), y.float())
    return F.cross_entropy(logits, y)


@torch.no_grad()
def evaluate(model, ap: AdaptivePrecision | None, data, batch_size: int, device: torch.device,
             max_batches: int = 0) -> dict[str, float]:
    """Validation loss and accuracy (classification), perplexity (LM) or root mean squared
    error (regression; ``val_loss`` is then the MSE) under the current plan."""
    was_training = model.training
    model.eval()
    n = (data.val_x.numel() - 1) // data.block_size if data.task == "lm" else data.val_x.shape[0]
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for idx in eval_batches(n, batch_size, max_batches):
        if data.task == "lm":
            idx = idx * data.block_size  # non-overlapping windows
        x, y = _get_batch(data, "val", idx, device)
        with (ap.autocast() if ap is not None else torch.autocast(device.type, enabled=False)):
            logits = model(x)
            loss = _loss(data.task, logits, y)
        k = y.numel()
        total_loss += loss.double() * k
        if data.task == "classification":
            correct += (logits.argmax(-1) == y).sum()
        count += k
    model.train(was_training)
    val_loss = (total_loss / max(count, 1)).item()
    out = {"val_loss": val_loss}
    if data.task == "lm":
        out["val_perplexity"] = math.exp(min(val_loss, 700.0))
    elif data.task == "regression":
        out["val_rmse"] = math.sqrt(val_loss) if val_loss >= 0 else float("nan")
    else:
        out["val_accuracy"] = (correct / max(count, 1)).item()
    return out


def train(cfg: DictConfig, out_dir: str | Path, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Train per ``cfg`` and write the run directory ``out_dir``; returns ``metrics.json``'s
    content. ``choices`` records the config-group choices (controller=..., model=...).
    Any exception is recorded as ``status: failed`` (with the error) and re-raised."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    if metrics_path.exists() and not cfg.trainer.get("overwrite", False):
        raise FileExistsError(f"{out} already holds a finished run (metrics.json); choose another "
                              "output dir or pass trainer.overwrite=true")
    OmegaConf.save(cfg, out / "config_resolved.yaml", resolve=True)
    log = RunLog(out)
    metrics: dict[str, Any] = {"status": "running", "error": None, "choices": dict(choices or {}),
                               "seed": int(cfg.seed)}
    log.write_metrics(metrics)
    t0 = time.perf_counter()
    try:
        metrics.update(_train(cfg, log))
        metrics["status"] = "ok"
    except BaseException as exc:
        metrics.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        metrics["wall_s"] = time.perf_counter() - t0
        log.write_metrics(metrics)
    return metrics


def _train(cfg: DictConfig, log: RunLog) -> dict[str, Any]:
    validate(cfg)
    tc = cfg.trainer
    device = torch.device(_value(cfg.device))
    if tc.get("num_threads", 0) > 0:  # parallel sweep jobs on a few cores: one thread each
        torch.set_num_threads(int(tc.num_threads))
    _seed_everything(int(cfg.seed))
    data = instantiate(cfg.dataset)
    model = instantiate(cfg.model).to(device)
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(int(tc.warmup_steps), int(tc.max_steps), float(tc.min_lr_ratio)))
    controller = instantiate(cfg.controller)
    n_train = data.num_train_examples
    batch, accum = int(tc.batch_size), int(tc.grad_accum)
    micro = batch // accum
    if micro * accum != batch:
        raise ValueError(f"trainer.batch_size ({batch}) must be divisible by trainer.grad_accum ({accum})")
    extra_layers = list(cfg.monitor.get("layers") or [])
    meter = _cost_meter(cfg, model, data, discover_layers(model, extra_layers), device, micro, accum)
    ap = AdaptivePrecision(model, controller=controller, device_type=device.type,
                           executor=_value(cfg.executor), monitor_every=int(cfg.monitor.every),
                           layers=extra_layers,
                           layer_costs=meter.layer_format_costs() if meter else None,
                           cheapness=meter.cheapness() if meter else None,
                           scaler=dict(cfg.get("scaler") or {}),
                           executor_options=_executor_options(cfg))
    log.decisions.append(ap.pop_decisions())
    skipped = plan_changes = 0
    last_eval: dict[str, float] = {}
    bar = tqdm(range(int(tc.max_steps)), disable=not tc.progress, dynamic_ncols=True, leave=False)
    model.train()
    for step in bar:
        t_step = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for k in range(accum):  # gradient accumulation: `accum` micro-batches, one update
            idx = train_batch_indices(n_train, micro, int(cfg.seed), step * accum + k)
            x, y = _get_batch(data, "train", idx, device)
            with ap.autocast():
                loss = _loss(data.task, model(x), y) / accum
            ap.backward(loss)
        record = ap.step(optimizer)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step_ms = (time.perf_counter() - t_step) * 1000
        skipped += record.skipped
        changes = ap.pop_decisions()
        plan_changes += len(changes)
        shares = record.plan.shares()
        log.steps.append([{
            "step": step, "loss": record.loss, "lr": lr, "loss_scale": record.loss_scale,
            "skipped": int(record.skipped), "step_ms": round(step_ms, 3),
            "plan_hash": record.plan.hash,
            **{f"share_{f}": shares.get(f, 0.0) for f in FORMATS},
            **(meter.update(record.plan) if meter else {}),
        }])
        if record.stats is not None:
            log.layers.append([s.as_row() for s in record.stats.values()])
        log.decisions.append(changes)
        is_last = step + 1 == int(tc.max_steps)
        if is_last or (tc.eval_every > 0 and (step + 1) % int(tc.eval_every) == 0):
            last_eval = evaluate(model, ap, data, int(tc.eval_batch_size), device, int(tc.eval_batches))
            log.evals.append([{"step": step + 1, **last_eval}])
        bar.set_postfix(loss=f"{record.loss:.3f}", **_short(last_eval), **_share_text(shares))
    bar.close()
    save_atomic(model.state_dict(), log.dir / "model.pt")  # final weights, for adaprec.deploy
    return {"steps": int(tc.max_steps), "skipped_steps": skipped, "plan_changes": plan_changes,
            "final_plan": dict(ap.plan), "format_shares": ap.plan.shares(),
            "train_loss_last": record.loss, **last_eval, **(meter.metrics() if meter else {})}


def _cost_meter(cfg: DictConfig, model, data, layers: list[str], device: torch.device,
                micro: int, accum: int) -> CostMeter | None:
    """Count the model once on the first training micro-batch (plain fp32, model state and RNG
    untouched) and price plans on ``cfg.cost.profiles``; None when the cost model is off."""
    if not cfg.cost.enabled:
        return None
    x, y = _get_batch(data, "train", train_batch_indices(data.num_train_examples, micro, int(cfg.seed), 0),
                      device)
    cm = CostModel.count(model, (x,), loss_fn=lambda out: _loss(data.task, out, y), layers=layers)
    return CostMeter(cm, list(cfg.cost.profiles), passes_per_step=accum)


def _executor_options(cfg: DictConfig) -> dict[str, Any]:
    """fp8 scaling for the emulated and auto executors (the native one takes no options)."""
    em = cfg.get("emulation")
    if _value(cfg.executor) == "native" or em is None:
        return {}
    return {"fp8": {"scaling": _value(em.fp8_scaling), "amax_history_len": int(em.amax_history_len),
                    "margin": int(em.fp8_margin)}}


def _value(v: Any) -> str:
    """Enum-typed config fields arrive as Enum members; everything downstream wants strings."""
    return str(getattr(v, "value", v))


def _short(ev: dict[str, float]) -> dict[str, str]:
    if "val_accuracy" in ev:
        return {"acc": f"{ev['val_accuracy']:.3f}"}
    if "val_perplexity" in ev:
        return {"ppl": f"{ev['val_perplexity']:.2f}"}
    if "val_rmse" in ev:
        return {"rmse": f"{ev['val_rmse']:.3g}"}
    return {}


def _share_text(shares: dict[str, float]) -> dict[str, str]:
    return {f: f"{v:.0%}" for f, v in shares.items()}
