"""Side-by-side timing: candidates run interleaved in one process after warm-up, so drift and
other load hit all of them alike; we report medians and ratios, never absolute claims."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["compare", "machine_line", "base_parser", "sync"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_line(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return (f"# {platform.node()} | {name} | torch {torch.__version__} | "
            f"threads {torch.get_num_threads()} | cpus {os.cpu_count()} | device {device}")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per candidate")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    return p


def compare(candidates: dict[str, Callable[[], None]], device: torch.device, reps: int,
            warmup: int, baseline: str | None = None) -> dict[str, float]:
    """Time each candidate ``reps`` times, interleaved; print medians and ratios to baseline."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(reps):
        for name, fn in candidates.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = baseline or next(iter(candidates))
    width = max(map(len, candidates))
    print(f"{'candidate':<{width}}  median ms   ratio vs {base}   (min..max ms)")
    for k, v in times.items():
        print(f"{k:<{width}}  {med[k]*1e3:9.1f}   {med[k]/med[base]:6.3f}x"
              f"          ({min(v)*1e3:.1f}..{max(v)*1e3:.1f})")
    return med
