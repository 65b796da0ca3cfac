"""Calibrate a ``local`` cost profile: time matmul, convolution and elementwise training steps
(forward + backward) per format on this device and write a profile YAML.

    python -m adaprec.tools.calibrate --out local_profile.yaml            # ~1-2 min on a 2-core CPU
    python -m adaprec.tools.calibrate --threads 1 --clock process --out local_profile.yaml  # busy machine
    python -m adaprec.tools.calibrate --device cuda --formats fp32 bf16 fp16 --out gpu_profile.yaml

Load the result with ``adaprec.cost.load_profile("local_profile.yaml")`` (a path), or copy it to
``conf/cost/<name>.yaml`` to load it by name. Rates are *effective* training rates (what the
kernels achieve here, not a datasheet peak): per op kind (``op_tflops.matmul``, ``op_tflops.conv``)
and per format, pooled over the sizes tried (total FLOPs / total time: small sizes, where
kernels run far below peak, count as much as a model's small layers do); ``bandwidth_tbps`` per
format from a ReLU forward + backward, counted with the same byte model the cost model uses
(5 tensor passes), pooled the same way. ``measurements`` keeps every point. Formats torch
cannot compute in (fp8) fall back to bf16, whose values include every fp8 value exactly.

``--executor auto`` (the default) calibrates what adaprec's ``auto`` executor runs: a format the
device computes fast (:func:`~adaprec.runtime.executors.emulated.native_is_fast`) is timed
natively; any other (fp16 and bf16 on a CPU without AVX512-FP16/BF16, every fp8 format) is
written under ``emulated`` with the measured cost of one rounding (forward and gradient):
``call_us`` per tensor (a chain of roundings of a small tensor) and ``ns_per_elem`` (what a
conv-BN-ReLU stack pays per rounded element under the emulated executor; see
:func:`rounding_cost`).
``kernel_us``, the fixed cost of one op (dispatch, autograd bookkeeping, launch), is timed on a
chain of tiny ops; it is subtracted from the matmul, conv and elementwise points, so their
rates are the kernels' throughput and small layers pay the fixed cost once, through kernel_us.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from torch.utils._python_dispatch import TorchDispatchMode

from adaprec.cost.counting import _is_kernel
from adaprec.numerics.emulation import AmaxState, FP8Config, RoundFn, ScaledRoundFn
from adaprec.numerics.formats import FORMATS, get_format
from adaprec.runtime.executors.auto import native_is_fast

__all__ = ["calibrate", "write_profile", "time_step", "CLOCKS", "matmul_tflops", "conv_tflops",
           "elementwise_tbps", "kernel_us", "rounding_cost", "count_kernels", "main"]

DEFAULT_FORMATS = ("fp32", "bf16", "fp16")
DEFAULT_MATMUL_SIZES = (256, 512, 1024)
# (batch, channels, height=width): a CNN pyramid -- channels double as resolution halves, the same
# FLOPs at every shape -- so the pooled rate weighs each stage of a typical CNN alike
DEFAULT_CONV_SHAPES = ((32, 64, 32), (32, 128, 16), (32, 256, 8), (32, 512, 4))
DEFAULT_ELEMWISE = (1 << 20, 1 << 22)   # activation-sized tensors: 4 and 16 MB in fp32
ROUNDING_SIZES = (1 << 10,)             # the small tensor that prices a rounding's fixed cost
FP8_FALLBACK = "bf16"
EXECUTORS = ("auto", "native")


class _KernelCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _is_kernel(func._overloadpacket):
            self.n += 1
        return func(*args, **(kwargs or {}))


def count_kernels(fn: Callable[[], None]) -> int:
    """Kernels (ATen ops that are not views or allocations) one call of ``fn`` runs, the way
    :func:`~adaprec.cost.count_layers` counts them."""
    with _KernelCounter() as counter:
        fn()
    return counter.n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def time_step(fn: Callable[[], None], device: torch.device | str, reps: int = 3, warmup: int = 1,
              clock: str = "wall") -> float:
    """Fastest seconds of ``fn()`` over ``reps`` runs after ``warmup`` runs.

    The minimum, not the median: on a shared machine other processes only ever add time.
    ``clock="process"`` counts this process's CPU time instead of wall time: with one thread
    it is what the run would take alone, even on a machine busy with other jobs.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {list(CLOCKS)}, got {clock!r}")
    device = torch.device(device)
    if clock == "process" and device.type != "cpu":
        raise ValueError("clock='process' measures CPU time; use clock='wall' on an accelerator")
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = now()
        fn()
        _sync(device)
        times.append(now() - t0)
    return min(times)


def _net_time(step: Callable[[], None], device, reps: int, clock: str, kernel_s: float) -> float:
    """Seconds of ``step`` less the fixed cost of its kernels (never below 5 % of the time)."""
    t = time_step(step, device, reps, clock=clock)
    return max(t - count_kernels(step) * kernel_s, 0.05 * t)


def kernel_us(device, reps: int = 3, clock: str = "wall", chain: int = 64) -> float:
    """Fixed microseconds per kernel: a chain of ``chain`` multiplications of a 64-element
    tensor, forward + backward, divided by the kernels it runs."""
    x = torch.randn(64, device=device, requires_grad=True)

    def step():
        y = x
        for _ in range(chain):
            y = y * 1.0001
        torch.autograd.grad(y.sum(), (x,))
    return time_step(step, device, reps, clock=clock) / count_kernels(step) * 1e6


def rounding_cost(fmt: str, device, reps: int = 3, clock: str = "wall", chain: int = 16,
                  small: int = ROUNDING_SIZES[0]) -> dict[str, float]:
    """``{call_us, ns_per_elem}`` of one emulated rounding to ``fmt``, forward and gradient.

    ``call_us``: a chain of ``chain`` roundings of a ``small``-element tensor in one graph
    (``RoundFn``; ``ScaledRoundFn`` with delayed scaling for fp8), as the executor calls them.
    ``ns_per_elem``: as the executor pays it in a step: a conv-BN-ReLU stack trained under the
    emulated executor in ``fmt`` against fp32, interleaved; the extra time less ``call_us`` per
    rounded tensor, over the rounded elements, both counted by the cost model itself."""
    f = get_format(fmt)
    x = torch.randn(small, device=device, requires_grad=True)
    states = [(AmaxState(FP8Config(), f, x.device), AmaxState(FP8Config(), f, x.device))
              for _ in range(chain)] if f.scaling == "per_tensor" else []

    def step():
        y = x
        for i in range(chain):
            y = ScaledRoundFn.apply(y, f, *states[i]) if states else RoundFn.apply(y, f, True)
        torch.autograd.grad(y.sum(), (x,))
    call_s = max(time_step(step, device, reps, clock=clock) / chain, 0.0)
    return {"call_us": _sig(call_s * 1e6), "ns_per_elem": _sig(_emulated_step_ns(f.name, device, reps, clock, call_s))}


def _emulated_step_ns(fmt: str, device, reps: int, clock: str, call_s: float) -> float:
    from adaprec.cost import CostModel, DeviceProfile          # the tools floor sits above both
    from adaprec.precision import AdaptivePrecision
    from adaprec.runtime.plan import Plan
    torch.manual_seed(0)
    c = 16
    model = torch.nn.Sequential(*[m for _ in range(3) for m in (
        torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c), torch.nn.ReLU())]).to(device)
    x = torch.randn(16, c, 32, 32, device=device)
    ap = AdaptivePrecision(model, device_type=torch.device(device).type, executor="emulated", monitor_every=0)
    try:
        def unit(call_us: float, ns: float) -> DeviceProfile:
            return DeviceProfile(name="unit", peak_tflops={"fp32": 1.0}, bandwidth_tbps=1.0,
                                 emulated={f: {"call_us": call_us, "ns_per_elem": ns}
                                           for f in FORMATS if f != "fp32"})
        cm = CostModel.count(model, (x,), layers=ap.layers, optimizer="none")
        low, fp32 = Plan.uniform(fmt, ap.layers), Plan.uniform("fp32", ap.layers)
        elems = cm.price(low, unit(0.0, 1.0)).cast * 1e9      # 1 ns per element: cast seconds -> elements
        tensors = cm.price(low, unit(1.0, 0.0)).cast * 1e6
        times: dict[str, list[float]] = {"fp32": [], fmt: []}
        now = CLOCKS[clock]
        for _ in range(max(reps, 5)):
            for name, plan in (("fp32", fp32), (fmt, low)):
                ap.set_plan(plan)
                for timed in (False, True):
                    t0 = now()
                    with ap.autocast():
                        loss = model(x).float().square().mean()
                    loss.backward()
                    _sync(torch.device(device))
                    if timed:
                        times[name].append(now() - t0)
        # median of paired differences: each pair ran back to back, so load hits both alike
        extra = statistics.median(a - b for a, b in zip(times[fmt], times["fp32"])) - tensors * call_s
        return max(extra, 0.0) / elems * 1e9
    finally:
        ap.remove()


def matmul_tflops(n: int, dtype: torch.dtype, device, reps: int = 3, clock: str = "wall",
                  kernel_s: float = 0.0) -> float:
    """Effective TFLOP/s of an n x n x n matmul, forward + both input gradients (6 n^3 FLOPs),
    less ``kernel_s`` per kernel."""
    a = torch.randn(n, n, device=device).to(dtype).requires_grad_()
    b = torch.randn(n, n, device=device).to(dtype).requires_grad_()
    g = torch.randn(n, n, device=device).to(dtype)

    def step():
        torch.autograd.grad(a @ b, (a, b), g)
    return 6 * n ** 3 / _net_time(step, device, reps, clock, kernel_s) / 1e12


def conv_tflops(batch: int, channels: int, size: int, dtype: torch.dtype, device, reps: int = 3,
                clock: str = "wall", kernel_s: float = 0.0) -> float:
    """Effective TFLOP/s of a 3x3, stride-1, same-padding conv, forward + input and weight gradients."""
    x = torch.randn(batch, channels, size, size, device=device).to(dtype).requires_grad_()
    w = (torch.randn(channels, channels, 3, 3, device=device) * 0.05).to(dtype).requires_grad_()
    g = torch.randn(batch, channels, size, size, device=device).to(dtype)

    def step():
        torch.autograd.grad(F.conv2d(x, w, padding=1), (x, w), g)
    fwd = 2 * batch * channels * size * size * channels * 9
    return 3 * fwd / _net_time(step, device, reps, clock, kernel_s) / 1e12


def elementwise_tbps(numel: int, dtype: torch.dtype, device, reps: int = 3, clock: str = "wall",
                     kernel_s: float = 0.0) -> float:
    """Effective TB/s of ReLU forward + backward: 5 passes of ``numel`` elements (see docstring)."""
    x = torch.randn(numel, device=device).to(dtype).requires_grad_()
    g = torch.randn(numel, device=device).to(dtype)

    def step():
        torch.autograd.grad(torch.relu(x), (x,), g)
    return 5 * numel * x.element_size() / _net_time(step, device, reps, clock, kernel_s) / 1e12


def calibrate(device: str | torch.device = "cpu", formats: Sequence[str] = DEFAULT_FORMATS,
              matmul_sizes: Sequence[int] = DEFAULT_MATMUL_SIZES,
              conv_shapes: Sequence[tuple[int, int, int]] = DEFAULT_CONV_SHAPES,
              elementwise_numel: Sequence[int] = DEFAULT_ELEMWISE, reps: int = 3, name: str = "local",
              clock: str = "wall", log: Callable[[str], None] | None = None,
              executor: str = "auto") -> dict:
    """Measure this device and return a profile dict (``DeviceProfile.from_dict`` accepts it).

    ``executor="auto"``: formats the device does not run fast natively (and fp8) are measured
    as emulated roundings; ``"native"``: every format in ``formats`` is timed natively."""
    device = torch.device(device)
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    fmts = [get_format(f) for f in formats]
    if "fp32" not in [f.name for f in fmts]:
        raise ValueError("calibration needs fp32 among --formats: it is every other format's reference")
    if executor == "native" and any(not f.native for f in fmts):
        raise ValueError(f"only native formats can be timed; fp8 is priced as {FP8_FALLBACK}. Drop "
                         f"{[f.name for f in fmts if not f.native]} from --formats, or use executor auto")
    log = log or (lambda msg: None)
    emulated: dict[str, dict] = {}
    if executor == "auto":
        # unscaled and per-tensor formats; block/tile formats are priced through the registry's
        # fallback chain (mxfp8 -> fp8, ...), see adaprec.cost.profiles
        slow = [get_format(f) for f in FORMATS if get_format(f).scaling in ("none", "per_tensor")
                and not native_is_fast(get_format(f), "matmul", device.type)]
        for f in slow:
            emulated[f.name] = rounding_cost(f.name, device, reps, clock)
            log(f"{f.name}: emulated here, rounding {emulated[f.name]['call_us']} us/tensor + "
                f"{emulated[f.name]['ns_per_elem']} ns/element")
        fmts = [f for f in fmts if f.name not in emulated]
    k_us = kernel_us(device, reps, clock)
    log(f"fixed cost per kernel: {k_us:.2f} us")
    k_s = k_us * 1e-6
    measured: dict = {kind: {f.name: {} for f in fmts} for kind in ("matmul", "conv", "elementwise")}
    # formats interleaved at each size, so that load from other processes hits them alike
    for n in matmul_sizes:
        for f in fmts:
            measured["matmul"][f.name][n] = matmul_tflops(n, f.dtype, device, reps, clock, k_s)
        log(f"matmul n={n}: " + ", ".join(f"{f.name} {measured['matmul'][f.name][n]:.4f}"
                                          for f in fmts) + " TFLOP/s")
    for b, c, s in conv_shapes:
        for f in fmts:
            measured["conv"][f.name][f"{b}x{c}x{s}"] = conv_tflops(b, c, s, f.dtype, device, reps, clock, k_s)
        log(f"conv {b}x{c}x{s}: " + ", ".join(f"{f.name} {measured['conv'][f.name][f'{b}x{c}x{s}']:.4f}"
                                            for f in fmts) + " TFLOP/s")
    for n in elementwise_numel:
        for f in fmts:
            measured["elementwise"][f.name][n] = elementwise_tbps(n, f.dtype, device, reps, clock, k_s)
        log(f"elementwise n={n}: " + ", ".join(f"{f.name} {measured['elementwise'][f.name][n]:.4f}"
                                              for f in fmts) + " TB/s")
    return _profile_dict(name, device, fmts, measured, clock, emulated, k_us)


def _work(kind: str, key, fmt: str) -> float:
    """FLOPs (or bytes) of one calibration point, to pool rates as total work / total time."""
    if kind == "matmul":
        return 6 * key ** 3
    if kind == "conv":
        b, c, s = (int(v) for v in key.split("x"))
        return 6 * b * c * c * 9 * s * s
    return 5 * key * get_format(fmt).bytes


def _pooled(kind: str, fmt: str, by_size: dict) -> float:
    work = {k: _work(kind, k, fmt) for k in by_size}
    return sum(work.values()) / sum(work[k] / r for k, r in by_size.items())


def _profile_dict(name: str, device: torch.device, fmts, measured: dict, clock: str,
                  emulated: dict | None = None, k_us: float = 0.0) -> dict:
    rate = {kind: {f: _pooled(kind, f, by_size) for f, by_size in m.items()} for kind, m in measured.items()}
    names = [f.name for f in fmts]
    # untimed formats: fp8 runs as bf16 (exact for fp8 values) when bf16 was timed; anything
    # else untimed is priced as fp32, the conservative choice
    emulated = emulated or {}
    # (block/tile formats follow the registry's fallback chain down to these, see cost.profiles)
    fallback = {f: (FP8_FALLBACK if f.startswith("fp8") and FP8_FALLBACK in names else "fp32")
                for f in FORMATS if f not in names and f not in emulated
                and get_format(f).scaling in ("none", "per_tensor") and not get_format(f).has_roles}
    return {
        "name": name,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(device) + ("" if clock == "wall" else f", {clock} clock"),
        "peak_tflops": {f: _sig(max(rate["matmul"][f], rate["conv"][f])) for f in names},
        "op_tflops": {kind: {f: _sig(r) for f, r in rate[kind].items()} for kind in ("matmul", "conv")},
        "bandwidth_tbps": {f: _sig(r) for f, r in rate["elementwise"].items()},
        "fallback": fallback,
        "emulated": emulated,
        "kernel_us": _sig(k_us),
        "tf32": {"matmul": False, "conv": False},   # measured as run: rates already include it
        "optimizer_foreach": device.type == "cuda",  # torch.optim's default implementation
        "measurements": {kind: {f: {str(k): _sig(v) for k, v in by.items()} for f, by in m.items()}
                         for kind, m in measured.items()},
    }


def _sig(x: float) -> float:
    """Four significant digits: rates span 1e-5 (tiny CPU sizes) to 1e3 TFLOP/s."""
    return float(f"{x:.4g}")


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, threads={torch.get_num_threads()}, "
            f"torch {torch.__version__}")


def write_profile(profile: dict, path: str | Path, command: str = "python -m adaprec.tools.calibrate") -> Path:
    """Write ``profile`` as YAML with a header saying how, where and when it was made."""
    path = Path(path)
    header = (f"# Calibrated cost profile '{profile['name']}': effective training rates measured by\n"
              f"#   {command}\n#   on {profile['machine']}, {profile['date']}.\n"
              "# op_tflops: fwd+bwd TFLOP/s pooled over the sizes in `measurements` (total FLOPs / total\n"
              "# time); peak_tflops: the better kind; bandwidth_tbps: ReLU fwd+bwd, 5 passes, pooled;\n"
              "# kernel_us: a chain of tiny ops (subtracted from the points above); emulated: one\n"
              "# rounding (forward + gradient) = call_us per tensor + ns_per_elem per element.\n"
              "# Load with load_profile(<this path>), or copy to conf/cost/<name>.yaml.\n")
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
    p = argparse.ArgumentParser(prog="python -m adaprec.tools.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="torch device to time (cpu, cuda, cuda:1, ...)")
    p.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS), help="native formats to time")
    p.add_argument("--matmul-sizes", nargs="+", type=int, default=list(DEFAULT_MATMUL_SIZES))
    p.add_argument("--conv-shapes", nargs="+", type=_conv_shape, default=list(DEFAULT_CONV_SHAPES),
                   help="BATCHxCHANNELSxSIZE of 3x3 convs")
    p.add_argument("--elementwise-numel", nargs="+", type=int, default=list(DEFAULT_ELEMWISE))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall time, or this process's CPU time (robust on a busy machine; use --threads 1)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per point (fastest)")
    p.add_argument("--executor", choices=list(EXECUTORS), default="auto",
                   help="auto: formats without fast native kernels here are calibrated as emulated")
    p.add_argument("--name", default="local", help="profile name (prefix of the cost_<name>_s columns)")
    p.add_argument("--out", default="local_profile.yaml", help="YAML to write")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prof = calibrate(args.device, args.formats, args.matmul_sizes, args.conv_shapes,
                     args.elementwise_numel, args.reps, args.name, clock=args.clock, log=print,
                     executor=args.executor)
    argv = list(sys.argv[1:] if argv is None else argv)
    out = write_profile(prof, args.out, command=" ".join(["python -m adaprec.tools.calibrate", *argv]))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
