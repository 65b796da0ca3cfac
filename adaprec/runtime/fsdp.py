"""FSDP2 (``torch.distributed.fsdp.fully_shard``) under adaprec: sharded fp32 master weights,
per-layer plans on the unsharded compute, and all-gathers in a layer's 16-bit plan format.

    sharding = shard_model(model, units="layers", param_dtype="plan", plan=initial_plan)
    ap = AdaptivePrecision(model, ...)         # after sharding: it measures the sharded parameters
    optimizer = torch.optim.AdamW(model.parameters())

What stays as without FSDP: layer names (``fully_shard`` keeps the module tree; a unit is the
module itself, not a wrapper), the executors' per-layer regions (FSDP's pre-forward hook
all-gathers a unit's parameters before adaprec's hooks see them) and the policy of
``adaprec.runtime.distributed`` (rank 0 decides and broadcasts). What changes: parameters and
gradients are DTensor shards, so the monitor combines the ranks' shard statistics into
statistics of the whole tensor.

``param_dtype="plan"``: a unit whose layers all run one 16-bit format (bf16, fp16) all-gathers
its parameters in that dtype (``MixedPrecisionPolicy(param_dtype=...)``; gradients are still
reduced in fp32), which halves the bytes it moves and the memory its unsharded weights take;
every other unit all-gathers fp32. FSDP2 has no public way to change a unit's policy after
``fully_shard``; :meth:`Sharding.follow` changes it between steps through FSDP2's internal
parameter-group state (checked against torch 2.13, refused with a clear error where that
state is not what it expects). fp8 and block formats all-gather fp32 and are emulated.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from adaprec.numerics.formats import get_format
from adaprec.runtime.layers import discover_layers
from adaprec.runtime.plan import Plan

__all__ = ["Sharding", "shard_model", "is_fsdp", "full_state_dict", "PARAM_DTYPES", "UNITS"]

PARAM_DTYPES = ("fp32", "plan")  # what a unit all-gathers: always fp32, or its plan's 16-bit format
UNITS = ("layers", "root")       # or a list of module-name globs (e.g. "blocks.*": per block)
_STORAGE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def is_fsdp(model: nn.Module) -> bool:
    """True when ``fully_shard`` was applied to ``model`` or to one of its modules."""
    from torch.distributed.fsdp import FSDPModule
    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with whole tensors: an FSDP2 model's shards are gathered (a
    collective every rank joins) onto the CPU of rank 0 (other ranks get an empty dict)."""
    if not is_fsdp(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _unit_names(model: nn.Module, units: str | Sequence[str], layers: list[str]) -> list[str]:
    if units == "layers":
        return list(layers)
    if units == "root":
        return []
    if isinstance(units, str):
        raise ValueError(f"fsdp units {units!r}: use one of {', '.join(UNITS)} or a list of "
                         "module-name globs such as ['blocks.*']")
    names = [n for n, _ in model.named_modules() if n]
    chosen: list[str] = []
    for pattern in units:  # "*" stays within one name component: blocks.* = blocks.0, blocks.1
        hits = [n for n in fnmatch.filter(names, pattern) if n.count(".") == pattern.count(".")]
        if not hits:
            raise ValueError(f"fsdp unit pattern {pattern!r} matches no module of {type(model).__name__}")
        chosen += [h for h in hits if h not in chosen]
    return [n for n in names if n in chosen]


class _CountingAllGather:
    """FSDP2's default all-gather (the ``AllGather`` comm of ``set_custom_all_gather``), counting
    the bytes of every gathered (unsharded) buffer."""

    def __init__(self):
        self.bytes = 0
        self.calls = 0

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor, input_tensor, group, async_op=False):
        import torch.distributed as dist
        self.bytes += output_tensor.numel() * output_tensor.element_size()
        self.calls += 1
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in 2.13
        return gather(output_tensor, input_tensor, group=group, async_op=async_op)


class Sharding:
    """The FSDP2 units of a sharded model: which layers each holds, the dtype each all-gathers,
    and the bytes all-gathered so far (``all_gathered_bytes()``, whole unsharded buffers)."""

    def __init__(self, model: nn.Module, units: dict[str, list[str]], param_dtype: str):
        self.model = model
        self.units = units  # unit module name ("" = root) -> the layers whose parameters it holds
        self.param_dtype = param_dtype
        modules = dict(model.named_modules())
        self._modules = {u: modules[u] for u in units}
        self._counters = {}
        for u, m in self._modules.items():
            counter = _CountingAllGather()
            m.set_custom_all_gather(counter)
            self._counters[u] = counter
        self.dtypes: dict[str, torch.dtype] = {u: torch.float32 for u in units}
        self._taken = 0

    def all_gathered_bytes(self) -> dict[str, int]:
        """Bytes all-gathered so far per unit (the unsharded buffer, as every rank receives it)."""
        return {u: c.bytes for u, c in self._counters.items()}

    def forward_only_done(self) -> None:
        """After forward passes without backward (evaluation): FSDP2 keeps their module order
        for the next backward's prefetch, which would all-gather a unit once more; reset it."""
        self.model.reset_iter_state()

    def take_step_bytes(self) -> int:
        """Bytes all-gathered (all units) since the last call: one step's, called once a step."""
        total = sum(self.all_gathered_bytes().values())
        step, self._taken = total - self._taken, total
        return step

    def unit_dtype(self, plan: Plan, unit: str) -> torch.dtype:
        """The dtype ``unit`` all-gathers under ``plan`` (see :func:`_unit_dtype`)."""
        return _unit_dtype(self.param_dtype, self.units[unit], plan)

    def follow(self, plan: Plan) -> dict[str, torch.dtype]:
        """Set every unit's all-gather dtype for ``plan`` (call between steps, with every unit
        resharded); returns the units whose dtype changed."""
        changed = {}
        for u, m in self._modules.items():
            dtype = self.unit_dtype(plan, u)
            if dtype != self.dtypes[u]:
                _set_param_dtype(m, dtype)
                self.dtypes[u] = changed[u] = dtype
        return changed


def shard_model(model: nn.Module, units: str | Sequence[str] = "layers", *,
                param_dtype: str = "fp32", plan: Plan | None = None,
                reshard_after_forward: bool = True, mesh=None, layers: Sequence[str] = ()
                ) -> Sharding:
    """Apply ``fully_shard`` to each unit (bottom up) and to the root; returns the
    :class:`Sharding`. Call inside an initialised process group, before building the optimizer
    and the :class:`~adaprec.AdaptivePrecision` (both must see the sharded parameters).

    ``units``: ``"layers"`` (every adaprec layer its own unit), ``"root"`` (one unit), or
    module-name globs (``["blocks.*"]``: per transformer block). ``param_dtype``: ``"fp32"``,
    or ``"plan"`` (a unit all-gathers in its layers' 16-bit plan format; ``plan`` is the
    initial plan). ``layers``: extra layer globs, as for AdaptivePrecision.
    """
    from torch.distributed.fsdp import fully_shard
    if param_dtype not in PARAM_DTYPES:
        raise ValueError(f"fsdp param_dtype {param_dtype!r}: use one of {', '.join(PARAM_DTYPES)}")
    if is_fsdp(model):
        raise ValueError("the model is already sharded (fully_shard was applied); shard it once")
    layer_names = discover_layers(model, layers)
    unit_names = _unit_names(model, units, layer_names)
    owner = {}  # layer -> the innermost unit holding its parameters
    for layer in layer_names:
        inside = [u for u in unit_names if layer == u or layer.startswith(u + ".")]
        owner[layer] = max(inside, key=len) if inside else ""
    groups = {u: [n for n, o in owner.items() if o == u] for u in [*unit_names, ""]}
    plan = plan if plan is not None else Plan.uniform("fp32", layer_names)
    dtypes = {u: _unit_dtype(param_dtype, held, plan) for u, held in groups.items()}
    modules = dict(model.named_modules())
    for u in sorted(unit_names, key=lambda n: -n.count(".")):  # inner units first
        fully_shard(modules[u], mesh=mesh, reshard_after_forward=reshard_after_forward,
                    mp_policy=_policy(dtypes[u]))
    # the root casts the model's output back to fp32: the loss never sees a 16-bit unit's dtype
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward,
                mp_policy=_policy(dtypes[""], output_dtype=torch.float32))
    sharding = Sharding(model, groups, param_dtype)
    sharding.dtypes = dtypes
    return sharding


def _unit_dtype(param_dtype: str, layers: list[str], plan: Plan) -> torch.dtype:
    """A unit's all-gather dtype: its layers' 16-bit storage format when all of them run the
    same one (and ``param_dtype="plan"``), else fp32. A unit holding no layer (the root under
    per-layer units) stays fp32, so the model's inputs reach the first unit unrounded."""
    names = {get_format(plan.format_of(n)).name for n in layers}
    if param_dtype == "fp32" or len(names) != 1:
        return torch.float32
    return _STORAGE.get(names.pop(), torch.float32)


def _policy(dtype: torch.dtype, output_dtype: torch.dtype | None = None):
    from torch.distributed.fsdp import MixedPrecisionPolicy
    # param_dtype fp32 stated explicitly so that a unit after a 16-bit one gets fp32 inputs
    # (cast_forward_inputs); gradients are reduce-scattered in fp32 whatever is all-gathered
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32,
                                output_dtype=output_dtype, cast_forward_inputs=True)


def _set_param_dtype(module: nn.Module, dtype: torch.dtype) -> None:
    """Change a unit's all-gather dtype after ``fully_shard``: FSDP2 bakes the dtype into the
    unit's parameter group (and, after the first all-gather, into cached buffers), with no
    public setter. Between steps every group is sharded, so replacing the policy and dropping
    the cached buffers makes the next all-gather allocate them in the new dtype."""
    state = module._get_fsdp_state()
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None or not hasattr(state, "_mp_policy"):
        raise RuntimeError("this torch's FSDP2 keeps its mixed-precision state differently from "
                           "torch 2.13; use fsdp.param_dtype=fp32 (plans are still applied)")
    policy = dataclasses.replace(state._mp_policy, param_dtype=dtype)
    for group in groups:
        if not group.is_sharded:
            raise RuntimeError("a unit's all-gather dtype can change only between steps, with its "
                               "parameters resharded")
        group.mp_policy = policy
        for p in group.fsdp_params:
            p.mp_policy = policy
            p.all_gather_outputs = []
            if hasattr(p, "_unsharded_param"):
                del p._unsharded_param
        group._init_mp_dtypes()
    state._mp_policy = policy
