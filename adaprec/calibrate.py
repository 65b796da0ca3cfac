"""Calibrate a ``local`` cost profile: time matmul, convolution and elementwise training steps
(forward + backward) per format on this device and write a profile YAML.

    python -m adaprec.calibrate --out local_profile.yaml            # ~1-2 min on a 2-core CPU
    python -m adaprec.calibrate --device cuda --formats fp32 bf16 fp16 --out gpu_profile.yaml

Load the result with ``adaprec.cost.load_profile("local_profile.yaml")`` (a path), or copy it to
``conf/cost/<name>.yaml`` to load it by name. Rates are *effective* training rates (what the
kernels achieve here, not a datasheet peak): per op kind (``op_tflops.matmul``, ``op_tflops.conv``)
and per format, the best over the sizes tried; ``bandwidth_tbps`` per format from a ReLU forward +
backward, counted with the same byte model the cost model uses (5 tensor passes). Formats torch
cannot compute in (fp8) fall back to bf16, whose values include every fp8 value exactly.
"""
from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from .formats import FORMATS, get_format

__all__ = ["calibrate", "time_step", "matmul_tflops", "conv_tflops", "elementwise_tbps", "main"]

DEFAULT_FORMATS = ("fp32", "bf16", "fp16")
DEFAULT_MATMUL_SIZES = (256, 512, 1024)
DEFAULT_CONV_SHAPES = ((16, 64, 32), (16, 128, 16), (16, 256, 8))  # (batch, channels, height=width)
DEFAULT_ELEMWISE = 1 << 23
FP8_FALLBACK = "bf16"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(fn: Callable[[], None], device: torch.device | str, reps: int = 3, warmup: int = 1) -> float:
    """Fastest wall seconds of ``fn()`` over ``reps`` runs after ``warmup`` runs.

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_tflops(n: int, dtype: torch.dtype, device, reps: int = 3) -> float:
    """Effective TFLOP/s of an n x n x n matmul, forward + both input gradients (6 n^3 FLOPs)."""
    a = torch.randn(n, n, device=device).to(dtype).requires_grad_()
    b = torch.randn(n, n, device=device).to(dtype).requires_grad_()
    g = torch.randn(n, n, device=device).to(dtype)

    def step():
        torch.autograd.grad(a @ b, (a, b), g)
    return 6 * n ** 3 / time_step(step, device, reps) / 1e12


def conv_tflops(batch: int, channels: int, size: int, dtype: torch.dtype, device, reps: int = 3) -> float:
    """Effective TFLOP/s of a 3x3, stride-1, same-padding conv, forward + input and weight gradients."""
    x = torch.randn(batch, channels, size, size, device=device).to(dtype).requires_grad_()
    w = (torch.randn(channels, channels, 3, 3, device=device) * 0.05).to(dtype).requires_grad_()
    g = torch.randn(batch, channels, size, size, device=device).to(dtype)

    def step():
        torch.autograd.grad(F.conv2d(x, w, padding=1), (x, w), g)
    fwd = 2 * batch * channels * size * size * channels * 9
    return 3 * fwd / time_step(step, device, reps) / 1e12


def elementwise_tbps(numel: int, dtype: torch.dtype, device, reps: int = 3) -> float:
    """Effective TB/s of ReLU forward + backward: 5 passes of ``numel`` elements (see docstring)."""
    x = torch.randn(numel, device=device).to(dtype).requires_grad_()
    g = torch.randn(numel, device=device).to(dtype)

    def step():
        torch.autograd.grad(torch.relu(x), (x,), g)
    return 5 * numel * x.element_size() / time_step(step, device, reps) / 1e12


def calibrate(device: str | torch.device = "cpu", formats: Sequence[str] = DEFAULT_FORMATS,
              matmul_sizes: Sequence[int] = DEFAULT_MATMUL_SIZES,
              conv_shapes: Sequence[tuple[int, int, int]] = DEFAULT_CONV_SHAPES,
              elementwise_numel: int = DEFAULT_ELEMWISE, reps: int = 3, name: str = "local",
              log: Callable[[str], None] | None = None) -> dict:
    """Measure this device and return a profile dict (``DeviceProfile.from_dict`` accepts it)."""
    device = torch.device(device)
    fmts = [get_format(f) for f in formats]
    if "fp32" not in [f.name for f in fmts]:
        raise ValueError("calibration needs fp32 among --formats: it is every other format's reference")
    if any(not f.native for f in fmts):
        raise ValueError(f"only native formats can be timed; fp8 is priced as {FP8_FALLBACK}. Drop "
                         f"{[f.name for f in fmts if not f.native]} from --formats")
    log = log or (lambda msg: None)
    measured: dict = {"matmul": {f.name: {} for f in fmts}, "conv": {f.name: {} for f in fmts},
                      "elementwise": {}}
    # formats interleaved at each size, so that load from other processes hits them alike
    for n in matmul_sizes:
        for f in fmts:
            measured["matmul"][f.name][n] = matmul_tflops(n, f.dtype, device, reps)
        log(f"matmul n={n}: " + ", ".join(f"{f.name} {measured['matmul'][f.name][n]:.4f}" for f in fmts) + " TFLOP/s")
    for b, c, s in conv_shapes:
        for f in fmts:
            measured["conv"][f.name][f"{b}x{c}x{s}"] = conv_tflops(b, c, s, f.dtype, device, reps)
        log(f"conv {b}x{c}x{s}: " + ", ".join(f"{f.name} {measured['conv'][f.name][f'{b}x{c}x{s}']:.4f}"
                                            for f in fmts) + " TFLOP/s")
    for f in fmts:
        measured["elementwise"][f.name] = elementwise_tbps(elementwise_numel, f.dtype, device, reps)
    log("elementwise: " + ", ".join(f"{f} {r:.4f}" for f, r in measured["elementwise"].items()) + " TB/s")
    return _profile_dict(name, device, fmts, measured)


def _profile_dict(name: str, device: torch.device, fmts, measured: dict) -> dict:
    best = {kind: {f: max(by_size.values()) for f, by_size in measured[kind].items()} for kind in ("matmul", "conv")}
    names = [f.name for f in fmts]
    # untimed formats: fp8 runs as bf16 (exact for fp8 values) when bf16 was timed; anything
    # else untimed is priced as fp32, the conservative choice
    fallback = {f: (FP8_FALLBACK if f.startswith("fp8") and FP8_FALLBACK in names else "fp32")
                for f in FORMATS if f not in names}
    return {
        "name": name,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(device),
        "peak_tflops": {f: _sig(max(best["matmul"][f], best["conv"][f])) for f in names},
        "op_tflops": {kind: {f: _sig(r) for f, r in rates.items()} for kind, rates in best.items()},
        "bandwidth_tbps": {f: _sig(r) for f, r in measured["elementwise"].items()},
        "fallback": fallback,
        "fp32_uses_tf32": False,
        "measurements": {kind: {f: {str(k): _sig(v) for k, v in by.items()} for f, by in m.items()}
                         if kind != "elementwise" else {f: _sig(v) for f, v in m.items()}
                         for kind, m in measured.items()},
    }


def _sig(x: float) -> float:
    """Four significant digits: rates span 1e-5 (tiny CPU sizes) to 1e3 TFLOP/s."""
    return float(f"{x:.4g}")


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def write_profile(profile: dict, path: str | Path) -> Path:
    """Write ``profile`` as YAML with a header saying how it was made."""
    path = Path(path)
    header = (f"# Calibrated cost profile '{profile['name']}': effective training rates measured by\n"
              f"#   python -m adaprec.calibrate   on {profile['machine']}, {profile['date']}.\n"
              "# peak_tflops / op_tflops: best fwd+bwd TFLOP/s over the sizes in `measurements`;\n"
              "# bandwidth_tbps: ReLU fwd+bwd, 5 passes. Load with load_profile(<this path>).\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(profile, sort_keys=False))
    return path


def _conv_shape(text: str) -> tuple[int, int, int]:
    try:
        b, c, s = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"conv shape {text!r} must be BATCHxCHANNELSxSIZE, e.g. 16x64x32")
    return b, c, s


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m adaprec.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="torch device to time (cpu, cuda, cuda:1, ...)")
    p.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS), help="native formats to time")
    p.add_argument("--matmul-sizes", nargs="+", type=int, default=list(DEFAULT_MATMUL_SIZES))
    p.add_argument("--conv-shapes", nargs="+", type=_conv_shape, default=list(DEFAULT_CONV_SHAPES),
                   help="BATCHxCHANNELSxSIZE of 3x3 convs")
    p.add_argument("--elementwise-numel", type=int, default=DEFAULT_ELEMWISE)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per point (median)")
    p.add_argument("--name", default="local", help="profile name (prefix of the cost_<name>_s columns)")
    p.add_argument("--out", default="local_profile.yaml", help="YAML to write")
    args = p.parse_args(argv)
    prof = calibrate(args.device, args.formats, args.matmul_sizes, args.conv_shapes,
                     args.elementwise_numel, args.reps, args.name, log=print)
    out = write_profile(prof, args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
