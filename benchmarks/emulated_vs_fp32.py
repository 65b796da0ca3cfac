"""Emulated 16-bit, fp8 and MX training steps vs plain fp32 steps, side by side.

    python -m benchmarks.emulated_vs_fp32 --threads 1            # ResNet-18 (batch 64) and the GPT (batch 32)
    python -m benchmarks.emulated_vs_fp32 --models gpt --arms fp32 emulated:bf16 emulated:mxfp8_e4m3

Each arm is one ``AdaptivePrecision`` setup (``executor:format``; ``fp32`` is plain fp32 through
the native executor, i.e. no adaprec work beyond its hooks) on a private copy of the same model
and batch. After warm-up the arms run interleaved (a, b, c, a, b, c, ...), so load from other
processes hits all arms alike; per model the script prints per-arm medians, min..max, and each
arm's median ratio to ``fp32``. Monitoring is off: this measures the executor, not the
statistics. ``--threads 1`` gives stable ratios on a shared machine (two busy cores make every
multi-threaded op wait for the other one).
"""
from __future__ import annotations

import argparse

import torch

from adaprec.controllers import Static

from .harness import base_parser, compare, machine_line, parse_with_threads, set_context
from .workloads import adaprec_step, workload

ARMS = ["fp32", "emulated:bf16", "emulated:fp16", "emulated:fp8_e4m3", "emulated:mxfp8_e4m3",
        "compiled:fp8_e4m3", "compiled:mxfp8_e4m3", "operands:mxfp8_e4m3"]
BATCH = {"resnet18": 64, "gpt": 32}


def arm(spec: str, model, x, y, device: torch.device):
    """A closure running one training step of ``model`` under ``spec`` (``executor:format``;
    ``compiled:format``: the emulated executor with fused rounding kernels; ``operands:format``:
    that, with ``gemm_rounding="operands"``)."""
    executor, _, fmt = spec.partition(":")
    if executor == "fp32":
        executor, fmt = "native", "fp32"
    options = None
    if executor == "compiled":
        executor, options = "emulated", {"compiled_rounding": True}
    elif executor == "operands":  # compiled, and linear layers' GEMMs round their own operands
        executor, options = "emulated", {"compiled_rounding": True, "gemm_rounding": "operands"}
    return adaprec_step(model, x, y, device, controller=Static(fmt), executor=executor,
                        executor_options=options)


def main() -> None:
    p: argparse.ArgumentParser = base_parser(__doc__.splitlines()[0])
    p.set_defaults(reps=5, warmup=1, batch=0)
    p.add_argument("--models", nargs="+", default=list(BATCH), choices=list(BATCH))
    p.add_argument("--arms", nargs="+", default=ARMS)
    args = parse_with_threads(p)
    device = torch.device(args.device)
    print(machine_line(device))
    for name in args.models:
        batch = args.batch or BATCH[name]
        model, x, y = workload(name, batch, device)
        print(f"## {name}, batch {batch}, {args.warmup} warm-up + {args.reps} interleaved reps")
        set_context(workload=name, batch=batch)
        compare({spec: arm(spec, model, x, y, device) for spec in args.arms}, device,
                args.reps, args.warmup, baseline=args.arms[0])


if __name__ == "__main__":
    main()
