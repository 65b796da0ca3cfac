"""Data-parallel (DDP) plumbing: every rank applies the same plan at every step.

Policy: **rank 0 decides and broadcasts.** Every rank's controller observes its own (local)
statistics, but the plan in force is the one rank 0's controller returned, broadcast to all
ranks before the next forward. This is deterministic and cheap (one small broadcast per step)
and needs no per-controller reduction logic; its cost is that rank 0 decides from its shard of
the batch only. The loss scaler's found-inf and the logged loss are reduced across ranks in one
all-reduce before the skip decision, so all ranks skip (and back off) together. Only rank 0
writes checkpoints and run-dir tables. Outside ``torch.distributed`` everything is a no-op.

Under FSDP2 (``adaprec.runtime.fsdp``) the same policy holds; in addition a parameter (and its
gradient) is a DTensor of which each rank holds one shard, so statistics are taken of the local
shard and the raw vectors are summed across ranks (:func:`combine_shard_stats`) into statistics
of the whole tensor.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from adaprec.numerics.stats import combine_raw

__all__ = ["is_distributed", "rank", "world_size", "is_main_process", "unwrap", "wrap_ddp",
           "reduce_loss_and_found_inf", "broadcast_object", "gather_objects", "maybe_init_from_env",
           "export_submitit_env", "init_process_group",
           "local_tensor", "is_sharded", "combine_shard_stats"]


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel and ``torch.compile`` wrappers, in any nesting
    (layer names then have no ``module.`` or ``_orig_mod.``). Hooks on the inner model still
    run when the wrapper is called."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` inside a multi-rank process group, else ``model``."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def reduce_loss_and_found_inf(loss: torch.Tensor, found_inf: torch.Tensor) -> torch.Tensor:
    """``[mean loss over ranks, number of ranks that found inf/NaN]`` in one all-reduce."""
    both = torch.stack([loss.float().reshape(()), (found_inf > 0).float().reshape(())])
    if is_distributed():
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        both[0] /= dist.get_world_size()
    return both


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; a no-op when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    box: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(box, obj)
    return box


def maybe_init_from_env(device_type: str = "cpu") -> bool:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1) or as one
    of several SLURM tasks of a submitit job (Hydra's ``submitit_slurm`` launcher with
    ``tasks_per_node``/``nodes``: :func:`export_submitit_env`): gloo on CPU, nccl on CUDA, each
    rank on the GPU of its ``LOCAL_RANK``. Returns whether this process is one of several ranks."""
    export_submitit_env()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    init_process_group(device_type)
    return True


def init_process_group(device_type: str = "cpu") -> None:
    """The default process group from torchrun's variables (also with one rank), unless one
    exists: gloo on CPU, nccl on CUDA, this process on the GPU of its ``LOCAL_RANK``."""
    if dist.is_initialized():
        return
    if device_type == "cuda" and torch.cuda.is_available():  # "cuda" then means this rank's GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def export_submitit_env() -> bool:
    """Inside a multi-task submitit SLURM job that no ``torchrun`` started, set ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` from SLURM's variables
    (submitit's ``TorchDistributedEnvironment``: the first node is the master). Returns whether
    it did."""
    if "WORLD_SIZE" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm" \
            or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return False
    from submitit.helpers import TorchDistributedEnvironment
    # one GPU per task is SLURM's job (gpus_per_task / the launcher); LOCAL_RANK picks it otherwise
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def is_sharded(t: torch.Tensor | None) -> bool:
    """True for a DTensor sharded over its mesh (an FSDP2 parameter or its gradient)."""
    from torch.distributed.tensor import DTensor  # torch.distributed.tensor imports slowly
    return isinstance(t, DTensor) and any(p.is_shard() for p in t.placements)


def local_tensor(t: torch.Tensor | None) -> torch.Tensor | None:
    """This rank's shard of a DTensor; any other tensor (or None) as it is."""
    return t.to_local() if t is not None and hasattr(t, "to_local") else t


def combine_shard_stats(raw: torch.Tensor) -> torch.Tensor:
    """Raw statistics rows (``[k, RAW_LEN]``, see ``adaprec.numerics.stats``) of each rank's
    shard of k tensors -> the rows of the whole tensors: one all-gather, then counts and sums
    add and absmax takes the max, exactly as a tensor's parts combine on one process."""
    if not is_distributed() or raw.numel() == 0:
        return raw
    parts = [torch.empty_like(raw) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, raw.contiguous())
    stacked = torch.stack(parts, 1)  # [k, ranks, RAW_LEN]
    return torch.stack([combine_raw(list(row)) for row in stacked])
