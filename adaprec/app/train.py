"""The training loop, readable top to bottom.

``train(cfg, out_dir)`` builds the run's objects from the config (``build``), trains with
:class:`~adaprec.AdaptivePrecision` and writes the run directory: its lifecycle is ``rundir``,
the checkpoint's content ``training_state``, ``metrics.json`` ``summary``, the tables ``runlog``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from adaprec.app import preemption
from adaprec.app.batching import train_batch_indices
from adaprec.app.environment import run_environment
from adaprec.app.build import build, config_value, seed_everything
from adaprec.app.footprint import describe, run_footprint
from adaprec.app.gradient_schedule import gradient_factor, scale_gradient, unscale_gradients
from adaprec.app.model_saving import ModelSaver
from adaprec.app.rundir import RunDir
from adaprec.app.rundir_lock import RunDirLock
from adaprec.app.schema import validate
from adaprec.app.summary import Summary, diverged, result
from adaprec.app.training_state import Progress, checkpoint_state, restore
from adaprec.numerics.formats import FORMATS
from adaprec.app.sharded_checkpoint import is_sharded_checkpoint, load_sharded, save_sharded
from adaprec.precision import needs_loss_scaling
from adaprec.runtime.distributed import broadcast_object, is_main_process, rank, world_size, wrap_ddp
from adaprec.tasks import evaluate

__all__ = ["train"]

log_ = logging.getLogger("adaprec")


def train(cfg: DictConfig, out_dir: str | Path, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Train per ``cfg`` and write the run directory ``out_dir``; returns ``metrics.json``'s
    content. ``choices`` records the config-group choices (controller=..., model=...).

    The config is validated before anything is written. A run dir that holds an unfinished
    run with a checkpoint is resumed (``trainer.resume=<path>`` picks a checkpoint
    explicitly); a finished one is never overwritten unless ``trainer.overwrite=true``.
    A run whose steps stay non-finite ends with status ``diverged``; any exception is recorded
    as ``status: failed`` (with the error) and re-raised."""
    validate(cfg)
    with RunDirLock(out_dir) if is_main_process() else nullcontext():  # one process per run dir
        run, state = RunDir.open(cfg, out_dir)
        summary = Summary(run, int(cfg.seed), choices, state,
                          run_environment(config_value(cfg.device), config_value(cfg.executor)))
        with summary.recording():
            summary.finish(_loop(cfg, run, state, summary.wall_s))
    return summary.metrics


def _loop(cfg: DictConfig, run: RunDir, state: dict | None,
          elapsed_s: Callable[[], float]) -> dict[str, Any]:
    """Train from ``state`` (None: from scratch) to ``trainer.max_steps``; returns the outcome.
    ``elapsed_s()`` is the run's wall time so far (checkpointed, so a resumed run adds to it)."""
    tc = cfg.trainer
    device = torch.device(config_value(cfg.device))
    seed_everything(int(cfg.seed))
    t = build(cfg, device)
    data, task, model, ap, meter = t.data, t.task, t.model, t.ap, t.meter
    # FSDP2 shards were made by build (before the optimizer); DDP wraps a replica when several
    # ranks train together; one process trains the model itself
    net = model if t.sharding is not None else wrap_ddp(model, device)
    accum, micro = t.grad_accum, t.micro_batch
    ranks, rank_id = world_size(), rank()
    if micro % ranks:
        raise ValueError(f"trainer.batch_size / grad_accum ({micro}) must be divisible by the "
                         f"number of ranks ({ranks})")
    progress = Progress()
    saver = ModelSaver(config_value(tc.save_model), run, task.quality, task.higher_is_better)
    log_.info("this run writes %s", describe(run_footprint(cfg, model, len(ap.plan))))
    start = 0
    initial = ap.pop_decisions()
    if state is None:
        run.append("decisions", initial)
    else:  # the initial plan was logged by the interrupted run
        if is_sharded_checkpoint(state):  # every rank reads its shards
            state = load_sharded(state, Path(state["checkpoint_dir"]), model, t.optimizer)
        start = restore(state, t, progress)
        saver.load_state_dict(state.get("model_saver"))
        run.rewind(start)
        run.append("events", [{"step": start, "event": "resumed", "from_step": start}])
    max_steps, max_skips = int(tc.max_steps), int(tc.max_consecutive_skips)
    gs = tc.grad_schedule
    grad_schedule = {"start": int(gs.start), "steps": int(gs.steps), "final": float(gs.final)}
    eval_every, ckpt_every = int(tc.eval_every), int(tc.checkpoint_every)
    bar = tqdm(range(start, max_steps), disable=not tc.progress or not run.writes,
               dynamic_ncols=True, leave=False)
    model.train()
    record = ap.last_record
    for step in bar:
        t_step, c_step = time.perf_counter(), time.process_time()
        t.optimizer.zero_grad(set_to_none=True)
        if t.sharding is not None:
            t.sharding.take_step_bytes()  # an evaluation's all-gathers are not this step's

        def forward_backward(step: int = step) -> None:
            factor = gradient_factor(step, **grad_schedule)  # 1.0 unless the workload shrinks gradients
            for k in range(accum):  # gradient accumulation: `accum` micro-batches, one update
                idx = train_batch_indices(data.num_train_examples, micro, int(cfg.seed), step * accum + k)
                idx = idx.chunk(ranks)[rank_id]  # DDP: each rank its share of the micro-batch
                x, y = task.batch(data, "train", idx, device)
                with ap.autocast():
                    loss = task.loss(scale_gradient(net(x), factor), y) / accum
                ap.backward(loss)
            unscale_gradients(model.parameters(), factor)  # the update sees the true gradients

        forward_backward()
        if tc.grad_clip > 0:  # clip true gradients: unscale first (step then does not again)
            ap.unscale_(t.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc.grad_clip))
        record = ap.step(t.optimizer, replay=forward_backward)  # replayed on inf/NaN to name the culprit
        gathered = t.sharding.take_step_bytes() if t.sharding is not None else None
        if t.sharding is not None:  # between steps: the next all-gathers in the new plan's dtypes
            t.sharding.follow(ap.plan)
        lr = t.scheduler.get_last_lr()[0]
        t.scheduler.step()
        step_ms = (time.perf_counter() - t_step) * 1000
        cpu_ms = (time.process_time() - c_step) * 1000  # robust to other jobs on a shared machine
        changes = ap.pop_decisions()
        skips = progress.consecutive_skips + 1 if record.skipped else 0
        if step + 1 == max_steps or (max_skips and skips >= max_skips):
            # the run ends here: a plan decided for the next step never ran
            changes = [c for c in changes if c["step"] <= step]
        progress.count(record.skipped, len(changes))
        shares = record.plan.shares()
        row = {"step": step, "loss": record.loss, "lr": lr, "loss_scale": record.loss_scale,
               "skipped": int(record.skipped),
               # whether loss scaling applied to this step (its plan has fp16 and scaling is on):
               # where it did not, loss_scale is the idle scaler's value, not a scale used
               "scaler_active": int(ap.scaler.enabled and needs_loss_scaling(record.plan)),
               "step_ms": round(step_ms, 3), "cpu_ms": round(cpu_ms, 3),
               "plan_hash": record.plan.hash, **{f"share_{f}": shares.get(f, 0.0) for f in FORMATS},
               "culprit": record.nonfinite_layer or "",
               **(meter.update(record.plan) if meter else {}),  # counted on every rank, written by rank 0
               **(meter.memory_columns(record.plan) if meter else {}), **_measured_memory(device),
               **({"allgather_bytes": gathered} if gathered is not None else {})}
        run.append("steps", [row])
        if record.skipped:
            run.append("events", [{"step": step, "event": "nonfinite_step", "layer": record.nonfinite_layer,
                                   "loss": record.loss, "loss_scale": record.loss_scale}])
        if record.stats is not None:
            run.append("layers", [s.as_row() for s in record.stats.values()])
        run.append("decisions", changes)
        if max_skips and progress.consecutive_skips >= max_skips:
            outcome = diverged(step, progress, record.plan, record.loss, record.nonfinite_layer)
            run.append("events", [{"step": step, "event": "diverged", "layer": outcome["culprit"],
                                   "message": outcome["error"]}])
            log_.error(outcome["error"])
            return outcome
        is_last = step + 1 == max_steps
        if is_last or (eval_every > 0 and (step + 1) % eval_every == 0):
            progress.last_eval = evaluate(model, ap, data, int(tc.eval_batch_size), device, int(tc.eval_batches))
            if t.sharding is not None:
                t.sharding.forward_only_done()
            run.append("evals", [{"step": step + 1, **progress.last_eval}])
            saver.evaluated(model, step + 1, progress.last_eval)
        preempted = preemption.requested() if not is_last else None  # SIGTERM/SIGUSR1 seen
        if t.sharding is not None:  # every rank writes its shards: all act on rank 0's signal
            preempted = broadcast_object(preempted)
        if preempted or ckpt_every > 0 and (step + 1) % ckpt_every == 0 and not is_last:
            _checkpoint(run, t, {**checkpoint_state(cfg, step + 1, t, progress, elapsed_s()),
                                 "model_saver": saver.state_dict()})
        if preempted:
            return preemption.outcome(preempted, step + 1, result(step + 1, progress, record.plan, record.loss))
        bar.set_postfix(loss=f"{record.loss:.3f}", **_quality_text(task.quality, progress.last_eval),
                        **{f: f"{v:.0%}" for f, v in shares.items()})
    bar.close()
    saved = saver.finished(model)
    if callable(getattr(ap.controller, "summary", None)):  # a bandit's pulls and regret
        run.write_controller_summary(ap.controller.summary())
    train_loss = record.loss if record is not None else float("nan")
    ran = record.plan if record is not None else ap.plan  # the plan the last step ran
    return {**result(max_steps, progress, ran, train_loss), **saved,
            **(meter.metrics() if meter else {}), **_measured_memory(device)}


def _checkpoint(run: RunDir, t, state: dict[str, Any]) -> None:
    """Rank 0 writes checkpoint.pt; under FSDP2 every rank writes its shards (DCP) beside it."""
    if t.sharding is not None:
        save_sharded(run.path, state, t.model, t.optimizer)
    elif run.writes:
        run.save_checkpoint(state)


def _measured_memory(device: torch.device) -> dict[str, int]:
    """``cuda_max_mem_bytes``: the peak bytes torch allocated on the GPU so far (CUDA only)."""
    if device.type != "cuda":
        return {}
    return {"cuda_max_mem_bytes": int(torch.cuda.max_memory_allocated(device))}


def _quality_text(metric: str, last_eval: dict[str, float]) -> dict[str, str]:
    return {metric.removeprefix("val_"): f"{last_eval[metric]:.4g}"} if metric in last_eval else {}
