"""DDP on CPU (gloo, 2 processes): every rank applies rank 0's plan at every step, skips
together, and matches a single-process run with the same global batch.

Tolerance: the two ranks' gradients are averaged by an all-reduce, so the sum runs in a
different order than the single process's one batch-mean; in fp32 that moves the loss by a few
ulps per step (rtol 1e-5 over these steps), and a bf16 layer can turn such a difference into
one bf16 rounding step (rtol 1e-2 then)."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from adaprec import AdaptivePrecision
from tests.distributed_loops import RandomPlan, free_port

ROOT = Path(__file__).resolve().parents[1]
STEPS, GLOBAL_BATCH = 6, 32


def _train_loop(rank: int, world: int, nan_step: int | None = None):
    """The loop each process runs; returns (plan hashes, losses, skipped flags, final params)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 5))
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    ap = AdaptivePrecision(net, controller=RandomPlan(seed=100 + rank), monitor_every=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if nan_step is not None and rank == world - 1:  # only the last rank sees the NaN
        model[2].register_forward_hook(lambda m, a, o: o * float("nan")
                                       if ap.step_count == nan_step else o)
    data = torch.Generator().manual_seed(7)
    hashes, losses, skipped = [], [], []
    for _ in range(STEPS):
        x, y = torch.randn(GLOBAL_BATCH, 12, generator=data), torch.randint(0, 5, (GLOBAL_BATCH,), generator=data)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]

        def fwd_bwd():
            with ap.autocast():
                loss = nn.functional.cross_entropy(net(x), y)
            ap.backward(loss)

        opt.zero_grad(set_to_none=True)
        hashes.append(ap.plan.hash)
        fwd_bwd()
        rec = ap.step(opt, replay=fwd_bwd)
        losses.append(rec.loss)
        skipped.append((rec.skipped, rec.nonfinite_layer))
    return hashes, losses, skipped, [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, world: int, port: int, out_dir: str, nan_step):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(_train_loop(rank, world, nan_step), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("nan_step", [None, 3])
def test_two_gloo_ranks_share_plans_and_match_one_process(tmp_path, nan_step):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), nan_step), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    single = _train_loop(0, 1, nan_step=None)
    assert r0[0] == r1[0]                     # identical plans on both ranks at every step
    assert len(set(r0[0])) > 1                # and they did change
    assert r0[0] == single[0]                 # rank 0 decides, as one process would
    # same logged (averaged) loss, same skips on both ranks
    torch.testing.assert_close(torch.tensor(r0[1]), torch.tensor(r1[1]), rtol=0, atol=0, equal_nan=True)
    assert r0[2] == r1[2]
    for a, b in zip(r0[3], r1[3]):
        assert torch.equal(a, b)              # replicas stay identical
    if nan_step is None:
        torch.testing.assert_close(torch.tensor(r0[1]), torch.tensor(single[1]), rtol=1e-2, atol=0)
        for a, b in zip(r0[3], single[3]):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)
    else:  # the NaN on rank 1 made both ranks skip, and rank 1's culprit is reported on both
        assert r0[2][nan_step] == (True, "2") and sum(s for s, _ in r0[2]) == 1


@pytest.mark.slow
def test_torchrun_cli_matches_single_process_run(tmp_path):
    common = ["model=mlp", "model.hidden=[32]", "dataset.image_size=8", "controller=fp32",
              "trainer.batch_size=32", "trainer.max_steps=5", "trainer.eval_every=0",
              "trainer.eval_batches=1", "trainer.progress=false", "monitor.every=2",
              "trainer.checkpoint_every=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "adaprec.run", *common, f"hydra.run.dir={single}"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", "-m", "adaprec.run", *common,
                           f"hydra.run.dir={ddp}"], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = pd.read_csv(single / "steps.csv"), pd.read_csv(ddp / "steps.csv")
    assert a.step.tolist() == b.step.tolist() == list(range(5))  # rank 0 alone wrote, once
    assert a.plan_hash.tolist() == b.plan_hash.tolist()
    torch.testing.assert_close(torch.tensor(b.loss.values), torch.tensor(a.loss.values),
                               rtol=1e-5, atol=0)
    assert (ddp / "checkpoint.pt").exists()
