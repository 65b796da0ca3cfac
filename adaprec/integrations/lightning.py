"""Lightning: adaptive per-layer precision as a ``Precision`` plugin (``pip install adaprec[lightning]``).

    import lightning as L
    from adaprec.controllers import Threshold
    from adaprec.integrations.lightning import AdaptivePrecisionPlugin

    trainer = L.Trainer(plugins=[AdaptivePrecisionPlugin(controller=Threshold(), executor="auto")],
                        gradient_clip_val=1.0, accumulate_grad_batches=2)
    trainer.fit(module, loader)

The forward (training, validation, test, predict) runs under the plan; backward is scaled; the
optimizer step unscales first (so ``gradient_clip_val`` and ``on_before_optimizer_step`` see
true gradients), skips on inf/NaN and lets the controller decide the next plan. adaprec's state
(step, plan, scaler, controller, monitor, executor) is saved in Lightning's checkpoint under the
plugin's name and restored by ``fit(ckpt_path=...)``. Each step's loss scale, format shares,
sampled per-layer statistics and every plan change with its reason go to the trainer's loggers
under ``adaprec/`` (TensorBoard, MLflow and W&B loggers get histograms and text too; any other
logger the scalars).

Not supported: optimizers that need ``step(closure)`` (LBFGS) — the closure runs once before
the step, as with Lightning's own AMP plugin; ``optimizer.step(**kwargs)`` arguments.
"""
from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.plugins.precision import Precision
from torch import nn
from torch.optim import LBFGS, Optimizer

from adaprec.controllers.base import Controller
from adaprec.integrations.trackers.base import Tracker, layer_rows, step_row
from adaprec.precision import AdaptivePrecision
from adaprec.runtime.distributed import unwrap

__all__ = ["AdaptivePrecisionPlugin"]


class AdaptivePrecisionPlugin(Precision):
    """A Lightning ``Precision`` plugin around :class:`~adaprec.AdaptivePrecision`.

    Args:
        controller: decides the plan each step (default ``Static("fp32")``).
        executor: ``"native"``, ``"emulated"`` or ``"auto"`` (see ``AdaptivePrecision``).
        monitor_every: sample statistics every N optimizer steps (0 = off).
        device_type: ``"cpu"`` / ``"cuda"``; default: where the model's parameters are.
        log_every: send adaprec's scalars to the loggers every N steps (decisions and sampled
            statistics always go); 0 = never log.
        **options: further ``AdaptivePrecision`` arguments (``layers``, ``scaler``,
            ``executor_options``, ``monitor_exact``, ``layer_costs``, ``cheapness``).

    ``plugin.ap`` is the ``AdaptivePrecision`` once the trainer has set the model up.
    """

    def __init__(self, controller: Controller | None = None, executor: str = "native",
                 monitor_every: int = 10, device_type: str | None = None, log_every: int = 1,
                 **options: Any):
        self.controller = controller
        self.executor = executor
        self.monitor_every = monitor_every
        self.device_type = device_type
        self.log_every = log_every
        self.options = options
        self.ap: AdaptivePrecision | None = None
        self._state_to_load: dict | None = None  # a checkpoint restored before the model was known
        self._unscaled: set[int] = set()  # optimizers unscaled this step by unscale_gradients
        self._trackers: dict[int, Tracker] = {}
        self._logged_step = -1

    # -- set-up ---------------------------------------------------------------------------------
    def connect(self, model: nn.Module, optimizers: list[Optimizer], lr_schedulers: list[Any]):
        """Wrap the model the strategy set up (once: later ``fit``/``validate`` calls reuse it)."""
        inner = unwrap(model)
        if self.ap is None or self.ap.model is not inner:
            if self.ap is not None:
                self.ap.remove()
            device = next(inner.parameters()).device.type
            self.ap = AdaptivePrecision(inner, controller=self.controller,
                                        device_type=self.device_type or device,
                                        executor=self.executor, monitor_every=self.monitor_every,
                                        **self.options)
            if self._state_to_load is not None:
                self.ap.load_state_dict(self._state_to_load)
                self._state_to_load = None
        return model, optimizers, lr_schedulers

    def _require_ap(self) -> AdaptivePrecision:
        if self.ap is None:
            raise RuntimeError("AdaptivePrecisionPlugin is not connected to a model yet; pass it "
                               "to lightning.Trainer(plugins=[...]) and call trainer.fit")
        return self.ap

    # -- forward, backward, step ----------------------------------------------------------------
    @contextmanager
    def forward_context(self) -> Generator[None, None, None]:
        """Training, validation, test and predict steps run under the current plan."""
        if self.ap is None:
            yield
            return
        with self.ap.autocast():
            yield

    def backward(self, tensor, model: pl.LightningModule, optimizer, *args: Any, **kwargs: Any) -> None:
        """Scaled backward with sampled statistics (replaces ``LightningModule.backward``)."""
        if args:
            raise TypeError("AdaptivePrecisionPlugin.backward takes keyword arguments only "
                            "(e.g. retain_graph=True)")
        self._require_ap().backward(tensor, **kwargs)

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Unscale ``optimizer``'s gradients now (at most once per step; the step won't again)."""
        if id(optimizer) not in self._unscaled:
            self._require_ap().unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def optimizer_step(self, optimizer: Optimizer, model: pl.LightningModule,
                       closure: Callable[[], Any], **kwargs: Any) -> Any:
        """Run the closure (forward + backward), unscale, run Lightning's pre-step hooks and
        clipping on the true gradients, then step (skipped on inf/NaN) and let the controller
        decide."""
        if isinstance(optimizer, LBFGS):
            raise TypeError("AdaptivePrecisionPlugin cannot drive LBFGS: it needs step(closure), "
                            "and adaprec runs the closure once before the (maybe skipped) step")
        ap = self._require_ap()
        closure_result = closure()
        # training_step returned None in automatic optimization: no backward ran, nothing to step
        skip = closure_result is None and model.automatic_optimization
        if not skip:
            self.unscale_gradients(optimizer)
        self._after_closure(model, optimizer)  # on_before_optimizer_step + gradient clipping
        if skip:
            return closure_result
        ap.step(optimizer)
        self._unscaled.discard(id(optimizer))
        self._log(model)
        return closure_result

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """adaprec's run state, saved in Lightning's checkpoint under this plugin's name."""
        if self.ap is not None:
            return self.ap.state_dict()
        return dict(self._state_to_load or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.ap is not None:
            self.ap.load_state_dict(state_dict)
        else:
            self._state_to_load = state_dict

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the plan in force in plain form beside the state (for readers of the file)."""
        if self.ap is not None:
            checkpoint["adaprec_plan"] = dict(self.ap.plan)

    # -- logging --------------------------------------------------------------------------------
    def _log(self, model: pl.LightningModule) -> None:
        ap, trainer = self.ap, model.trainer
        record = ap.last_record
        if record is None or record.step <= self._logged_step or not self.log_every:
            return
        self._logged_step = record.step
        if not trainer.is_global_zero or not trainer.loggers:
            return  # decisions stay in ap.decisions for the user
        decisions = ap.pop_decisions()
        rows = {"layers": layer_rows(record), "decisions": decisions}
        if record.step % self.log_every == 0 or rows["layers"] or decisions:
            rows["steps"] = [step_row(record)]
        for logger in trainer.loggers:
            tracker = self._trackers.get(id(logger))
            if tracker is None:
                tracker = self._trackers[id(logger)] = tracker_for(logger)
            for table in ("steps", "layers", "decisions"):
                tracker.log_rows(table, rows.get(table, []))


def tracker_for(logger: Any) -> Tracker:
    """The adaprec tracker that writes into a Lightning logger's own run (names under ``adaprec/``)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    if isinstance(logger, TensorBoardLogger):
        from adaprec.integrations.trackers.tensorboard import TensorBoardTracker
        tracker: Tracker = TensorBoardTracker(writer=logger.experiment)
    elif isinstance(logger, MLFlowLogger):
        from adaprec.integrations.trackers.mlflow import MLflowTracker
        tracker = MLflowTracker(client=logger.experiment, run_id=logger.run_id)
    elif isinstance(logger, WandbLogger):
        from adaprec.integrations.trackers.wandb import WandbTracker
        tracker = WandbTracker(run=logger.experiment)
    else:
        tracker = LoggerMetrics(logger)
    tracker.prefix = "adaprec/"
    return tracker


class LoggerMetrics(Tracker):
    """Any Lightning logger (CSVLogger, ...): scalars through ``log_metrics``; a decision is the
    scalar ``adaprec/decisions`` (how many layers changed at that step)."""

    histograms = False

    def __init__(self, logger: Any):
        self.logger = logger

    def scalars(self, step: int, values) -> None:
        self.logger.log_metrics(dict(values), step=step)

    def text(self, step: int, name: str, text: str) -> None:
        self.logger.log_metrics({name: float(len(text.split("\n")))}, step=step)

    def params(self, flat) -> None:
        self.logger.log_hyperparams(dict(flat))
