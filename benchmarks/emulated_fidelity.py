"""Largest differences between emulated and native (torch.autocast) execution, per layer type,
and training fidelity on models nobody here wrote.

    python -m benchmarks.emulated_fidelity                    # Linear, Conv2d, attention core; bf16, fp16
    python -m benchmarks.emulated_fidelity --models --steps 30  # + HF Llama, GPT-2, BERT (tiny) training

One forward and backward of a single layer under ``executor=native`` and ``executor=emulated``
on identical inputs, weights and output gradients; prints, for the output and each gradient,
the largest difference in units in the last place of the format, the largest absolute
difference and how many elements differ at all. Native fp16 convolution on CPU runs torch's
reference kernels, so the conv case is kept small.

``--models``: tiny random-init Hugging Face Llama, GPT-2 and BERT (``benchmarks.real_models``)
trained ``--steps`` steps per format under native autocast, the emulated executor, and the
emulated executor's earlier boundary rounding (``sixteen_bit="boundary"``); prints first -> last
loss, skipped steps and the largest per-step loss difference to native.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from adaprec import AdaptivePrecision
from adaprec.controllers import Static
from adaprec.numerics.formats import get_format


class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt(d)) v, as in adaprec.models.gpt (without the mask)."""

    adaprec_layer = True

    def forward(self, q, k, v):
        att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / q.size(-1) ** 0.5)
        return torch.matmul(torch.softmax(att, dim=-1), v)


class Holder(nn.Module):
    """Wraps one layer so it is not the root (the root is never a layer)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.anchor = nn.Parameter(torch.zeros(1))  # AdaptivePrecision needs one parameter

    def forward(self, *xs):
        return self.layer(*xs)


CASES = {
    "linear": (lambda: nn.Linear(512, 256), [(256, 512)], (256, 256)),
    "conv": (lambda: nn.Conv2d(16, 16, 3, padding=1), [(4, 16, 16, 16)], (4, 16, 16, 16)),
    "attention": (AttentionCore, [(4, 4, 64, 32)] * 3, (4, 4, 64, 32)),
}


def run(case: str, executor: str, fmt: str, seed: int) -> dict[str, torch.Tensor]:
    factory, in_shapes, out_shape = CASES[case]
    torch.manual_seed(seed)
    net = Holder(factory())
    g = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(s, generator=g).requires_grad_() for s in in_shapes]
    grad = torch.randn(out_shape, generator=g)
    ap = AdaptivePrecision(net, controller=Static(fmt), executor=executor, monitor_every=0)
    with ap.autocast():
        out = net(*xs)
    out.float().backward(grad)
    return {"output": out.float().detach(), **{f"d_input{i}": x.grad for i, x in enumerate(xs)},
            **{f"d_{n}": p.grad for n, p in net.layer.named_parameters()}}


def ulps(a: torch.Tensor, b: torch.Tensor, fmt) -> torch.Tensor:
    mag = torch.maximum(a.abs(), b.abs()).clamp(min=fmt.smallest_normal)
    _, e = torch.frexp(mag)
    return (a - b).abs() / torch.ldexp(torch.ones_like(mag), e - 1 - fmt.mantissa_bits)


ARMS = {"native": ("native", {}), "emulated": ("emulated", {}),
        "boundary": ("emulated", {"executor_options": {"sixteen_bit": "boundary"}})}


def train_fidelity(model: str, fmt: str, steps: int) -> dict[str, tuple[list[float], list[bool]]]:
    """``{arm: (losses, skipped)}`` for ``model`` trained ``steps`` steps in ``fmt`` per arm."""
    from .real_models import batches, tiny_model, train
    data = batches(steps)
    out = {}
    for arm, (executor, options) in ARMS.items():
        losses, skipped, ap = train(tiny_model(model), Static(fmt), executor, data,
                                    monitor_every=5, **options)
        ap.remove()
        out[arm] = (losses, skipped)
    return out


def print_models(steps: int) -> None:
    print(f"| model | format | executor | first -> last loss | skipped | max abs loss diff to native |")
    print("|---|---|---|---|---|---|")
    for model in ("llama", "gpt2", "bert"):
        for fmt in ("fp16", "bf16"):
            runs = train_fidelity(model, fmt, steps)
            ref = runs["native"][0]
            for arm, (losses, skipped) in runs.items():
                diff = max(abs(a - b) for a, b in zip(losses, ref))
                print(f"| {model} | {fmt} | {arm} | {losses[0]:.4f} -> {losses[-1]:.4f} | "
                      f"{sum(skipped)} | {diff:.2e} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--models", action="store_true", help="also train tiny HF Llama, GPT-2, BERT")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    print(f"{'case':<10}{'fmt':<6}{'tensor':<10}{'max ulps':>9}{'max abs':>12}{'differ':>14}")
    for case in CASES:
        for fmt in ("bf16", "fp16"):
            f = get_format(fmt)
            worst: dict[str, tuple[float, float, int, int]] = {}
            for seed in range(args.seeds):
                native, emulated = run(case, "native", fmt, seed), run(case, "emulated", fmt, seed)
                for name, a in native.items():
                    b = emulated[name]
                    u, d = ulps(a, b, f).max().item(), (a - b).abs().max().item()
                    n, tot = int((a != b).sum()), a.numel()
                    old = worst.get(name, (0.0, 0.0, 0, 0))
                    worst[name] = (max(old[0], u), max(old[1], d), old[2] + n, old[3] + tot)
            for name, (u, d, n, tot) in worst.items():
                print(f"{case:<10}{fmt:<6}{name:<10}{u:>9.2f}{d:>12.3g}{n:>7}/{tot:<7}")
    if args.models:
        print_models(args.steps)


if __name__ == "__main__":
    main()
