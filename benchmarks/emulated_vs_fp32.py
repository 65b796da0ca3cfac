"""Emulated fp16 (and other) training steps vs plain fp32 steps, side by side.

    python benchmarks/emulated_vs_fp32.py                       # ResNet-18, batch 64, 32x32, CPU
    python benchmarks/emulated_vs_fp32.py --reps 10 --threads 2 --arms fp32 emulated:fp16 auto:bf16

Each arm is one ``AdaptivePrecision`` setup (``executor:format``; ``fp32`` is plain fp32 through
the native executor, i.e. no adaprec work beyond its hooks). After warm-up the arms run
interleaved (a, b, c, a, b, c, ...), so load from other processes hits all arms alike; the
script prints per-arm medians, min/max, and each arm's median ratio to ``fp32``. Monitoring is
off (``monitor_every=0``): this measures the executor, not the statistics.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from adaprec import AdaptivePrecision
from adaprec.controllers import Static
from adaprec.models import resnet18


def make_arm(spec: str, device: torch.device, batch: int, size: int):
    """A closure running one training step of ResNet-18 under ``spec``."""
    executor, _, fmt = spec.partition(":")
    if executor == "fp32":
        executor, fmt = "native", "fp32"
    torch.manual_seed(0)
    model = resnet18().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ap = AdaptivePrecision(model, controller=Static(fmt or "fp32"), device_type=device.type,
                           executor=executor, monitor_every=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ap.autocast():
            loss = F.cross_entropy(model(x), y)
        ap.backward(loss)
        ap.step(opt)  # reads loss and found_inf back: the step is complete when it returns
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--arms", nargs="+", default=["fp32", "emulated:fp16"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"load avg {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; device {device}")
    print(f"ResNet-18, batch {args.batch}, {args.size}x{args.size}, {args.warmup} warm-up + "
          f"{args.reps} interleaved reps")
    arms = {spec: make_arm(spec, device, args.batch, args.size) for spec in args.arms}
    for step in arms.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {spec: [] for spec in arms}
    for _ in range(args.reps):
        for spec, step in arms.items():
            times[spec].append(step())
    base = statistics.median(times[args.arms[0]])
    print(f"{'arm':<16}{'median s':>10}{'min s':>9}{'max s':>9}{'ratio':>8}")
    for spec, ts in times.items():
        med = statistics.median(ts)
        print(f"{spec:<16}{med:>10.3f}{min(ts):>9.3f}{max(ts):>9.3f}{med / base:>8.2f}")
    print(f"load avg after: {os.getloadavg()[0]:.1f} (other processes share these cores)")


if __name__ == "__main__":
    main()
