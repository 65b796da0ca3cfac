"""Bytes FSDP2 all-gathers per training step under each plan (``fsdp.param_dtype=plan``), in 2
gloo processes on CPU: a bf16/fp16 unit gathers its weights in 16 bits, everything else in fp32.
    python -m benchmarks.fsdp_allgather [--units layers|blocks] [--ranks 2]
Counted through FSDP2's ``set_custom_all_gather`` (the unsharded buffers, padding included),
forward and backward of one step, on a GPT (2 blocks, width 128) after one warm-up step."""
import argparse
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adaprec import AdaptivePrecision
from adaprec.controllers import FixedPlan
from adaprec.models.gpt import GPT
from adaprec.runtime.fsdp import shard_model
from adaprec.runtime.layers import discover_layers

PLANS = {  # name -> layer-name glob -> format (the rest fp32)
    "fp32": {}, "bf16": {"*": "bf16"}, "fp16": {"*": "fp16"},
    "blocks bf16, rest fp32": {"blocks.*": "bf16"},
    "blocks.0 bf16, rest fp32": {"blocks.0.*": "bf16"},
    "fp8_e4m3 (emulated)": {"*": "fp8_e4m3"},
}


def measure(rank: int, world: int, port: int, units: str, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name, rule in PLANS.items():
            torch.manual_seed(0)
            model = GPT(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=128)
            sharding = shard_model(model, "layers" if units == "layers" else ["blocks.*"],
                                   param_dtype="plan")
            ap = AdaptivePrecision(model, controller=FixedPlan(rule), executor="emulated", monitor_every=0)
            sharding.follow(ap.plan)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            x = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(rank))
            for _ in range(2):  # the second step is measured
                sharding.take_step_bytes()
                with ap.autocast():
                    loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 64), x.reshape(-1))
                ap.backward(loss)
                ap.step(opt)
            out[name] = (sharding.take_step_bytes(), sum(p.numel() for p in model.parameters()))
    finally:
        dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", choices=("layers", "blocks"), default="layers")
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    from tests.distributed_loops import free_port
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_entry, args=(args.ranks, free_port(), args.units, out), nprocs=args.ranks,
                           join=True, start_method="spawn")
        results = dict(out)
    base = results["fp32"][0]
    print(f"# GPT 2x128 ({results['fp32'][1]:,} parameters), fsdp units={args.units}, {args.ranks} ranks, "
          f"layers: {len(discover_layers(GPT(64, 32, 2, 4, 128)))}")
    print(f"{'plan':28s} {'all-gathered bytes/step':>24s} {'vs fp32':>8s}")
    for name, (nbytes, _) in results.items():
        print(f"{name:28s} {nbytes:>24,d} {nbytes / base:>8.3f}")


def _entry(rank, world, port, units, out):
    # rank 0 reports (every rank gathers the same bytes)
    local: dict = {}
    measure(rank, world, port, units, local)
    if rank == 0:
        out.update(local)


if __name__ == "__main__":
    main()
