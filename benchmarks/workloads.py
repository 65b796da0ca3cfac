"""What the benchmarks time: ResNet-18 (CIFAR-style, 32x32), the SmallCNN, a 2-layer GPT of
width 128 (context 64: smaller than the language workload's 4 layers, so a step stays short),
and training-step closures built around them."""
from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from adaprec import AdaptivePrecision
from adaprec.controllers import Static
from adaprec.models.gpt import GPT
from adaprec.models.cnn import SmallCNN
from adaprec.models.resnet import resnet18

from .harness import base_parser, machine_line, set_context


def workload(name: str, batch: int, device: torch.device, image_size: int = 32):
    """(model, x, y) with fixed random inputs of the workload's shape."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name in ("resnet18", "cnn"):
        model = resnet18(in_channels=3, num_classes=10) if name == "resnet18" else SmallCNN(3, 10, width=32)
        x = torch.randn(batch, 3, image_size, image_size, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
    elif name == "gpt":
        model = GPT(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=128)
        x = torch.randint(0, 256, (batch, 64), generator=g)
        y = torch.randint(0, 256, (batch, 64), generator=g)
    else:
        raise ValueError(f"unknown workload {name!r}; choose resnet18, cnn or gpt")
    return model.to(device), x.to(device), y.to(device)


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))


def adaprec_step(model, x, y, device: torch.device, controller=None, monitor_every: int = 0,
                 executor: str = "native", monitor_exact: bool = True,
                 monitor_sample: int | None = None,
                 executor_options: dict | None = None) -> Callable[[], None]:
    """One AdaptivePrecision training step on a private copy of ``model``."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ap = AdaptivePrecision(model, controller=controller or Static("bf16"), device_type=device.type,
                           monitor_every=monitor_every, executor=executor, monitor_exact=monitor_exact,
                           executor_options=executor_options,
                           **({} if monitor_sample is None else {"monitor_sample": monitor_sample}))

    def step():
        opt.zero_grad(set_to_none=True)
        with ap.autocast():
            loss = _loss(model(x), y)
        ap.backward(loss)
        ap.step(opt)
    return step


def plain_step(model, x, y, device: torch.device, dtype: torch.dtype | None = None) -> Callable[[], None]:
    """One plain training step (fp32, or one global torch.autocast region in ``dtype``)."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = _loss(model(x), y)
        loss.backward()
        opt.step()
    return step


def setup(doc: str, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """Parse the common flags (+ --model), print the machine line; returns (args, device, model, x, y)."""
    p = base_parser(doc)
    p.add_argument("--model", default="resnet18", choices=["resnet18", "gpt"])
    p.add_argument("--executor", default="auto", choices=["auto", "native", "emulated"],
                   help="how 16-bit runs (auto: native where this device has fast 16-bit kernels)")
    if extra:
        extra(p)
    args = p.parse_args()
    device = torch.device(args.device)
    print(machine_line(device))
    set_context(workload=args.model, batch=args.batch, executor=args.executor)
    model, x, y = workload(args.model, args.batch, device)
    return args, device, model, x, y
