"""Where a run ran: what ``metrics.json["environment"]`` records, so that sweeps from two
machines (an AVX2 CPU emulating 16-bit, an AVX512-BF16 one running it natively, a GPU) are
never mixed silently; ``analysis.load_runs`` warns when they are.

    {"torch": "2.13.0+cpu", "device": "AMD EPYC ... (cpu)" | "NVIDIA H100 80GB HBM3",
     "cpu_flags": {"avx2": true, "avx512_bf16": false, "amx_bf16": false, "avx512_fp16": false},
     "executor": "auto", "executors": {"fp32": "native", "bf16": "emulated", ...},
     "adaprec_commit": "1a2b3c4", "adaprec_dirty": false, "python": "3.11.9"}
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from adaprec.numerics.formats import FORMATS, get_format
from adaprec.runtime.executors.auto import native_is_fast

__all__ = ["CPU_FLAGS", "cpu_flags", "cpu_model", "format_executors", "git_state", "run_environment"]

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile")
_FAMILIES = ("matmul", "conv")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, bool]:
    """The instruction-set flags that decide how 16-bit runs on this CPU (False where unknown)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {flag: False for flag in CPU_FLAGS}
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    have = set(line.split(":", 1)[-1].split())
    return {flag: flag in have for flag in CPU_FLAGS}


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_executors(executor: str, device_type: str) -> dict[str, str]:
    """``{format: "native" | "emulated"}``: what runs each format under ``executor`` here
    (``auto``: per :func:`~adaprec.runtime.executors.auto.native_is_fast`; where layer
    families differ, ``"matmul: native, conv: emulated"``)."""
    out = {}
    for name in FORMATS:
        fmt = get_format(name)
        if name == "fp32" or executor == "native":
            out[name] = "native"
        elif executor == "emulated":
            out[name] = "emulated"
        else:
            kinds = {fam: "native" if native_is_fast(fmt, fam, device_type) else "emulated"
                     for fam in _FAMILIES}
            out[name] = (next(iter(kinds.values())) if len(set(kinds.values())) == 1
                         else ", ".join(f"{fam}: {k}" for fam, k in kinds.items()))
    return out


def git_state(repo: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the adaprec checkout, or (None, None) outside a git checkout."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def run_environment(device: torch.device | str, executor: str) -> dict:
    """The ``environment`` block of ``metrics.json`` (see the module docstring)."""
    device = torch.device(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{cpu_model()} ({device.type})")
    commit, dirty = git_state()
    return {"torch": torch.__version__, "python": platform.python_version(), "device": name,
            "cpu_flags": cpu_flags(), "executor": executor,
            "executors": format_executors(executor, device.type),
            "adaprec_commit": commit, "adaprec_dirty": dirty}
