"""Predicted vs measured bf16 speed-up of a ResNet-18 training step on this machine.

    python -m adaprec.tools.calibrate --out local_profile.yaml          # or use conf/cost/local.yaml
    python -m benchmarks.cost_model_resnet18 --profile local_profile.yaml

Model: CIFAR-style ResNet-18 (adaprec.models.resnet18: 3x3 stem, no max-pool, [2,2,2,2]),
batch 64 of 32x32 inputs, SGD with momentum. Measured: median step time of plain fp32 vs one
global ``torch.autocast(dtype=bfloat16)`` (what an all-bf16 plan runs as), interleaved after
warm-up so machine load hits both alike. Predicted: ``CostModel.price`` of the all-fp32 and
all-bf16 plans on the profile. Prints both ratios and the relative error.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from adaprec.tools.calibrate import CLOCKS
from adaprec.cost import CostModel, load_profile
from adaprec.models.resnet import resnet18


def train_step(model, opt, x, y, dtype: torch.dtype | None) -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def measure(model, x, y, reps: int, warmup: int, clock: str = "wall") -> dict[str, float]:
    """Median seconds per training step, fp32 and bf16 interleaved."""
    now = CLOCKS[clock]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    for _ in range(warmup):
        for dt in dtypes.values():
            train_step(model, opt, x, y, dt)
    times: dict[str, list[float]] = {k: [] for k in dtypes}
    for _ in range(reps):
        for name, dt in dtypes.items():
            t0 = now()
            train_step(model, opt, x, y, dt)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(now() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="local", help="profile name in conf/cost/ or a YAML path")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall time, or this process's CPU time (robust on a busy machine; use --threads 1)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = resnet18(3, 10).to(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    profile = load_profile(args.profile)
    cm = CostModel.count(model, (x,), loss_fn=lambda out: F.cross_entropy(out, y))
    fp32, bf16 = cm.price("fp32", profile), cm.price("bf16", profile)
    measured = measure(model, x, y, args.reps, args.warmup, args.clock)
    predicted_speedup = fp32.total / bf16.total
    measured_speedup = measured["fp32"] / measured["bf16"]
    print(f"profile {profile.name}: {len(cm.layers)} layers, {cm.total_flops / 1e9:.1f} GFLOP per step")
    print(f"modeled  step: fp32 {fp32.total * 1e3:8.1f} ms   bf16 {bf16.total * 1e3:8.1f} ms "
          f"(casts {bf16.cast * 1e3:.1f} ms)   speed-up {predicted_speedup:.2f}x")
    print(f"measured step: fp32 {measured['fp32'] * 1e3:8.1f} ms   bf16 {measured['bf16'] * 1e3:8.1f} ms "
          f"(median of {args.reps}, interleaved, {args.clock} clock)   speed-up {measured_speedup:.2f}x")
    print(f"predicted / measured speed-up: {predicted_speedup / measured_speedup:.3f} "
          f"({(predicted_speedup / measured_speedup - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
