"""Per-layer autocast regions (an all-bf16 plan) against one global torch.autocast region.
    python -m benchmarks.regions_vs_autocast [--model gpt] [--device cuda]
Both run the same bf16 kernels (the plans are bit-identical, see tests/test_executor.py);
the ratio is the cost of the hooks that open and close each layer's region (both native
whatever --executor says: on a CPU without bf16 instructions both are slow alike)."""
import torch

from .harness import compare
from .workloads import adaprec_step, plain_step, setup

if __name__ == "__main__":
    args, device, model, x, y = setup(__doc__)
    print(f"# {args.model}, batch {args.batch}, monitor off")
    compare({"global autocast": plain_step(model, x, y, device, torch.bfloat16),
             "per-layer regions": adaprec_step(model, x, y, device, executor="native")},
            device, args.reps, args.warmup, baseline="global autocast")
