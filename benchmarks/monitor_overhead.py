"""Monitor overhead: the same bf16 plan with statistics every step, at the default interval
(every 10 steps), and off; every step also with ``monitor.sample=2048`` (rates and errors from
2048 elements per tensor instead of 16384) and with ``monitor.exact=false`` (absmax from the
sample too).   python -m benchmarks.monitor_overhead [--model gpt] [--device cuda]
Each candidate trains its own model copy; the interval candidate samples 1 step in 10.

Where a sampled step goes (2-core AVX2 EPYC, one thread, process time, 2026-12-01; the GPT of
the benchmark, batch 32, ~126 probed tensors and 1.3M sampled elements): the batched reduction
of every sample in every judged format (fp32, bf16, fp16) about half of the overhead, the
probes (strided sample copies, exact absmax by ``aminmax`` over each whole activation and
gradient) about a quarter, the fp32 shadow recomputation of 2 rows and the parameter probes the
rest. The reduction costs ~40 elementwise passes over the samples, so its time scales with
``monitor.sample``; ResNet-18's step is long enough that the same fixed cost is a few percent.
"""
from .harness import compare
from .workloads import adaprec_step, setup

if __name__ == "__main__":
    args, device, model, x, y = setup(__doc__)
    print(f"# {args.model}, batch {args.batch}, bf16 plan; 'interval' = monitor.every=10")
    step = dict(executor=args.executor)
    compare({"off": adaprec_step(model, x, y, device, monitor_every=0, **step),
             "every step": adaprec_step(model, x, y, device, monitor_every=1, **step),
             "every step, sample=2048": adaprec_step(model, x, y, device, monitor_every=1,
                                                     monitor_sample=2048, **step),
             "every step, exact=false": adaprec_step(model, x, y, device, monitor_every=1,
                                                     monitor_exact=False, **step),
             "interval": adaprec_step(model, x, y, device, monitor_every=10, **step)},
            device, args.reps, args.warmup, baseline="off")
