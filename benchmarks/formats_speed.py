"""Emulated block formats (mxfp8, nvfp4, ...) vs plain fp32 training steps, side by side.

    python -m benchmarks.formats_speed --model resnet18
    python -m benchmarks.formats_speed --model gpt --formats bf16 mxfp8_e4m3 --reps 5

Candidates run interleaved after warm-up (benchmarks.harness.compare); ``fp32`` is a plain
fp32 step without adaprec, every other candidate is the emulated executor with one format for
every layer. The target of issue 18 is mxfp8_e4m3 at most 1.5x fp32.
"""
from __future__ import annotations

from adaprec.controllers import Static

from .harness import compare
from .workloads import adaprec_step, plain_step, setup


def main() -> None:
    def extra(p):
        p.add_argument("--formats", nargs="+", default=["bf16", "fp8_e4m3", "mxfp8_e4m3", "nvfp4"])
    args, device, model, x, y = setup(__doc__.splitlines()[0], extra)
    candidates = {"fp32": plain_step(model, x, y, device)}
    for f in args.formats:
        candidates[f"emulated:{f}"] = adaprec_step(model, x, y, device, Static(f), executor="emulated")
    print(f"{args.model}, batch {args.batch}; {args.warmup} warm-up + {args.reps} interleaved reps")
    compare(candidates, device, args.reps, args.warmup, baseline="fp32")


if __name__ == "__main__":
    main()
