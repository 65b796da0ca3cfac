"""Validate the cost model against measurement: random per-layer plans, predicted vs measured.

    python -m adaprec.tools.calibrate --threads 1 --clock process --out /tmp/local.yaml
    python -m benchmarks.cost_validation --profile /tmp/local.yaml --threads 1 --clock process
    python -m benchmarks.cost_validation --device cuda --profile h100       # on a GPU (wall clock)

For each model (``--models``: the SmallCNN at 32x32 and the benchmark GPT by
default; ``resnet18`` at ``--image-size``) it draws ``--plans`` random per-layer plans (each
plan first draws the share of its layers that leave fp32, then a format per such layer from
``--formats``), plus all-fp32 and all-bf16, and runs every plan with AdaptivePrecision and the
executor each format really uses here (``--executor auto``: on a CPU without AVX512-BF16/FP16,
16-bit is emulated), SGD with momentum. Plans are interleaved and repeated; each timing is one
step after an untimed step under the same plan; the fastest of ``--reps`` counts (``--stat
median`` for the median): on a shared machine other processes only ever add time, even to
process CPU time (caches, memory bandwidth), as in ``adaprec.tools.calibrate``. Predicted:
``CostModel.price(plan, profile)`` (the one pricing function controllers and budgets use).
Prints per plan predicted and measured ms and the error, then the median |error| and Spearman's
rank correlation (scipy) per model. On CUDA it also prints modeled vs measured peak memory
(``torch.cuda.max_memory_allocated``).
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import subprocess

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from adaprec import AdaptivePrecision
from adaprec.controllers._common import emitted_plan
from adaprec.cost import CostModel, load_profile
from adaprec.runtime.plan import Plan
from adaprec.tools.calibrate import CLOCKS
from benchmarks.workloads import workload

MODELS = ("cnn", "gpt", "resnet18")


class FixedPlan:
    """A controller whose plan the benchmark sets (decide() returns it unchanged)."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def observe(self, record) -> None:
        pass

    def decide(self, step: int) -> Plan:
        return self.plan

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))


def random_plans(layers: list[str], formats: list[str], n: int, seed: int) -> list[Plan]:
    """All-fp32, all-bf16, then ``n`` random plans whose low-precision share is itself random."""
    rng = random.Random(seed)
    low = [f for f in formats if f != "fp32"]
    plans = [Plan.uniform("fp32", layers)] + ([Plan.uniform("bf16", layers)] if "bf16" in low else [])
    while len(plans) < n + 2 and low:
        share = rng.random()
        plans.append(emitted_plan({layer: rng.choice(low) if rng.random() < share else "fp32"
                                   for layer in layers}))
    return plans


def measure(model, x, y, plans: list[Plan], executor: str, device: torch.device, reps: int,
            clock: str, seed: int, stat: str = "min") -> tuple[list[float], list[float | None]]:
    """(seconds per step, fastest or median over reps; peak CUDA bytes or None) per plan,
    plans interleaved."""
    now = CLOCKS[clock]
    controller = FixedPlan(plans[0])
    ap = AdaptivePrecision(model, controller=controller, device_type=device.type, executor=executor,
                           monitor_every=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with ap.autocast():
            loss = loss_fn(model(x), y)
        ap.backward(loss)
        ap.step(opt)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: list[list[float]] = [[] for _ in plans]
    peak: list[float | None] = [None] * len(plans)
    order = list(range(len(plans)))
    rng = random.Random(seed + 1)
    try:
        for _ in range(reps):
            rng.shuffle(order)
            for i in order:
                controller.plan = plans[i]
                ap.set_plan(plans[i], reason="benchmark")
                step()  # untimed: the first step after a switch builds rounding state
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = now()
                step()
                times[i].append(now() - t0)
                if device.type == "cuda":
                    peak[i] = float(torch.cuda.max_memory_allocated(device))
    finally:
        ap.remove()
    reduce = min if stat == "min" else statistics.median
    return [reduce(t) for t in times], peak


def validate(name: str, args, profile, device: torch.device) -> dict[str, float]:
    model, x, y = workload(name, args.batch if args.batch else (8 if name == "gpt" else 32), device,
                           args.image_size)
    ap = AdaptivePrecision(model, device_type=device.type, monitor_every=0)
    layers = ap.layers
    ap.remove()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    cm = CostModel.count(model, (x,), loss_fn=lambda out: loss_fn(out, y), layers=layers, optimizer=opt)
    plans = random_plans(layers, args.formats, args.plans, args.seed)
    predicted = [cm.price(p, profile).total for p in plans]
    measured, peak = measure(model, x, y, plans, args.executor, device, args.reps, args.clock, args.seed,
                             args.stat)
    errors = [(p - m) / m for p, m in zip(predicted, measured)]
    print(f"\n## {name}: {len(layers)} layers, {cm.total_flops / 1e9:.3f} GFLOP/step, "
          f"{len(plans)} plans, profile {profile.name}, executor {args.executor}")
    print(f"{'plan':>4} {'low %':>6} {'predicted ms':>13} {'measured ms':>12} {'error':>8}"
          + ("  model MB  peak MB" if device.type == "cuda" else ""))
    for i, (plan, p, m, e) in enumerate(zip(plans, predicted, measured, errors)):
        low = 100 * sum(plan.format_of(layer) != "fp32" for layer in layers) / len(layers)
        mem = (f"  {cm.memory(plan, profile).total / 2**20:8.1f} {peak[i] / 2**20:8.1f}"
               if peak[i] is not None else "")
        print(f"{i:>4} {low:6.0f} {p * 1e3:13.2f} {m * 1e3:12.2f} {100 * e:+7.1f}%{mem}")
    med = statistics.median(abs(e) for e in errors)
    rho = float(spearmanr(predicted, measured).statistic)
    print(f"{name}: median |error| {100 * med:.1f}%  Spearman {rho:.3f}  "
          f"(goals: <= 20 %, >= 0.9)")
    return {"median_abs_error": med, "spearman": rho}


def main(argv=None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=["cnn", "gpt"])
    p.add_argument("--profile", default="local", help="profile name in conf/cost/ or a YAML path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--executor", default="auto", choices=["auto", "native", "emulated"])
    p.add_argument("--formats", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--plans", type=int, default=20, help="random plans per model (plus fp32, bf16)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=0, help="0: 32 images / 8 sequences of 64 tokens")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stat", choices=["min", "median"], default="min", help="over --reps per plan")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=list(CLOCKS), default="wall")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "process" and device.type != "cpu":
        p.error("--clock process measures CPU time; use --clock wall on a GPU")
    profile = load_profile(args.profile)
    print(f"# {_cpu_model()} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else device} | "
          f"clock {args.clock}")
    return {name: validate(name, args, profile, device) for name in args.models}


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
