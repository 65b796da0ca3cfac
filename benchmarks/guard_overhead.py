"""What the reliability features cost on a clean step.

    python -m benchmarks.guard_overhead [--model gpt] [--device cuda]

Candidates (one training step each, bf16 plan, monitor off so only the guard differs):
- ``guard``: adaprec's design. Clean steps pay only one RNG-state copy (to replay a bad step
  from the same dropout masks); the culprit is found by replaying a skipped step with
  finiteness hooks, so the cost lands on the rare bad step.
- ``isfinite hooks``: the rejected alternative, a per-layer ``isfinite(out).all()`` flag
  accumulated on the device every step (no host sync until the step's end).
- ``guard + checkpoint``: ``guard`` plus an atomic checkpoint every step (model, optimizer,
  adaprec state, RNG), i.e. ``trainer.checkpoint_every=1``, the most frequent setting.
Also printed: the RNG-state copy alone, as a share of the ``guard`` step.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adaprec import AdaptivePrecision
from adaprec.app.checkpoint import rng_state, save_checkpoint
from adaprec.controllers import Static
from benchmarks.harness import compare
from benchmarks.workloads import setup


def make_step(model, x, y, device, flags: bool = False, checkpoint: Path | None = None):
    """Like ``workloads.adaprec_step``, plus a replay callable, optional flags and checkpoint."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ap = AdaptivePrecision(model, controller=Static("bf16"), device_type=device.type, monitor_every=0)
    bad = torch.zeros((), device=device)
    if flags:
        def flag(module, args, out):
            if torch.is_tensor(out):
                bad.add_((~torch.isfinite(out)).any())  # stays on the device; returns None

        modules = dict(model.named_modules())
        for name in ap.layers:
            modules[name].register_forward_hook(flag)

    def fwd_bwd():
        with ap.autocast():
            out = model(x)
            loss = F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
        ap.backward(loss)

    def step():
        opt.zero_grad(set_to_none=True)
        fwd_bwd()
        ap.step(opt, replay=fwd_bwd)
        if flags:
            bad.item()  # the flags must be read to name a culprit
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                         "precision": ap.state_dict(), "rng": rng_state()})
    return step


def main():
    args, device, model, x, y = setup(__doc__)
    print(f"# {args.model}, batch {args.batch}, bf16 plan, monitor off")
    with tempfile.TemporaryDirectory() as tmp:
        med = compare({"guard": make_step(model, x, y, device),
                       "isfinite hooks": make_step(model, x, y, device, flags=True),
                       "guard + checkpoint": make_step(model, x, y, device,
                                                       checkpoint=Path(tmp) / "checkpoint.pt")},
                      device, args.reps, args.warmup, baseline="guard")
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        torch.get_rng_state()
    rng_s = (time.perf_counter() - t0) / n
    print(f"RNG-state copy per step: {rng_s * 1e6:.1f} us = {rng_s / med['guard']:.2e} of a guard step")


if __name__ == "__main__":
    main()
