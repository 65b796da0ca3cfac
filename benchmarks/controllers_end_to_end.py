"""End to end: adaptive controllers (threshold, bandit) against static bf16 and fp32 step time,
monitor at its default interval, decisions every 10 steps as in a real run.
    python -m benchmarks.controllers_end_to_end [--model gpt] [--device cuda]
Each candidate trains its own model copy; every timed repetition is ``--steps`` consecutive
steps, so the sampled step and the decision step are inside each measurement."""
from adaprec.controllers import Bandit, Static, Threshold

from .harness import compare
from .workloads import adaprec_step, setup


def repeated(step, n):
    def run():
        for _ in range(n):
            step()
    return run


if __name__ == "__main__":
    args, device, model, x, y = setup(__doc__, lambda p: p.add_argument("--steps", type=int, default=10))
    print(f"# {args.model}, batch {args.batch}, {args.steps} steps per repetition, monitor.every=10")
    make = {"static fp32": lambda: Static("fp32"), "static bf16": lambda: Static("bf16"),
            "threshold": lambda: Threshold(interval=10), "bandit (ucb1)": lambda: Bandit(interval=10)}
    compare({name: repeated(adaprec_step(model, x, y, device, ctrl(), monitor_every=10, executor=args.executor), args.steps)
             for name, ctrl in make.items()},
            device, args.reps, args.warmup, baseline="static bf16")
