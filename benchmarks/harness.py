"""Side-by-side timing: candidates run interleaved in one process after warm-up, so drift and
other load hit all of them alike; we report medians and ratios, never absolute claims.

With ``ADAPREC_BENCH_RESULTS=<file>`` set (``benchmarks/run_all.sh`` and ``gpu_check.sh`` set
it), every comparison also appends one JSON line per candidate to that file: its median time and
the median/min/max of its per-repetition ratio to the baseline (repetition *i* of a candidate
against repetition *i* of the baseline, which ran next to it). ``python -m benchmarks.report``
turns the file into the results table the README's performance section is generated from."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from adaprec.app.environment import cpu_flags, cpu_model

__all__ = ["compare", "machine_line", "base_parser", "sync", "record", "set_context", "RESULTS_ENV"]

RESULTS_ENV = "ADAPREC_BENCH_RESULTS"
_context: dict = {}  # what the script is measuring (workload, batch, device): set by set_context


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_line(device: torch.device) -> str:
    """The header every benchmark prints: which machine ran it (for a CPU, its model and the
    16-bit instruction-set flags it has; ratios differ between machines of the same kind)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        flags = [f for f, on in cpu_flags().items() if on]
        name = f"{cpu_model()} ({' '.join(flags) or 'none of ' + ' '.join(cpu_flags())})"
    return (f"# {platform.node()} | {name} | torch {torch.__version__} | "
            f"threads {torch.get_num_threads()} | cpus {os.cpu_count()} | device {device}")


def set_context(**context) -> None:
    """Say what the following comparisons measure (e.g. ``workload="gpt", batch=32``); recorded
    with every result."""
    _context.clear()
    _context.update({k: v for k, v in context.items() if v is not None})


def record(candidate: str, baseline: str, times: list[float], base_times: list[float],
           device: torch.device) -> dict | None:
    """Append one result line to ``$ADAPREC_BENCH_RESULTS`` (nothing when unset); returns it."""
    path = os.environ.get(RESULTS_ENV)
    ratios = [t / b for t, b in zip(times, base_times)]
    row = {"benchmark": Path(sys.argv[0]).stem, **_context, "device": str(device),
           "candidate": candidate, "baseline": baseline, "reps": len(times),
           "median_ms": statistics.median(times) * 1e3,
           "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
           "ratio_max": max(ratios), "threads": torch.get_num_threads()}
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per candidate")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    return p


def parse_with_threads(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``p`` with a ``--threads`` flag added (torch threads; 0 = torch's default: one
    thread gives stable ratios on a shared machine) and apply it."""
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


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
    for name, v in times.items():
        record(name, base, v, times[base], device)
    width = max(map(len, candidates))
    print(f"{'candidate':<{width}}  median ms   ratio vs {base}   (min..max ms)")
    for k, v in times.items():
        print(f"{k:<{width}}  {med[k]*1e3:9.1f}   {med[k]/med[base]:6.3f}x"
              f"          ({min(v)*1e3:.1f}..{max(v)*1e3:.1f})")
    return med
