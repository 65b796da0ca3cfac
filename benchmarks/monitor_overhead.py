"""Monitor overhead: the same bf16 plan with statistics every step, at the default interval
(every 10 steps), and off; every step also with ``monitor.exact=false`` (absmax from the sample).   python -m benchmarks.monitor_overhead [--model gpt] [--device cuda]
Each candidate trains its own model copy; the interval candidate samples 1 step in 10."""
from .harness import compare
from .workloads import adaprec_step, setup

if __name__ == "__main__":
    args, device, model, x, y = setup(__doc__)
    print(f"# {args.model}, batch {args.batch}, bf16 plan; 'interval' = monitor.every=10")
    compare({"off": adaprec_step(model, x, y, device, monitor_every=0, executor=args.executor),
             "every step": adaprec_step(model, x, y, device, monitor_every=1, executor=args.executor),
             "every step, exact=false": adaprec_step(model, x, y, device, monitor_every=1, executor=args.executor,
                                                     monitor_exact=False),
             "interval": adaprec_step(model, x, y, device, monitor_every=10, executor=args.executor)},
            device, args.reps, args.warmup, baseline="off")
