"""AdaptivePrecision: the library entry point, shaped like torch.amp.

    ap = AdaptivePrecision(model, controller=Static("bf16"), device_type="cpu")
    with ap.autocast():
        loss = loss_fn(model(x), y)
    ap.backward(loss)      # scaled backward + sampled statistics
    ap.step(optimizer)     # unscale, skip on inf/NaN, update scale, controller decides next plan

GradScaler's habits work unchanged: ``ap.unscale_(optimizer)`` before clipping, several
optimizers per step (``ap.step(a); ap.step(b); ap.update()``), ``ap.get_scale()``,
``ap.is_enabled()``.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from adaprec.controllers.base import Controller, ControllerContext, StepRecord, with_defaults
from adaprec.controllers.static import Static
from adaprec.runtime.diagnose import find_nonfinite_layer
from adaprec.runtime.distributed import (broadcast_object, gather_objects, is_distributed,
                          local_tensor, reduce_loss_and_found_inf, unwrap)
from adaprec.runtime.executors import EXECUTORS, Executor
from adaprec.numerics.formats import get_format
from adaprec.runtime.layers import discover_layers
from adaprec.runtime.monitor import Monitor
from adaprec.runtime.plan import Plan
from adaprec.numerics.scaler import LossScaler
from adaprec.numerics.stats import DEFAULT_SAMPLE

__all__ = ["AdaptivePrecision", "EXECUTORS", "needs_loss_scaling", "candidate_formats"]


def candidate_formats(controller) -> list[str]:
    """The formats ``controller`` may choose, which the monitor judges every tensor in: its
    ``candidates()`` if it has one, else what its usual attributes name (``formats``,
    ``ladder``, ``low``/``high``, ``format``, ``dtype``); fp32, bf16 and fp16 always."""
    names: list[str] = ["fp32", "bf16", "fp16"]
    found = getattr(controller, "candidates", None)
    if callable(found):
        names += list(found())
    else:
        for attr in ("formats", "ladder", "low", "high", "format", "dtype"):
            v = getattr(controller, attr, None)
            names += [v] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else []
    out = []
    for n in names:
        try:
            out.append(get_format(n).name)
        except ValueError:  # an attribute that happens to share a name: not a format
            continue
    return list(dict.fromkeys(out))

log = logging.getLogger(__name__)


def needs_loss_scaling(plan: Plan) -> bool:
    """Dynamic loss scaling is on whenever some layer runs in a format whose recipe asks for it
    (fp16's range, per-tensor fp8); bf16 shares fp32's exponent range, block formats scale
    every block (``Format.needs_loss_scaling``)."""
    fmts = {plan.default, *plan.values()}
    return any(get_format(f).needs_loss_scaling for f in fmts)


class AdaptivePrecision:
    """Per-layer adaptive mixed precision around an unmodified model and optimizer.

    Under DDP pass the wrapped model or the inner one: layers are named as in the inner model
    (no ``module.`` prefix), rank 0's controller decides and its plan is broadcast, and
    found-inf is reduced across ranks before the skip decision (see ``adaprec.runtime.distributed``).

    Args:
        model: any ``nn.Module``; parameters stay fp32 (master weights).
        controller: decides the plan each step (default ``Static("fp32")``).
        device_type: ``"cpu"`` or ``"cuda"``, as for ``torch.autocast``.
        executor: ``"native"`` (per-layer autocast regions), ``"emulated"`` (fp32 kernels on
            values rounded to each layer's format; fp8 too) or ``"auto"`` (native where the
            device runs the format fast, emulated elsewhere).
        executor_options: keyword arguments for the executor (emulated/auto: ``fp8``).
        monitor_every: sample statistics every N optimizer steps (0 = off).
        monitor_exact: absmax of activations/gradients over every element (default); False
            estimates it from the fixed-size sample too, for cheap every-step statistics.
        monitor_shadow: on sampled steps, recompute single-op layers in fp32 on a slice of
            their input and report the output error (``LayerStats.shadow``).
        monitor_sample: elements per tensor behind the rates and errors (a strided sample;
            absmax and presence of inf/overflow stay exact); smaller is cheaper and noisier.
        layers: extra glob patterns of module names to treat as layers.
        scaler: keyword arguments for :class:`~adaprec.numerics.scaler.LossScaler`.
        layer_costs / plan_cost / cheapness: cost information handed to the controller's
            ``setup`` (see :class:`~adaprec.controllers.base.ControllerContext`).
    """

    def __init__(self, model: nn.Module, controller: Controller | None = None,
                 device_type: str = "cpu", executor: str = "native", monitor_every: int = 10,
                 layers: Sequence[str] = (), scaler: dict | None = None,
                 layer_costs: dict | None = None, cheapness: Sequence[str] | None = None,
                 executor_options: dict | None = None, monitor_exact: bool = True,
                 plan_cost: Callable[[Plan], float] | None = None, monitor_shadow: bool = True,
                 monitor_sample: int = DEFAULT_SAMPLE):
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
        model = unwrap(model)
        self.model = model
        self.device_type = device_type
        self.layers = discover_layers(model, layers)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no layers (no module owns parameters)")
        self.executor: Executor = EXECUTORS[executor](model, self.layers, device_type,
                                                      **(executor_options or {}))
        self.monitor = Monitor(model, self.layers, monitor_every, exact=monitor_exact,
                               shadow=monitor_shadow, sample=monitor_sample)
        # a model may own no parameters (only parameterless adaprec_layer blocks)
        device = next(model.parameters(), torch.empty(0)).device
        self.scaler = LossScaler(device=device, **(scaler or {}))
        self.step_count = 0
        self.decisions: list[dict[str, Any]] = []
        self.last_record: StepRecord | None = None
        self._loss_sum: torch.Tensor | None = None
        self._micro_batches = 0
        self._in_step = False
        self._diagnosing = False
        self._diagnosis = None
        self._rng_at_start: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._optimizers = _OptimizerSteps()  # GradScaler-style per-optimizer state of this step
        self._unstepped: list[torch.Tensor] = []  # parameters with gradients no optimizer stepped yet
        self._orphans: set[int] = set()  # parameters with gradients that belong to no optimizer
        modules = dict(model.named_modules())
        runs = getattr(self.executor, "runs", None)  # an executor without it runs every format
        self._context = ControllerContext(
            layers=self.layers, device_type=device_type, layer_costs=layer_costs,
            plan_cost=plan_cost, cheapness=tuple(cheapness or ControllerContext.cheapness),
            layer_types={n: type(modules[n]).__name__ for n in self.layers}, executor=executor,
            runs=(lambda layer, fmt: runs(layer, get_format(fmt))) if runs is not None else None)
        self._plan = Plan.uniform("fp32", self.layers)
        self._set_controller(controller if controller is not None else Static("fp32"))

    # -- the controller -------------------------------------------------------------------------
    @property
    def controller(self) -> Controller:
        """The controller deciding each step's plan; assigning one is :meth:`set_controller`."""
        return self._user_controller

    @controller.setter
    def controller(self, controller: Controller) -> None:
        self.set_controller(controller)

    def set_controller(self, controller: Controller) -> None:
        """Hand the decisions to ``controller`` from now on: its ``setup`` runs with the context
        the first controller got, it decides the plan for the next step at once, and the
        switch is logged (a decision row per layer whose format changes, with the new
        controller's reasons). Call it between steps (not between ``ap.backward`` and
        ``ap.step``)."""
        if self._loss_sum is not None or self._optimizers.stepped:
            raise RuntimeError("ap.set_controller() called in the middle of a step; call it after "
                               "ap.step(optimizer) (and ap.update()) and before the next forward")
        old = type(self._user_controller).__name__
        log.info("controller %s -> %s at step %d", old, type(controller).__name__, self.step_count)
        self._set_controller(controller, switched_from=old)

    def _set_controller(self, controller: Controller, switched_from: str | None = None) -> None:
        # the Protocol's defaults for optional members the controller does not define
        wrapped = with_defaults(controller)
        wrapped.setup(self._context)
        self._user_controller, self._controller = controller, wrapped
        self.monitor.set_formats(candidate_formats(controller))  # what it may choose gets judged
        self._apply(wrapped.decide(self.step_count), step=self.step_count,
                    note=f" (controller {switched_from} -> {type(controller).__name__})"
                    if switched_from else "")
        shares = ", ".join(f"{f} {v:.0%}" for f, v in self._plan.shares().items())
        log.info("plan from step %d (%s): %s", self.step_count, type(controller).__name__, shares)

    # -- the torch.amp-shaped surface -----------------------------------------------------------
    @property
    def plan(self) -> Plan:
        """The plan in force (``Mapping[str, str]``: layer name -> format)."""
        return self._plan

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """Run forward (and loss) under the current plan. In training mode the first call of a
        step with gradients on arms the monitor if the step is sampled; in eval mode or under
        ``torch.no_grad()`` (an evaluation forward) nothing is measured or begun."""
        if self._optimizers.stepped and self.model.training and not self._diagnosing:
            self._finish_unfinished_step()
        if not self._in_step and self.model.training and torch.is_grad_enabled():
            self._in_step = True
            self._rng_at_start = _torch_rng_state(self.device_type)  # for a culprit replay
            # gradients are judged at the scale fp16 would really see: none when scaling is off
            fp16_scale = self.scaler.scale if self.scaler.enabled else 1.0
            self.monitor.begin_step(self.step_count, fp16_scale, self.scaler.applied_scale)
        with self.executor.region():
            yield

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """Scaled backward; call once per micro-batch when accumulating gradients (divide
        each micro-batch loss by the number of micro-batches, as with torch.amp: the step's
        recorded loss is the sum of what is passed here)."""
        if self._diagnosing:  # a culprit replay: plain scaled backward, nothing recorded
            self._diagnosis.check_loss(loss)
            with self._backward_region():
                self.scaler.scale_loss(loss).backward(**kwargs)
            return
        if self._optimizers.stepped:
            self._finish_unfinished_step()
        self._optimizers.finished = None
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._micro_batches += 1
        with self._backward_region():
            self.scaler.scale_loss(loss).backward(**kwargs)
        self.monitor.end_backward()

    def _backward_region(self):
        """The executor's context for backward (the emulated one computes 16-bit kernels in
        fp32 there too); executors without one need none."""
        region = getattr(self.executor, "backward_region", None)
        return region() if region is not None else nullcontext()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide ``optimizer``'s gradients by the loss scale in place, as
        ``GradScaler.unscale_``: call it between ``ap.backward`` and ``ap.step`` to clip or read
        true gradients; ``ap.step(optimizer)`` then does not unscale again. Once per optimizer
        per step (a second call raises, as GradScaler's does)."""
        if self._loss_sum is None:
            raise RuntimeError("ap.unscale_(optimizer) called before ap.backward(loss)")
        steps = self._optimizers
        if id(optimizer) in steps.found_inf:
            raise RuntimeError("unscale_() has already been called on this optimizer since the "
                               "last update().")
        if id(optimizer) in steps.stepped:
            raise RuntimeError("unscale_() is being called after step().")
        self._before_first_unscale()
        steps.found_inf[id(optimizer)] = self.scaler.unscale_(local_tensor(p.grad) for p in _params(optimizer))

    def _before_first_unscale(self) -> None:
        # weight gradients are measured still scaled, once per step, before any is unscaled
        if not self._optimizers.measured:
            self._optimizers.measured = True
            self.monitor.measure_parameters()

    def step(self, optimizer: torch.optim.Optimizer, replay: Callable[[], None] | None = None
             ) -> StepRecord | None:
        """Unscale (unless ``ap.unscale_(optimizer)`` already did), skip the update on inf/NaN,
        and, once every parameter with a gradient has been stepped, finish the step (update the
        scale, let the controller decide) and return its record.

        With one optimizer over the model this is the whole step. With several, call
        ``ap.step(opt)`` for each and then ``ap.update()``, as with GradScaler; each optimizer
        skips on its own inf/NaN, the scale backs off if any had one. ``step`` returns None while
        parameters with gradients remain unstepped (``ap.update()`` then returns the record).

        ``replay``: a callable that re-runs this step's forward and backward (the same
        ``ap.autocast()`` / ``ap.backward()`` calls on the same micro-batches). It is called only
        on a skipped step, to name the culprit layer (``StepRecord.nonfinite_layer``); clean
        steps pay nothing for it.
        """
        steps = self._optimizers
        if self._loss_sum is None:
            hint = (" (this step already finished: the optimizers stepped before covered every "
                    "parameter with a gradient)") if steps.finished is not None else ""
            raise RuntimeError("ap.step() called before ap.backward(loss)" + hint)
        if id(optimizer) in steps.stepped:
            raise RuntimeError("step() has already been called on this optimizer since the last "
                               "update().")
        self._before_first_unscale()
        params = _params(optimizer)
        found_inf = steps.found_inf.pop(id(optimizer), None)
        if found_inf is None:
            found_inf = self.scaler.unscale_(local_tensor(p.grad) for p in params)
        # one collective (under DDP) and one host sync: mean loss, ranks that found inf/NaN
        loss_value, inf_value = reduce_loss_and_found_inf(self._loss_sum, found_inf).tolist()
        skipped = inf_value > 0 or not math.isfinite(loss_value)
        if not skipped:
            optimizer.step()
        elif replay is not None and steps.culprit is None:
            steps.culprit = self._find_culprit(replay, params)
        steps.record_step(optimizer, params, loss_value, found_inf.new_full((), float(inf_value > 0)),
                          skipped)
        self._unstepped = [p for p in self.model.parameters() if p.grad is not None
                           and id(p) not in steps.params and id(p) not in self._orphans]
        return None if self._unstepped else self.update()

    def update(self) -> StepRecord:
        """Finish the step after the last ``ap.step(optimizer)``: update the loss scale, record
        the statistics, let the controller decide the next plan; returns the step's record.
        After a ``step`` that already finished the step (one optimizer) it changes nothing."""
        steps = self._optimizers
        if not steps.stepped:
            if steps.finished is not None:
                return steps.finished
            raise RuntimeError("ap.update() called before ap.step(optimizer)")
        self._unstepped = []
        scale_used = self.scaler.applied_scale
        self.scaler.update(steps.inf_flag())
        stats = self.monitor.collect(self.step_count, self._plan.format_of)
        gradients = (self.monitor.layer_gradients()
                     if not steps.skipped and self._controller.wants_gradients(self.step_count) else None)
        record = StepRecord(step=self.step_count, loss=steps.loss, skipped=steps.skipped,
                            loss_scale=scale_used, plan=self._plan, stats=stats,
                            nonfinite_layer=steps.culprit, gradients=gradients)
        self.last_record = record
        self._controller.observe(record)
        self.step_count += 1
        self._loss_sum, self._micro_batches, self._in_step = None, 0, False
        self._optimizers = _OptimizerSteps(finished=record)
        self._apply(self._controller.decide(self.step_count), step=self.step_count)
        return record

    def get_scale(self) -> float:
        """The factor the next backward multiplies the loss by (1.0 while no layer needs loss
        scaling), as ``GradScaler.get_scale``."""
        return self.scaler.applied_scale

    def is_enabled(self) -> bool:
        """Whether loss scaling is in use for the current plan (it follows the plan: on while
        some layer runs fp16 or fp8), as ``GradScaler.is_enabled``."""
        return self.scaler.active

    def _finish_unfinished_step(self) -> None:
        """A new step began although parameters with gradients were never stepped (they belong
        to no optimizer): finish the old step now and leave them out from now on."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        example = next((names[id(p)] for p in self._unstepped if id(p) in names), "?")
        warnings.warn(f"{len(self._unstepped)} parameters with gradients (e.g. {example!r}) were "
                      "stepped by no optimizer; adaprec finished the step when the next one began. "
                      "Call ap.update() after the last ap.step(optimizer), or set "
                      "requires_grad=False on them", stacklevel=3)
        self._orphans.update(id(p) for p in self._unstepped)
        self.update()

    def _find_culprit(self, replay: Callable[[], None], params: list[torch.Tensor]) -> str | None:
        """Replay the step from its starting RNG state with finiteness checks on every layer;
        the RNG stream afterwards is left as the original step left it."""
        rng_after = _torch_rng_state(self.device_type)
        # the replay must not advance run state either (fp8 amax histories record each cast)
        executor_before = copy.deepcopy(self.executor.state_dict())
        _set_torch_rng_state(self._rng_at_start, self.device_type)
        # the skipped step's grads are garbage; replay from zero. Other optimizers' gradients
        # (several optimizers per step) are set aside and put back untouched.
        kept = {id(p): p.grad for p in self.model.parameters()}
        self._diagnosing = True
        try:
            with find_nonfinite_layer(self.model, self.layers) as diagnosis:
                self._diagnosis = diagnosis
                for p in self.model.parameters():
                    p.grad = None
                replay()
                culprit = diagnosis.culprit()
        finally:
            self._diagnosing = False
            self._diagnosis = None
            mine = {id(p) for p in params}
            for p in self.model.parameters():
                p.grad = None if id(p) in mine else kept.get(id(p), p.grad)
            _set_torch_rng_state(rng_after, self.device_type)
            self.executor.load_state_dict(executor_before)
        # under DDP every rank replays; the most telling culprit of any rank wins
        found = [c for c in gather_objects(culprit) if c is not None]
        return min(found, key=lambda c: c[0])[1] if found else None

    def latest_stats(self) -> list[dict]:
        """Latest sampled LayerStats as flat rows, one per layer (empty before the first
        sample); ``pandas.DataFrame(ap.latest_stats())`` makes a table of them."""
        return self.monitor.latest_rows()

    # -- plan switching -------------------------------------------------------------------------
    def _apply(self, plan: Plan, step: int, note: str = "") -> None:
        if not isinstance(plan, Plan):
            raise TypeError(f"{type(self.controller).__name__}.decide() must return a Plan, "
                            f"got {type(plan).__name__}")
        reasons = self._controller.reasons or {}
        if is_distributed():  # DDP: rank 0 decides, every rank applies its plan and reasons
            plan_dict, reasons = broadcast_object((plan.to_dict(), dict(reasons)))
            plan = Plan.from_dict(plan_dict) if plan_dict["hash"] != plan.hash else plan
        for layer, (old, new) in self._plan.diff(plan).items():
            if layer in self.executor.layers or step == 0:
                self.decisions.append({"step": step, "layer": layer, "old": old, "new": new,
                                       "reason": reasons.get(layer, type(self.controller).__name__) + note})
        self._install(plan)

    def _install(self, plan: Plan) -> None:
        self._plan = plan
        self.executor.set_plan(plan)
        self.scaler.active = needs_loss_scaling(plan)

    def set_plan(self, plan: Plan | dict, reason: str = "set by user") -> None:
        """Apply ``plan`` now (inference, or a manual override until the controller's next
        decision); the change is logged with ``reason``."""
        plan = plan if isinstance(plan, Plan) else Plan(plan)
        for layer, (old, new) in self._plan.diff(plan).items():
            self.decisions.append({"step": self.step_count, "layer": layer, "old": old,
                                   "new": new, "reason": reason})
        self._install(plan)

    @classmethod
    def from_plan(cls, model: nn.Module, path: str | Path, device_type: str = "cpu",
                  executor: str = "native") -> "AdaptivePrecision":
        """Apply a saved plan (``inference_plan.json`` from ``adaprec.tools.deploy``, or a plan JSON)
        for inference: ``with ap.autocast(): model(x)``."""
        data = json.loads(Path(path).read_text())
        plan = Plan.from_dict(data["plan"] if "plan" in data else data)
        ap = cls(model, controller=Static("fp32"), device_type=device_type, executor=executor,
                 monitor_every=0)
        unknown = set(plan) - set(ap.layers)
        if unknown:
            ap.remove()
            raise ValueError(f"plan {path} names layers this model lacks: {sorted(unknown)[:5]}")
        ap.set_plan(plan, reason=f"from {path}")
        return ap

    def pop_decisions(self) -> list[dict[str, Any]]:
        """Plan changes since the last call (for loggers)."""
        out, self.decisions = self.decisions, []
        return out

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a bit-exact resume needs from adaprec's side: step, plan, loss scaler,
        controller and monitor state (tensors and plain values only)."""
        return {"step": self.step_count, "plan": self._plan.to_dict(),
                "scaler": self.scaler.state_dict(), "controller": self.controller.state_dict(),
                "monitor": self.monitor.state_dict(), "executor": self.executor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        self.scaler.load_state_dict(state["scaler"])
        self.controller.load_state_dict(state["controller"])
        if "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
        self.executor.load_state_dict(state.get("executor") or {})
        plan = Plan.from_dict(state["plan"])
        self._install(plan)

    def remove(self) -> None:
        """Detach every hook from the model."""
        self.executor.remove()
        self.monitor.remove()


class _OptimizerSteps:
    """What GradScaler keeps per optimizer, for one step: found-inf of the optimizers unscaled
    so far, which were stepped and over which parameters, and what the step's record needs."""

    def __init__(self, finished: StepRecord | None = None):
        self.found_inf: dict[int, torch.Tensor] = {}
        self.stepped: set[int] = set()
        self.params: set[int] = set()
        self.measured = False
        self.loss = float("nan")
        self.found_inf_flags: list[torch.Tensor] = []  # 0-dim 1.0/0.0 per stepped optimizer
        self.skipped = False
        self.culprit: str | None = None
        self.finished = finished  # the record of the step finished last (until the next backward)

    def record_step(self, optimizer, params, loss: float, found_inf: torch.Tensor,
                    skipped: bool) -> None:
        self.stepped.add(id(optimizer))
        self.params.update(id(p) for p in params)
        self.loss = loss
        self.found_inf_flags.append(found_inf)
        self.skipped |= skipped

    def inf_flag(self) -> torch.Tensor:
        """1.0 if any stepped optimizer found inf/NaN (GradScaler sums them; >0 backs off)."""
        return torch.stack(self.found_inf_flags).amax()


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _torch_rng_state(device_type: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state() if device_type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_torch_rng_state(state, device_type: str) -> None:
    if state is None:
        return
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None and device_type == "cuda":
        torch.cuda.set_rng_state(cuda)

