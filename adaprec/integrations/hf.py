"""Hugging Face: :class:`AdaptivePrecisionTrainer`, a ``transformers.Trainer`` that trains under
adaprec's per-layer plan (``pip install adaprec[hf]``).

    from adaprec.controllers import Threshold
    from adaprec.integrations.hf import AdaptivePrecisionTrainer

    trainer = AdaptivePrecisionTrainer(model=model, args=TrainingArguments(..., max_grad_norm=1.0),
                                       train_dataset=ds, controller=Threshold(), executor="auto")
    trainer.train()

A subclass rather than a callback: a callback runs after the Trainer has clipped the gradients,
but clipping must see them unscaled. What it changes, and nothing else:

- forward (training and evaluation) runs under the plan (``compute_loss_context_manager``);
- backward is adaprec's scaled backward; after a step's last micro-batch the gradients are
  unscaled, so ``max_grad_norm`` clips (and ``grad_norm`` logs) true gradients;
- ``optimizer.step()`` is ``ap.step``: skipped on inf/NaN (and then the learning-rate scheduler
  does not advance, as with GradScaler), the controller decides the next plan;
- the Trainer's logs gain ``adaprec/loss_scale`` and ``adaprec/share_<format>``; ``trackers``
  (``adaprec.integrations.trackers``) get every step, statistic and decision.

Use ``fp16=False, bf16=False`` (adaprec owns the precision). Resuming adaprec's state from a
Trainer checkpoint is not wired yet: ``ap.state_dict()`` is saved beside each checkpoint as
``adaprec.pt`` for a manual ``ap.load_state_dict``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from adaprec.controllers.base import Controller
from adaprec.integrations.trackers.base import Tracker
from adaprec.numerics.formats import FORMATS
from adaprec.precision import AdaptivePrecision

__all__ = ["AdaptivePrecisionTrainer"]

ADAPREC_STATE = "adaprec.pt"


class _StepThrough:
    """What ``ap.step`` is handed: the optimizer's parameters and its own ``step`` (the
    optimizer's ``step`` attribute is adaprec's, which the Trainer calls)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.param_groups = optimizer.param_groups
        self.step = optimizer.step


class AdaptivePrecisionTrainer(Trainer):
    """``transformers.Trainer`` with adaprec's adaptive per-layer precision.

    Args (beyond the Trainer's own):
        controller / executor / monitor_every: as for :class:`~adaprec.AdaptivePrecision`.
        precision_options: further ``AdaptivePrecision`` keyword arguments.
        trackers: adaprec trackers fed each step's rows (TensorBoard, MLflow, W&B).

    ``trainer.ap`` is the ``AdaptivePrecision`` around the model.
    """

    def __init__(self, *args: Any, controller: Controller | None = None, executor: str = "native",
                 monitor_every: int = 10, precision_options: dict | None = None,
                 trackers: Sequence[Tracker] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.fp16 or self.args.bf16:
            raise ValueError("AdaptivePrecisionTrainer sets the precision per layer: pass "
                             "TrainingArguments(fp16=False, bf16=False)")
        device = next(self.model.parameters()).device.type
        self.ap = AdaptivePrecision(self.model, controller=controller, device_type=device,
                                    executor=executor, monitor_every=monitor_every,
                                    **(precision_options or {}))
        self.trackers = list(trackers)
        self._view: _StepThrough | None = None
        self.accelerator.backward = self._backward  # the one call training_step makes to backward
        for t in self.trackers:
            t.log_config({"args": self.args.to_dict()})
            t.log_rows("decisions", self.ap.pop_decisions())

    # -- forward, backward, step ----------------------------------------------------------------
    def compute_loss_context_manager(self) -> contextlib.ExitStack:
        stack = super().compute_loss_context_manager()
        stack.enter_context(self.ap.autocast())
        return stack

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self._view is None:
            self._view = _StepThrough(optimizer)
            optimizer.step = self._step  # the Trainer's optimizer.step() becomes ap.step
        return optimizer

    def _backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        self.ap.backward(loss, **kwargs)
        if self.accelerator.sync_gradients:  # the step's last micro-batch: clipping comes next
            self.ap.unscale_(self._view)

    def _step(self, *args: Any, **kwargs: Any) -> None:
        record = self.ap.step(self._view)
        if hasattr(self.optimizer, "_is_overflow"):
            # accelerate's AcceleratedOptimizer reports this as optimizer_step_was_skipped: the
            # Trainer then leaves the learning-rate scheduler where it is, as under GradScaler
            self.optimizer._is_overflow = record.skipped
        decisions = self.ap.pop_decisions()
        for t in self.trackers:
            t.log_record(record, decisions)

    # -- logs and checkpoints -------------------------------------------------------------------
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        record = self.ap.last_record
        if record is not None and "loss" in logs:  # training logs, not evaluation's
            shares = record.plan.shares()
            logs = {**logs, "adaprec/loss_scale": record.loss_scale,
                    **{f"adaprec/share_{f}": shares.get(f, 0.0) for f in FORMATS}}
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save and folder.is_dir():
            torch.save(self.ap.state_dict(), folder / ADAPREC_STATE)

    def train(self, *args: Any, **kwargs: Any):
        try:
            return super().train(*args, **kwargs)
        finally:
            for t in self.trackers:
                t.close()
