"""The training loop: one function, readable top to bottom.

``train(cfg, out_dir)`` builds data, model, optimizer and controller from the config, trains
with :class:`~adaprec.AdaptivePrecision`, and writes the run directory (see ``runlog``).
"""
from __future__ import annotations

import json
import logging
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

from adaprec.app.batching import eval_batches, train_batch_indices
from adaprec.app.checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from adaprec.cost import CostMeter, CostModel
from adaprec.runtime.distributed import broadcast_object, is_main_process, rank, world_size, wrap_ddp
from adaprec.numerics.formats import FORMATS
from adaprec.app.instantiate import instantiate
from adaprec.runtime.layers import discover_layers
from adaprec.precision import AdaptivePrecision
from adaprec.app.loggers import make_trackers
from adaprec.app.runlog import RUN_FILES, RunLog, save_atomic, truncate_tables
from adaprec.app.schema import validate

__all__ = ["train", "evaluate", "lr_lambda", "check_resumable"]

log_ = logging.getLogger("adaprec")


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

    The config is validated before anything is written. A run dir that holds an unfinished
    run with a checkpoint is resumed (``trainer.resume=<path>`` picks a checkpoint
    explicitly); a finished one is never overwritten unless ``trainer.overwrite=true``.
    A run whose steps stay non-finite ends with status ``diverged``; any exception is recorded
    as ``status: failed`` (with the error) and re-raised."""
    validate(cfg)
    out = Path(out_dir)
    main = is_main_process()
    source = _agree_on_run_dir(cfg, out, main)
    state = load_checkpoint(source) if source is not None else None
    if state is not None:
        check_resumable(cfg, state)
        log_.info("resuming from %s at step %d (%s)", source, state["step"],
                  "trainer.resume" if cfg.trainer.get("resume") else "run dir holds a checkpoint")
    log = RunLog(out, trackers=make_trackers(cfg, out)) if main else None
    if main:
        OmegaConf.save(cfg, out / "config_resolved.yaml", resolve=True)
    metrics: dict[str, Any] = {"status": "running", "error": None, "choices": dict(choices or {}),
                               "seed": int(cfg.seed)}
    if state is not None:
        metrics["resumed_from"] = int(state["step"])
    _write_metrics(log, metrics)
    t0 = time.perf_counter()
    wall_before = float(state["wall_s"]) if state is not None else 0.0
    try:
        result = _train(cfg, log, out, state, lambda: wall_before + time.perf_counter() - t0)
        metrics.update({"status": "ok", **result})
    except BaseException as exc:
        metrics.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        metrics["wall_s"] = wall_before + time.perf_counter() - t0
        _write_metrics(log, metrics)
    return metrics


def _agree_on_run_dir(cfg: DictConfig, out: Path, main: bool) -> Path | None:
    """Rank 0 prepares the run dir and tells every rank what to resume from (or its error)."""
    verdict: tuple[str, Any] = ("ok", None)
    if main:
        try:
            verdict = ("ok", _prepare_run_dir(cfg, out))
        except FileExistsError as exc:
            verdict = ("error", str(exc))
    kind, value = broadcast_object(verdict)
    if kind == "error":
        raise FileExistsError(value)
    return value


def _write_metrics(log: RunLog | None, metrics: dict[str, Any]) -> None:
    if log is not None:
        log.write_metrics(metrics)


def _resume_path(cfg: DictConfig, out: Path) -> Path | None:
    """The checkpoint to resume from: ``trainer.resume``, else the run dir's own, else None."""
    explicit = cfg.trainer.get("resume")
    if explicit:
        return Path(explicit)
    own = out / CHECKPOINT_NAME
    return own if own.exists() and not cfg.trainer.get("overwrite", False) else None


def _prepare_run_dir(cfg: DictConfig, out: Path) -> Path | None:
    """Decide what happens to ``out`` and return the checkpoint to resume from (or None).

    - ``trainer.overwrite=true``: every file of an earlier run is removed first.
    - a finished run (status ok or diverged): refused.
    - an unfinished run (running/failed) with a checkpoint: resumed.
    - an unfinished run without a checkpoint (killed before its first one): started over, and
      the log says so; it holds no result to lose, and a requeued job must not get stuck.
    """
    out.mkdir(parents=True, exist_ok=True)
    status = _read_status(out / "metrics.json")
    if cfg.trainer.get("overwrite", False):
        _remove_run_files(out)
        return _resume_path(cfg, out)
    if status in ("ok", "diverged"):
        raise FileExistsError(f"{out} already holds a finished run (status {status}); choose "
                              "another output dir or pass trainer.overwrite=true")
    source = _resume_path(cfg, out)
    if source is None and (status is not None or (out / "steps.csv").exists()):
        log_.warning("%s holds an unfinished run (status %s) without a checkpoint: starting over",
                     out, status)
        _remove_run_files(out)
    return source


def _remove_run_files(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _read_status(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text()).get("status"))
    except (ValueError, AttributeError):
        return "unreadable"


def _build(cfg: DictConfig, device: torch.device):
    """Data, model, optimizer, scheduler, AdaptivePrecision and cost meter, from the config."""
    tc = cfg.trainer
    if tc.get("num_threads", 0) > 0:  # parallel sweep jobs on a few cores: one thread each
        torch.set_num_threads(int(tc.num_threads))
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
                           executor_options=_executor_options(cfg),
                           monitor_exact=bool(cfg.monitor.get("exact", True)))
    return data, model, optimizer, scheduler, ap, meter


def _train(cfg: DictConfig, log: RunLog | None, out: Path, state: dict | None,
           wall_s) -> dict[str, Any]:
    tc = cfg.trainer
    device = torch.device(_value(cfg.device))
    _seed_everything(int(cfg.seed))
    data, model, optimizer, scheduler, ap, meter = _build(cfg, device)
    net = wrap_ddp(model, device)  # the model itself unless several ranks train together
    n_train = data.num_train_examples
    accum = int(tc.grad_accum)
    micro = int(tc.batch_size) // accum
    ranks, rank_id = world_size(), rank()
    if micro % ranks:
        raise ValueError(f"trainer.batch_size / grad_accum ({micro}) must be divisible by the "
                         f"number of ranks ({ranks})")
    counters = {"skipped": 0, "plan_changes": 0, "consecutive_skips": 0}
    last_eval: dict[str, float] = {}
    start = 0
    initial = ap.pop_decisions()
    if state is None:
        _append(log, "decisions", initial)
    else:  # the initial plan was logged by the interrupted run
        start = _restore(state, model, optimizer, scheduler, ap, meter, counters)
        last_eval = dict(state["last_eval"])
        if log is not None:
            truncate_tables(out, start)
        _append(log, "events", [{"step": start, "event": "resumed", "from_step": start}])
    max_steps, max_skips = int(tc.max_steps), int(tc.max_consecutive_skips)
    every = int(tc.checkpoint_every)
    bar = tqdm(range(start, max_steps), disable=not tc.progress or log is None,
               dynamic_ncols=True, leave=False)
    model.train()
    record = ap.last_record
    for step in bar:
        t_step = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)

        def forward_backward(step: int = step) -> None:
            for k in range(accum):  # gradient accumulation: `accum` micro-batches, one update
                idx = train_batch_indices(n_train, micro, int(cfg.seed), step * accum + k)
                idx = idx.chunk(ranks)[rank_id]  # DDP: each rank its share of the micro-batch
                x, y = _get_batch(data, "train", idx, device)
                with ap.autocast():
                    loss = _loss(data.task, net(x), y) / accum
                ap.backward(loss)

        forward_backward()
        if tc.grad_clip > 0:  # clip true gradients: unscale first (step then does not again)
            ap.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc.grad_clip))
        record = ap.step(optimizer, replay=forward_backward)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step_ms = (time.perf_counter() - t_step) * 1000
        counters["skipped"] += record.skipped
        counters["consecutive_skips"] = counters["consecutive_skips"] + 1 if record.skipped else 0
        changes = ap.pop_decisions()
        counters["plan_changes"] += len(changes)
        shares = record.plan.shares()
        _append(log, "steps", [{
            "step": step, "loss": record.loss, "lr": lr, "loss_scale": record.loss_scale,
            "skipped": int(record.skipped), "step_ms": round(step_ms, 3),
            "plan_hash": record.plan.hash,
            **{f"share_{f}": shares.get(f, 0.0) for f in FORMATS},
            "culprit": record.nonfinite_layer or "",
            **(meter.update(record.plan) if meter else {}),
        }])
        if record.skipped:
            _append(log, "events", [{"step": step, "event": "nonfinite_step",
                                     "layer": record.nonfinite_layer, "loss": record.loss,
                                     "loss_scale": record.loss_scale}])
        if record.stats is not None:
            _append(log, "layers", [s.as_row() for s in record.stats.values()])
        _append(log, "decisions", changes)
        if max_skips and counters["consecutive_skips"] >= max_skips:
            return _diverged(log, step, record, counters, ap, last_eval)
        is_last = step + 1 == max_steps
        if is_last or (tc.eval_every > 0 and (step + 1) % int(tc.eval_every) == 0):
            last_eval = evaluate(model, ap, data, int(tc.eval_batch_size), device, int(tc.eval_batches))
            _append(log, "evals", [{"step": step + 1, **last_eval}])
        if every > 0 and (step + 1) % every == 0 and not is_last and log is not None:
            save_checkpoint(out / CHECKPOINT_NAME, _checkpoint_state(
                cfg, step + 1, model, optimizer, scheduler, ap, meter, counters, last_eval, wall_s()))
        bar.set_postfix(loss=f"{record.loss:.3f}", **_short(last_eval), **_share_text(shares))
    bar.close()
    if log is not None:
        save_atomic(model.state_dict(), log.dir / "model.pt")  # final weights, for adaprec.tools.deploy
    return {"steps": max_steps, "skipped_steps": counters["skipped"],
            "plan_changes": counters["plan_changes"], "final_plan": dict(ap.plan),
            "format_shares": ap.plan.shares(),
            "train_loss_last": record.loss if record is not None else float("nan"), **last_eval,
            **(meter.metrics() if meter else {})}


def _append(log: RunLog | None, table: str, rows: list[dict]) -> None:
    if log is not None:  # DDP: only rank 0 writes the run dir
        getattr(log, table).append(rows)


def _diverged(log, step: int, record, counters: dict, ap: AdaptivePrecision,
              last_eval: dict) -> dict[str, Any]:
    """Stop: the last ``max_consecutive_skips`` steps were all non-finite."""
    layer = record.nonfinite_layer or "unknown"
    msg = (f"diverged: {counters['consecutive_skips']} consecutive non-finite steps ending at "
           f"step {step}; culprit layer: {layer}")
    _append(log, "events", [{"step": step, "event": "diverged", "layer": layer, "message": msg}])
    log_.error(msg)
    return {"status": "diverged", "error": msg, "steps": step + 1,
            "skipped_steps": counters["skipped"], "plan_changes": counters["plan_changes"],
            "final_plan": dict(ap.plan), "format_shares": ap.plan.shares(),
            "train_loss_last": record.loss, "culprit": layer, **last_eval}


# trainer keys that may differ between an interrupted run and its resumption
_RESUME_FREE_KEYS = ("trainer.resume", "trainer.overwrite", "trainer.progress",
                     "trainer.checkpoint_every", "trainer.max_consecutive_skips")


def _comparable_config(cfg: DictConfig) -> dict[str, Any]:
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return {k: v for k, v in flat.items() if k not in _RESUME_FREE_KEYS}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def check_resumable(cfg: DictConfig, state: dict) -> None:
    """Refuse to resume a checkpoint written under a different config (it would silently mix
    two experiments in one run dir); the message names the first differing key."""
    saved, now = state["config"], _comparable_config(cfg)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key, "<absent>") != now.get(key, "<absent>"):
            raise CheckpointError(f"checkpoint was written with {key}={saved.get(key, '<absent>')!r} "
                                  f"but this run has {key}={now.get(key, '<absent>')!r}; resume "
                                  "with the original config or start a new run dir")


def _checkpoint_state(cfg, step: int, model, optimizer, scheduler, ap: AdaptivePrecision,
                      meter, counters: dict, last_eval: dict, wall_s: float) -> dict[str, Any]:
    return {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "precision": ap.state_dict(),
            "rng": rng_state(), "counters": dict(counters), "last_eval": dict(last_eval),
            "wall_s": wall_s, "config": _comparable_config(cfg), "cost_meter": _meter_state(meter)}


def _meter_state(meter: CostMeter | None) -> dict | None:
    """The cost meter's run totals (its prices are recomputed from the config on resume)."""
    if meter is None:
        return None
    return meter.state_dict()


def _load_meter_state(meter: CostMeter | None, state: dict | None) -> None:
    if meter is not None and state is not None:
        meter.load_state_dict(state)


def _restore(state: dict, model, optimizer, scheduler, ap: AdaptivePrecision, meter,
             counters: dict) -> int:
    model.load_state_dict(state["model"])
    _load_meter_state(meter, state.get("cost_meter"))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ap.load_state_dict(state["precision"])
    counters.update(state["counters"])
    set_rng_state(state["rng"])  # last: building the objects above may draw random numbers
    return int(state["step"])


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
