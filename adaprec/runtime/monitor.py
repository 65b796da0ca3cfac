"""Monitor: per-layer hooks that measure what each layer's GEMMs consume, on sampled steps.

On a sampled step, per layer: a forward pre-hook (ahead of the executor's, so before any cast)
probes the layer's input activation; the forward hook probes its output as stored and puts a
gradient tap in front of it, so the gradient arriving at the output is probed in fp32 before
the executor rounds it; parameters and their gradients are probed after backward. Every probe
is judged in every candidate format (``formats``: the formats the controller may choose; see
:mod:`adaprec.numerics.stats`). A **shadow** recomputation (``shadow=True``) runs the layer's
forward again in fp32 on the first ``shadow_rows`` rows of the same raw input and compares it
with the layer's output there (:class:`~adaprec.numerics.stats.ShadowStats`); it is taken for
single-op layers only (Linear, convolutions, LayerNorm/GroupNorm/RMSNorm, Embedding, or a leaf
module with ``adaprec_shadow = True``): a layer with child layers would round its children
again, batch norm would update its running statistics, dropout would draw new masks.

Everything stays on the device until :meth:`Monitor.collect`, which reads it back in one
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
# the emulated executor's "already on this grid" tag, passed on to the tap's copy so the next
# layer skips rounding it exactly as it would skip the original
from adaprec.runtime.executors.emulated import _set_tag, _tag_of
from adaprec.runtime.eager import eager
from adaprec.numerics.emulation import fp32_kernels_paused
from adaprec.numerics.stats import (DEFAULT_FORMATS, DEFAULT_SAMPLE, KINDS, FormatError, LayerStats, Probe, ShadowStats,
                                    TensorStats, chunk_for, combine_rows, derive, probe, reduce_probes)
from adaprec.numerics.formats import get_format

__all__ = ["Monitor", "SHADOW_TYPES"]

# single-op layers whose forward can be recomputed on a slice without side effects
SHADOW_TYPES = (nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
                nn.Embedding)
_CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)


class _GradTap(torch.autograd.Function):
    """Identity whose backward hands the incoming gradient to ``fn`` first: put after a layer's
    output (and the executor's rounding of it), it sees the gradient before that rounding.
    The output is a copy (a view could not be modified in place by a following ReLU)."""

    @staticmethod
    def forward(ctx, x, fn):
        ctx.fn = fn
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        ctx.fn(g)
        return g, None


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
                 history: int = 100, exact: bool = True, formats: Sequence[str] = DEFAULT_FORMATS,
                 shadow: bool = True, shadow_rows: int = 2, sample: int = DEFAULT_SAMPLE):
        if every < 0:
            raise ValueError(f"monitor.every must be >= 0 (0 = off), got {every}")
        if shadow_rows < 1:
            raise ValueError(f"monitor shadow_rows must be >= 1, got {shadow_rows}")
        if sample < 64:
            raise ValueError(f"monitor.sample must be >= 64 elements, got {sample}")
        self.sample = int(sample)  # elements per tensor behind rates and errors
        self.every = every
        # exact: absmax (so the presence of inf/overflow) over every element of activations
        # and gradients; False estimates it from the sample too (cheap enough for every step)
        self.exact = bool(exact)
        self.layers = list(layers)
        self.set_formats(formats)
        self.shadow_rows = int(shadow_rows)
        modules = dict(model.named_modules())
        self._params = {name: [p for p in modules[name].parameters(recurse=False)]
                        for name in self.layers}
        self._axis = {name: 1 if isinstance(modules[name], _CHANNEL_FIRST) else -1 for name in self.layers}
        self._shadowable = {name for name in self.layers if shadow and _can_shadow(modules[name])}
        self._pending: list[tuple[str, str, Probe]] = []
        self._shadow_in: dict[str, torch.Tensor] = {}
        self._shadows: list[tuple[str, torch.Tensor]] = []
        self._sharded: list[int] = []  # positions in _pending measured on one rank's shard
        self._forward_armed = False
        self._deferred: dict[str, int] = {}  # no-grad forwards a recomputation may measure
        self._sampled = False
        self._grad_scale = 1.0      # loss scale at which gradients are evaluated
        self._applied_scale = 1.0   # scale the backward actually ran at
        self.latest: dict[str, LayerStats] = {}
        self.history: deque[dict[str, LayerStats]] = deque(maxlen=history)
        # the pre-hook goes first (before the executor rounds the input), the forward hook last
        self._handles = [modules[name].register_forward_pre_hook(eager(self._input_hook(name)), prepend=True)
                         for name in self.layers]
        self._handles += [modules[name].register_forward_hook(eager(self._forward_hook(name)))
                          for name in self.layers]

    def set_formats(self, formats: Sequence[str]) -> None:
        """Judge every tensor in ``formats`` (plus fp32, bf16, fp16) from the next sampled step."""
        self.formats = list(dict.fromkeys(get_format(f).name for f in (*DEFAULT_FORMATS, *formats)))
        self._chunk = chunk_for(self.formats)

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
        self._shadow_in.clear()

    def _probe(self, x: torch.Tensor, name: str, kind: str, **kw) -> Probe:
        weight = kind in ("weight", "wgrad")
        return probe(x, sample=self.sample, chunk=self._chunk, axis=-1 if weight else self._axis[name],
                     weight=weight, **kw)

    def measure_parameters(self) -> None:
        """Reduce weights and (still scaled) weight gradients of every layer."""
        if not self._sampled:
            return
        for name, params in self._params.items():
            if not params:
                continue
            # parameter norms are exact (controllers such as MuPPET use gradient norms)
            for p in params:
                self._add_parameter_probe(name, "weight", p, self._probe(local_tensor(p), name, "weight",
                                                                         exact_norm=True))
                if p.grad is not None:
                    self._add_parameter_probe(name, "wgrad", p.grad, self._probe(
                        local_tensor(p.grad), name, "wgrad", scale=self._grad_scale,
                        prescaled=self._applied_scale, exact_norm=True))

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
        shadows, self._shadows = self._shadows, []
        sharded, self._sharded = self._sharded, []
        self._shadow_in.clear()
        rows, shadow_rows = self._read_back(pending, shadows, sharded)
        grouped: dict[tuple[str, str], list[list[float]]] = {}
        # a layer's weight and bias, or a module called twice in one forward, combine
        for (name, kind, _), row in zip(pending, rows):
            grouped.setdefault((name, kind), []).append(row)
        per_layer: dict[str, dict] = {name: {} for name in self.layers}
        for (name, kind), group in grouped.items():
            per_layer[name][kind] = derive(group[0] if len(group) == 1 else combine_rows(group),
                                           self.formats, kind)
        summed: dict[str, list[float]] = {}
        for (name, _), row in zip(shadows, shadow_rows):
            summed[name] = [a + b for a, b in zip(summed.get(name, [0.0] * 4), row)]
        for name, sums in summed.items():
            per_layer[name]["shadow"] = _shadow_stats(sums, per_layer[name].pop("shadow", None))
        stats = {name: LayerStats(layer=name, step=step, format=format_of(name), **kinds)
                 for name, kinds in per_layer.items()}
        self.latest = stats
        self.history.append(stats)
        return stats

    def _read_back(self, pending, shadows, sharded) -> tuple[list[list[float]], list[list[float]]]:
        """Reduce every probe and shadow on the device and read them back in one transfer."""
        parts = []
        if pending:
            raw = reduce_probes([p for _, _, p in pending], self.formats)
            if sharded:  # the same parameters on every rank, in the same order: one all-gather
                raw[sharded] = combine_shard_stats(raw[sharded])
            parts.append(raw)
        if shadows:
            parts.append(torch.stack([v for _, v in shadows]).to(parts[0].device if parts else None))
        if not parts:
            return [], []
        width = max(p.shape[1] for p in parts)
        flat = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]).cpu().tolist()
        rows = flat[:len(pending)]
        return rows, [r[:4] for r in flat[len(pending):]]

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
    def _input_hook(self, name: str):
        def hook(module, args):
            if not self._forward_armed or not self._counts(name, peek=True):
                return None
            # torch-function modes off: a parent layer's op-level rounding must not see (and
            # round) the monitor's own reductions; nor the emulated kernels' dispatch mode,
            # whose Python dispatch per op cost more than the reductions themselves
            with torch._C.DisableTorchFunction(), fp32_kernels_paused():
                return measure(module, args)

        def measure(module, args):
            x = _first_float_tensor(args)
            if x is not None:
                self._pending.append((name, "input", self._probe(x, name, "input", exact_absmax=self.exact)))
            if name in self._shadowable and len(args) == 1 and isinstance(args[0], torch.Tensor) \
                    and args[0].dim() > 0:
                self._shadow_in[name] = args[0][: self.shadow_rows].detach().clone()
            return None
        return hook

    def _counts(self, name: str, peek: bool = False) -> bool:
        """Whether this forward call of ``name`` is one of the step's training forwards.

        Measured: forwards with grad enabled outside backward. A no-grad forward (an eval
        forward, reentrant checkpointing's first pass) is not; a forward the autograd engine
        runs during backward is activation checkpointing recomputing one: skipped when it repeats
        a measured forward (non-reentrant), measured when it stands for a no-grad one
        (reentrant: only the recomputation has gradients). ``peek``: the same answer without
        counting (the input pre-hook asks before the forward hook counts the call)."""
        if torch._C._current_graph_task_id() != -1:  # inside backward: a recomputation
            if self._deferred.get(name, 0) <= 0:
                return False
            if not peek:
                self._deferred[name] -= 1
            return True
        if not torch.is_grad_enabled():
            if not peek:
                self._deferred[name] = self._deferred.get(name, 0) + 1
            return False
        return True

    def _forward_hook(self, name: str):
        def hook(module, args, output):
            if not self._forward_armed or not self._counts(name):
                return None
            with torch._C.DisableTorchFunction(), fp32_kernels_paused():  # see _input_hook
                return measure(module, output)

        def measure(module, output):
            t = _first_float_tensor(output)
            if t is None:
                return None
            self._pending.append((name, "act", self._probe(t, name, "act", exact_absmax=self.exact)))
            x = self._shadow_in.pop(name, None)
            # parameters not in fp32 (FSDP all-gathers them in the plan's format) or already
            # resharded (FSDP2's post-forward hook ran first: DTensor shards): no fp32
            # reference to recompute against, so no shadow
            if x is not None and isinstance(output, torch.Tensor) and all(
                    p.dtype == torch.float32 and not is_sharded(p) for p in module.parameters(recurse=False)):
                sums, y32 = _shadow_sums(module, x, output)
                self._shadows.append((name, sums))
                # the fp32 output judged in every candidate: what holding it in each would cost
                self._pending.append((name, "shadow", self._probe(y32.float(), name, "act")))
            if not t.requires_grad:
                return None
            if output is t:  # a tap in front: the gradient as it arrives, before any rounding
                tapped = _GradTap.apply(t, self._grad_hook(name))
                tag = _tag_of(t)
                if tag is not None and tag[1] == t._version:
                    _set_tag(tapped, (tag[0], tapped._version))
                return tapped
            t.register_hook(self._grad_hook(name))  # nested outputs: as the layer hands it on
            return None
        return hook

    def _grad_hook(self, name: str):
        def hook(grad):
            if self._sampled:
                with fp32_kernels_paused():  # see _input_hook
                    self._measure_grad(name, grad)
            return None
        return hook

    def _measure_grad(self, name: str, grad: torch.Tensor) -> None:
        self._pending.append((name, "grad", self._probe(
            grad, name, "grad", scale=self._grad_scale, prescaled=self._applied_scale,
            exact_absmax=self.exact)))

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


def _can_shadow(module: nn.Module) -> bool:
    leaf = next(module.children(), None) is None
    return leaf and (isinstance(module, SHADOW_TYPES) or bool(getattr(module, "adaprec_shadow", False)))


def _shadow_sums(module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[sum (y - y32)^2, sum y32^2, sum y32, n]`` (float64, on the device) over the first rows:
    ``y`` the layer's output there, ``y32`` its forward recomputed in fp32 on the raw input
    (``module.forward`` directly: no hooks, so no executor rounding, fp32 master parameters)."""
    rows = x.shape[0]
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        y32 = module.forward(x.float() if x.is_floating_point() else x).double()
    y = output[:rows].detach().double()
    d = y - y32
    return torch.stack([(d * d).sum(), (y32 * y32).sum(), y32.sum(),
                        torch.tensor(float(y32.numel()), dtype=torch.float64, device=y32.device)]), y32


def _shadow_stats(sums: list[float], reference: TensorStats | None = None) -> ShadowStats:
    err2, sq, total, n = sums
    n = max(n, 1.0)
    mean = total / n
    spread = max(sq / n - mean * mean, 0.0) ** 0.5
    rmse = (err2 / n) ** 0.5
    return ShadowStats(rel_err=(err2 / sq) ** 0.5 if sq > 0 else (0.0 if err2 == 0 else float("inf")),
                       rmse=rmse, spread=spread,
                       rel_spread=rmse / spread if spread > 0 else (0.0 if rmse == 0 else float("inf")),
                       numel=int(n), reference=reference)


def _stats_to_plain(stats: dict[str, LayerStats]) -> dict[str, dict]:
    return {name: asdict(ls) for name, ls in stats.items()}


def _tensor_from_plain(d: dict) -> TensorStats:
    d = dict(d)
    d["formats"] = {f: FormatError(**e) for f, e in (d.get("formats") or {}).items()}
    return TensorStats(**d)


def _stats_from_plain(plain: dict[str, dict]) -> dict[str, LayerStats]:
    out = {}
    for name, d in plain.items():
        kinds = {k: _tensor_from_plain(d[k]) if d.get(k) is not None else None for k in KINDS}
        shadow = None
        if d.get("shadow"):
            sh = dict(d["shadow"])
            sh["reference"] = _tensor_from_plain(sh["reference"]) if sh.get("reference") else None
            shadow = ShadowStats(**sh)
        out[name] = LayerStats(layer=d["layer"], step=d["step"], format=d["format"], shadow=shadow,
                               **kinds)
    return out
