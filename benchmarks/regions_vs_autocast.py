"""Per-layer autocast regions (an all-bf16 plan) against one global torch.autocast region.
    python benchmarks/regions_vs_autocast.py [--model gpt] [--device cuda]
Both run the same bf16 kernels (the plans are bit-identical, see tests/test_executor.py);
the ratio is the cost of the hooks that open and close each layer's region."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from adaprec import AdaptivePrecision
from adaprec.controllers import Static
from benchmarks.harness import base_parser, compare, machine_line
from benchmarks.workloads import workload


def adaprec_step(model, x, y, device):
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ap = AdaptivePrecision(model, controller=Static("bf16"), device_type=device.type, monitor_every=0)

    def step():
        opt.zero_grad(set_to_none=True)
        with ap.autocast():
            out = model(x)
            loss = F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
        ap.backward(loss)
        ap.step(opt)
    return step


def autocast_step(model, x, y, device):
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(x)
            loss = F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
        loss.backward()
        opt.step()
    return step


def main():
    p = base_parser(__doc__)
    p.add_argument("--model", default="resnet18", choices=["resnet18", "gpt"])
    args = p.parse_args()
    device = torch.device(args.device)
    print(machine_line(device))
    model, x, y, _ = workload(args.model, args.batch, device)
    print(f"# {args.model}, batch {args.batch}, monitor off")
    compare({"global autocast": autocast_step(model, x, y, device),
             "per-layer regions": adaprec_step(model, x, y, device)},
            device, args.reps, args.warmup, baseline="global autocast")


if __name__ == "__main__":
    main()
