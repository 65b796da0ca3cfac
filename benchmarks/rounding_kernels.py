"""One fake-quantize call, eager vs the fused kernel (``compiled=True``), side by side.

    python -m benchmarks.rounding_kernels --threads 1
    python -m benchmarks.rounding_kernels --formats mxfp8_e4m3 --reps 50

Per format and tensor layout (the GPT's activations and gradients, blocked over features or,
for the operands mode's wgrad, over tokens; ResNet-18's first-stage activations blocked over
channels, contiguous and channels-last), the two paths run interleaved after warm-up and the
ratio is compiled / eager (below 1: the kernel is faster). The first compile of each format and
layout happens in the warm-up. Per-tensor fp8 rounds at a fixed scale (the kernel's part; its
amax and scale update stay eager in a training step).
"""
from __future__ import annotations

import torch

from adaprec import get_format
from adaprec.numerics.recipes import scaled_round

from .harness import base_parser, compare, machine_line, parse_with_threads, set_context

# name -> (shape, blocked axis, memory format)
LAYOUTS = {
    "gpt 2048x512, features": ((2048, 512), -1, torch.contiguous_format),
    "gpt 2048x512, tokens": ((2048, 512), 0, torch.contiguous_format),
    "resnet 64x64x32x32, channels": ((64, 64, 32, 32), 1, torch.contiguous_format),
    "resnet 64x64x32x32, channels-last": ((64, 64, 32, 32), 1, torch.channels_last),
}


def _call(name: str, x: torch.Tensor, axis: int, compiled: bool):
    fmt = get_format(name)
    if fmt.scaling == "per_tensor":
        scale = torch.tensor(2.0 ** 4)
        return lambda: scaled_round(x, fmt.element, scale, compiled=compiled)
    return lambda: fmt.fake_quantize(x, axis=axis, compiled=compiled)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.set_defaults(reps=30, warmup=3)
    p.add_argument("--formats", nargs="+", default=["mxfp8_e4m3", "nvfp4", "fp8_e4m3"])
    args = parse_with_threads(p)
    device = torch.device(args.device)
    print(machine_line(device))
    g = torch.Generator().manual_seed(0)
    for layout, (shape, axis, memory_format) in LAYOUTS.items():
        x = torch.randn(shape, generator=g).to(device, memory_format=memory_format)
        for name in args.formats:
            if get_format(name).scaling == "per_tensor" and "features" not in layout:
                continue  # no blocks: one layout is enough
            print(f"## {name}, {layout}: {x.numel() / 1e6:.1f} M elements")
            set_context(workload=f"{name}, {layout}")
            compare({"eager": _call(name, x, axis, False), "compiled": _call(name, x, axis, True)},
                    device, args.reps, args.warmup, baseline="eager")


if __name__ == "__main__":
    main()
