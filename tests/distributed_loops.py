"""What the distributed tests share: a controller whose choices depend on the rank, a free port,
and the FSDP2 training loop each of two gloo processes runs (and one process as the reference):
a small MLP, the same global batch each step split over the ranks."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import Static, Threshold
from adaprec.runtime.fsdp import shard_model
from adaprec.runtime.layers import discover_layers

STEPS, GLOBAL_BATCH = 6, 32


class RandomPlan:
    """Choices seeded with the rank: plans would differ between ranks unless rank 0's plan is
    broadcast."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.layers: list[str] = []
        self.seen_skips: list[bool] = []

    def setup(self, context):
        self.layers = list(context.layers)

    def observe(self, record):
        self.seen_skips.append(record.skipped)

    def decide(self, step):
        picks = torch.randint(0, 2, (len(self.layers),), generator=self.gen).tolist()
        return Plan({n: ("fp32", "bf16")[k] for n, k in zip(self.layers, picks)}, default="fp32")

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.gen.set_state(state["gen"])


def controller(kind: str, rank: int):
    if kind == "random":
        return RandomPlan(seed=100 + rank)
    if kind == "threshold":  # starts bf16; bf16's rounding error (~2e-3) exceeds the rule: -> fp32
        return Threshold(formats=("bf16", "fp32"), start="bf16", rounding_err_max=1e-3,
                         interval=2, cooldown=0, patience=100)
    return Static(kind)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # 33 rows: dimension 0 does not divide over two ranks (FSDP2 pads the second shard)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 33), nn.ReLU(),
                         nn.Linear(33, 5))


def train_loop(rank: int, world: int, kind: str = "fp32", fsdp: bool = True,
               param_dtype: str = "fp32", executor: str = "emulated", steps: int = STEPS) -> dict:
    """One process's run; returns plan hashes, losses, step-0 layer statistics, bytes all-gathered
    per step and the final full parameters."""
    model = make_model()
    ctrl = controller(kind, rank)
    sharding = None
    if fsdp:
        # the initial plan's formats at wrap time; follow() keeps them in step with the plan
        plan0 = Plan.uniform("bf16" if kind in ("bf16", "threshold") else "fp32",
                             discover_layers(model))
        sharding = shard_model(model, "layers", param_dtype=param_dtype, plan=plan0)
    ap = AdaptivePrecision(model, controller=ctrl, executor=executor, monitor_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = torch.Generator().manual_seed(7)
    out = {"hashes": [], "losses": [], "bytes": [], "dtypes": [], "stats0": None}
    for _ in range(steps):
        x = torch.randn(GLOBAL_BATCH, 12, generator=data)
        y = torch.randint(0, 5, (GLOBAL_BATCH,), generator=data)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        if sharding is not None:
            sharding.follow(ap.plan)  # between steps: all-gather in the plan's 16-bit formats
            out["dtypes"].append({u: str(d) for u, d in sharding.dtypes.items()})
            before = sum(sharding.all_gathered_bytes().values())
        opt.zero_grad(set_to_none=True)
        out["hashes"].append(ap.plan.hash)
        with ap.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        ap.backward(loss)
        rec = ap.step(opt)
        out["losses"].append(rec.loss)
        if sharding is not None:
            out["bytes"].append(sum(sharding.all_gathered_bytes().values()) - before)
        if out["stats0"] is None:
            out["stats0"] = {n: (s.weight, s.wgrad) for n, s in rec.stats.items()}
    out["params"] = [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                     for p in model.parameters()]
    return out


def _worker(rank: int, world: int, port: int, out_dir: str, kwargs: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(train_loop(rank, world, **kwargs), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(out_dir: Path, **kwargs) -> tuple[dict, dict]:
    """``train_loop`` in two gloo processes; both ranks' results."""
    mp.spawn(_worker, args=(2, free_port(), str(out_dir), kwargs), nprocs=2, join=True)
    return tuple(torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1))
