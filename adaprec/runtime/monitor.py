"""Monitor: per-layer hooks that measure activations, gradients and weights on sampled steps.

On a sampled step each layer's forward hook reduces its output to a raw statistics vector and
hooks the output's gradient; parameters and their gradients are reduced after backward. All
vectors stay on the device until :meth:`Monitor.collect`, which reads them back in one
transfer. On unsampled steps the hooks return after one attribute check. Under FSDP2 a
parameter is measured on this rank's shard and the rows are combined across ranks, so its
statistics are those of the whole tensor.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch
from torch import nn

from adaprec.runtime.distributed import combine_shard_stats, is_sharded, local_tensor
from adaprec.runtime.eager import eager
from adaprec.numerics.stats import KINDS, LayerStats, Probe, TensorStats, combine_rows, derive, probe, reduce_probes

__all__ = ["Monitor"]


def _first_float_tensor(obj) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj if obj.is_floating_point() else None
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_float_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        return _first_float_tensor(list(obj.values()))
    return None


class Monitor:
    """Samples LayerStats every ``every`` steps (``every=0`` switches monitoring off)."""

    def __init__(self, model: nn.Module, layers: Sequence[str], every: int = 10,
                 history: int = 100, exact: bool = True):
        if every < 0:
            raise ValueError(f"monitor.every must be >= 0 (0 = off), got {every}")
        self.every = every
        # exact: absmax (so the presence of inf/overflow) over every element of activations
        # and gradients; False estimates it from the sample too (cheap enough for every step)
        self.exact = bool(exact)
        self.layers = list(layers)
        modules = dict(model.named_modules())
        self._params = {name: [p for p in modules[name].parameters(recurse=False)]
                        for name in self.layers}
        self._pending: list[tuple[str, str, Probe]] = []
        self._sharded: list[int] = []  # positions in _pending measured on one rank's shard
        self._forward_armed = False
        self._deferred: dict[str, int] = {}  # no-grad forwards a recomputation may measure
        self._sampled = False
        self._grad_scale = 1.0      # loss scale at which gradients are evaluated
        self._applied_scale = 1.0   # scale the backward actually ran at
        self.latest: dict[str, LayerStats] = {}
        self.history: deque[dict[str, LayerStats]] = deque(maxlen=history)
        self._handles = [modules[name].register_forward_hook(eager(self._forward_hook(name)))
                         for name in self.layers]

    # -- step protocol --------------------------------------------------------------------------
    def is_sampled(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def begin_step(self, step: int, grad_scale: float, applied_scale: float) -> None:
        """Arm the hooks if ``step`` is sampled; gradients are judged at ``grad_scale``."""
        self._sampled = self.is_sampled(step)
        self._forward_armed = self._sampled
        self._deferred = {}
        self._grad_scale, self._applied_scale = grad_scale, applied_scale

    def end_backward(self) -> None:
        """Only the first micro-batch of a sampled step is measured (accumulation repeats it)."""
        self._forward_armed = False

    def measure_parameters(self) -> None:
        """Reduce weights and (still scaled) weight gradients of every layer."""
        if not self._sampled:
            return
        for name, params in self._params.items():
            if not params:
                continue
            # parameter norms are exact (controllers such as MuPPET use gradient norms)
            for p in params:
                self._add_parameter_probe(name, "weight", p, probe(local_tensor(p), exact_norm=True))
                if p.grad is not None:
                    self._add_parameter_probe(name, "wgrad", p.grad, probe(
                        local_tensor(p.grad), self._grad_scale, self._applied_scale, exact_norm=True))

    def _add_parameter_probe(self, name: str, kind: str, tensor: torch.Tensor, pr: Probe) -> None:
        if is_sharded(tensor):  # FSDP2: this rank holds one shard; collect() sums the ranks'
            self._sharded.append(len(self._pending))
        self._pending.append((name, kind, pr))

    def collect(self, step: int, format_of: Callable[[str], str]) -> dict[str, LayerStats] | None:
        """Read back this step's statistics (one device->host transfer); None if unsampled."""
        if not self._sampled:
            return None
        self._sampled = self._forward_armed = False
        pending, self._pending = self._pending, []
        sharded, self._sharded = self._sharded, []
        raw = reduce_probes([p for _, _, p in pending]) if pending else None
        if sharded:  # the same parameters on every rank, in the same order: one all-gather
            raw[sharded] = combine_shard_stats(raw[sharded])
        rows = raw.cpu().tolist() if raw is not None else []
        grouped: dict[tuple[str, str], list[list[float]]] = {}
        # a layer's weight and bias, or a module called twice in one forward, combine
        for (name, kind, _), row in zip(pending, rows):
            grouped.setdefault((name, kind), []).append(row)
        per_layer: dict[str, dict] = {name: {} for name in self.layers}
        for (name, kind), group in grouped.items():
            per_layer[name][kind] = derive(group[0] if len(group) == 1 else combine_rows(group))
        stats = {name: LayerStats(layer=name, step=step, format=format_of(name), **kinds)
                 for name, kinds in per_layer.items()}
        self.latest = stats
        self.history.append(stats)
        return stats

    def latest_rows(self) -> list[dict]:
        """The latest sampled statistics, one flat dict per layer (``pandas.DataFrame(rows)``)."""
        return [s.as_row() for s in self.latest.values()]

    def layer_gradients(self) -> dict[str, torch.Tensor]:
        """Per layer with any gradient: its own parameters' gradients, flattened and
        concatenated in fp32 (a copy; controllers such as MuPPET measure diversity on them)."""
        out = {}
        for name, params in self._params.items():
            # a sharded gradient is gathered whole (a collective: every rank asks at this step)
            grads = [(p.grad.full_tensor() if is_sharded(p.grad) else p.grad).detach().reshape(-1).float()
                     for p in params if p.grad is not None]
            if grads:
                out[name] = torch.cat(grads)
        return out

    # -- hooks --------------------------------------------------------------------------------
    def _counts(self, name: str) -> bool:
        """Whether this forward call of ``name`` is one of the step's training forwards.

        Measured: forwards with grad enabled outside backward. A no-grad forward (an eval
        forward, reentrant checkpointing's first pass) is not; a forward the autograd engine
        runs during backward is activation checkpointing recomputing one: skipped when it repeats
        a measured forward (non-reentrant), measured when it stands for a no-grad one
        (reentrant: only the recomputation has gradients)."""
        if torch._C._current_graph_task_id() != -1:  # inside backward: a recomputation
            if self._deferred.get(name, 0) <= 0:
                return False
            self._deferred[name] -= 1
            return True
        if not torch.is_grad_enabled():
            self._deferred[name] = self._deferred.get(name, 0) + 1
            return False
        return True

    def _forward_hook(self, name: str):
        def hook(module, args, output):
            if not self._forward_armed or not self._counts(name):
                return None
            t = _first_float_tensor(output)
            if t is None:
                return None
            with torch._C.DisableTorchFunction():  # measuring is no op of an enclosing layer
                self._pending.append((name, "act", probe(t, exact_absmax=self.exact)))
            if t.requires_grad:
                t.register_hook(self._grad_hook(name))
            return None
        return hook

    def _grad_hook(self, name: str):
        def hook(grad):
            if self._sampled:
                self._pending.append((name, "grad", probe(grad, self._grad_scale, self._applied_scale,
                                                          exact_absmax=self.exact)))
            return None
        return hook

    def state_dict(self) -> dict:
        """Latest and recent statistics as plain dicts (``torch.load(weights_only=True)``-safe),
        so a controller or user reading them sees the same after a resume."""
        return {"every": self.every, "latest": _stats_to_plain(self.latest),
                "history": [_stats_to_plain(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.latest = _stats_from_plain(state.get("latest", {}))
        self.history.clear()
        self.history.extend(_stats_from_plain(h) for h in state.get("history", []))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _stats_to_plain(stats: dict[str, LayerStats]) -> dict[str, dict]:
    return {name: asdict(ls) for name, ls in stats.items()}


def _stats_from_plain(plain: dict[str, dict]) -> dict[str, LayerStats]:
    out = {}
    for name, d in plain.items():
        kinds = {k: TensorStats(**d[k]) if d.get(k) is not None else None for k in KINDS}
        out[name] = LayerStats(layer=d["layer"], step=d["step"], format=d["format"], **kinds)
    return out
