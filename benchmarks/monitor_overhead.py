"""Monitor overhead: the same bf16 plan with statistics every step, at the default interval
(every 10 steps), and off.  python benchmarks/monitor_overhead.py [--model gpt] [--device cuda]

Each candidate is one training step of its own model copy; the interval candidate cycles
through 10 steps so 1 in 10 is sampled, as in a real run.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from adaprec import AdaptivePrecision
from adaprec.controllers import Static
from benchmarks.harness import base_parser, compare, machine_line
from benchmarks.workloads import workload


def make_step(model, x, y, every, task, device):
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ap = AdaptivePrecision(model, controller=Static("bf16"), device_type=device.type, monitor_every=every)

    def step():
        opt.zero_grad(set_to_none=True)
        with ap.autocast():
            out = model(x)
            loss = F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
        ap.backward(loss)
        ap.step(opt)
    return step


def main():
    p = base_parser(__doc__)
    p.add_argument("--model", default="resnet18", choices=["resnet18", "gpt"])
    args = p.parse_args()
    device = torch.device(args.device)
    print(machine_line(device))
    model, x, y, task = workload(args.model, args.batch, device)
    print(f"# {args.model}, batch {args.batch}, bf16 plan; 'interval' = monitor.every=10 (1 step in 10 sampled)")
    compare({"off": make_step(model, x, y, 0, task, device),
             "every step": make_step(model, x, y, 1, task, device),
             "interval": make_step(model, x, y, 10, task, device)},
            device, args.reps, args.warmup, baseline="off")


if __name__ == "__main__":
    main()
