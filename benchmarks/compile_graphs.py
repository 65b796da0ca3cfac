"""Graphs torch.compile makes of a model under adaprec, beside one global torch.autocast.

    python -m benchmarks.compile_graphs [--model gpt] [--steps 3]

Counts Dynamo's unique graphs and graph breaks over ``--steps`` training steps (backend
``aot_eager``: the graphs are what any backend would get). Per-layer regions are opened and
closed by forward hooks that run outside the graph (``adaprec/runtime/eager.py``), so a compiled
model breaks at each layer whose region differs from its caller's; the counts say how many
graphs that makes on a real model."""
from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import FixedPlan

from .workloads import _loss, setup


def _count(model, x, y, device, steps, plan=None, executor="native"):
    torch._dynamo.reset()
    counters.clear()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ap = AdaptivePrecision(model, controller=FixedPlan(plan), device_type=device.type, executor=executor,
                           monitor_every=2) if plan is not None else None
    compiled = torch.compile(model, backend="aot_eager")
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        ctx = ap.autocast() if ap else torch.autocast(device.type, dtype=torch.bfloat16)
        with ctx:
            loss = _loss(compiled(x), y)
        if ap:
            ap.backward(loss)
            ap.step(opt)
        else:
            loss.backward()
            opt.step()
    if ap:
        ap.remove()
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


if __name__ == "__main__":
    args, device, model, x, y = setup(__doc__, lambda p: p.add_argument("--steps", type=int, default=3))
    probe = AdaptivePrecision(model, monitor_every=0)
    layers = probe.layers
    probe.remove()  # the copies below must not inherit its hooks
    alternating = Plan({n: ("bf16" if i % 2 else "fp32") for i, n in enumerate(layers)}, default="bf16")
    cases = {"one torch.autocast (bf16)": None,
             "adaprec all-bf16, native": (Plan.uniform("bf16", layers), "native"),
             "adaprec bf16/fp32 alternating, native": (alternating, "native"),
             "adaprec all-bf16, emulated": (Plan.uniform("bf16", layers), "emulated")}
    print(f"# {args.model}: {len(layers)} layers, {args.steps} steps, monitor every 2")
    print(f"{'case':<40} graphs  breaks")
    import copy
    for name, case in cases.items():
        plan, executor = case if case else (None, "native")
        g, b = _count(copy.deepcopy(model), x, y, device, args.steps, plan, executor)
        print(f"{name:<40} {g:6d}  {b:6d}")
