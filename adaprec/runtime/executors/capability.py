"""What the device runs natively, per layer type and format: probed once, not guessed.

Two questions, asked per layer:

- **Does it run at all?** (:func:`native_error`) A tiny layer of the same type trains one step
  (forward and backward) under ``torch.autocast`` in the format on the device; an error means
  no. Probed once per (layer type, format, device) and cached for the process. On the AVX2
  CPUs here ``nn.LSTM`` fails in bf16 and fp16 (oneDNN: "could not create a primitive
  descriptor for the LSTM forward propagation primitive"); GRU and RNN run.
- **Does it run fast?** (:func:`native_is_fast`) oneDNN's own ISA checks on CPU, the GPU's
  support on CUDA: a capability, not a timing (timings of tiny ops on a shared CPU flip from
  run to run).

The native executor refuses a plan with a layer its device cannot run (naming the layer and
the format), the auto executor emulates such layers, and controllers are told which formats
each layer can use (``ControllerContext.runs``), so they never choose one that cannot run.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from adaprec.numerics.formats import FP32, Format

__all__ = ["native_error", "native_is_fast", "layer_family", "probe_kind"]


def layer_family(module: nn.Module | None) -> str:
    """``conv``, ``norm`` or ``matmul`` (everything else: linear layers, attention, embeddings)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return "norm"
    return "matmul"


def _cpu_has_fast(fmt: Format) -> bool:
    # oneDNN's own capability checks: AVX512-BF16/AMX-BF16 for bf16, AVX512-FP16/AMX-FP16 for
    # fp16. Without them torch's CPU kernels for that dtype are reference loops (fp16
    # convolution training runs minutes per ResNet-18 step).
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[fmt.name]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return False


def native_is_fast(fmt: Format, family: str, device_type: str) -> bool:
    """Whether ``device_type`` computes ``family`` ops in ``fmt`` natively at full speed.

    fp32 always; fp8 never (no fp8 kernels here); CUDA: fp16 always, bf16 where the GPU
    supports it; CPU: where oneDNN reports the ISA. The rule is the same for every family
    today; ``family`` is there for per-family rules (e.g. from a calibrated cost profile).
    """
    if fmt == FP32:
        return True
    if not fmt.native:
        return False
    if device_type == "cuda":
        return fmt.name == "fp16" or torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return _cpu_has_fast(fmt)
    return False


# a tiny layer of each torch.nn type and an input for it; other types are probed through the
# op their family computes (see probe_kind)
_PROBES = {
    nn.LSTM: (lambda: nn.LSTM(4, 4, batch_first=True), (2, 3, 4)),
    nn.GRU: (lambda: nn.GRU(4, 4, batch_first=True), (2, 3, 4)),
    nn.RNN: (lambda: nn.RNN(4, 4, batch_first=True), (2, 3, 4)),
    nn.Conv1d: (lambda: nn.Conv1d(2, 2, 3), (1, 2, 8)),
    nn.Conv2d: (lambda: nn.Conv2d(2, 2, 3), (1, 2, 6, 6)),
    nn.Conv3d: (lambda: nn.Conv3d(2, 2, 3), (1, 2, 4, 4, 4)),
    nn.ConvTranspose1d: (lambda: nn.ConvTranspose1d(2, 2, 3), (1, 2, 8)),
    nn.ConvTranspose2d: (lambda: nn.ConvTranspose2d(2, 2, 3), (1, 2, 6, 6)),
    nn.ConvTranspose3d: (lambda: nn.ConvTranspose3d(2, 2, 3), (1, 2, 4, 4, 4)),
    nn.Linear: (lambda: nn.Linear(4, 4), (2, 4)),
    nn.Bilinear: (lambda: nn.Bilinear(4, 4, 4), None),
    nn.Embedding: (lambda: nn.Embedding(8, 4), "ids"),
    nn.EmbeddingBag: (lambda: nn.EmbeddingBag(8, 4), "ids"),
    nn.LayerNorm: (lambda: nn.LayerNorm(4), (2, 4)),
    nn.GroupNorm: (lambda: nn.GroupNorm(2, 4), (2, 4, 3)),
    nn.BatchNorm1d: (lambda: nn.BatchNorm1d(4), (2, 4)),
    nn.BatchNorm2d: (lambda: nn.BatchNorm2d(4), (2, 4, 3, 3)),
    nn.BatchNorm3d: (lambda: nn.BatchNorm3d(4), (2, 4, 2, 2, 2)),
    nn.MultiheadAttention: (lambda: nn.MultiheadAttention(4, 1, batch_first=True), "qkv"),
    nn.PReLU: (lambda: nn.PReLU(), (2, 4)),
}


def probe_kind(module: nn.Module) -> str:
    """What :func:`native_error` probes for ``module``: its nearest ``torch.nn`` base class with
    a probe (``"LSTM"``, ``"Conv2d"``), else its family's op (``"matmul"`` for custom layers,
    which compute through linear/matmul/softmax)."""
    for cls in type(module).__mro__:
        if cls in _PROBES:
            return cls.__name__
    return layer_family(module)


def _family_call(family: str, device_type: str):
    """A custom layer's family through its basic ops: conv1d, or linear + matmul + softmax."""
    if family == "conv":
        x = torch.randn(1, 2, 8, device=device_type, requires_grad=True)
        w = torch.randn(2, 2, 3, device=device_type, requires_grad=True)
        return lambda: F.conv1d(x, w)
    x = torch.randn(2, 4, device=device_type, requires_grad=True)
    w = torch.randn(4, 4, device=device_type, requires_grad=True)
    return lambda: F.softmax(torch.matmul(F.linear(x, w), w), dim=-1)


def _run_probe(kind: str, device_type: str, dtype: torch.dtype) -> None:
    by_name = {cls.__name__: spec for cls, spec in _PROBES.items()}
    if kind in by_name:
        make, shape = by_name[kind]
        module = make().to(device_type)
        if shape == "ids":
            call = lambda: module(torch.randint(0, 8, (2, 3), device=device_type))
        elif shape == "qkv":
            q = torch.randn(2, 3, 4, device=device_type, requires_grad=True)
            call = lambda: module(q, q, q)
        elif shape is None:
            a = torch.randn(2, 4, device=device_type, requires_grad=True)
            call = lambda: module(a, a)
        else:
            x = torch.randn(*shape, device=device_type, requires_grad=True)
            call = lambda: module(x)
    else:
        call = _family_call(kind, device_type)
    with torch.autocast(device_type, dtype=dtype):
        out = call()
    out = out[0] if isinstance(out, tuple) else out
    out.float().sum().backward()


@functools.cache
def _probe(kind: str, fmt_name: str, dtype: torch.dtype, device_type: str) -> str | None:
    # the probe's layers draw their initial weights from torch's generators: the run's own
    # random stream must not notice it was asked
    fork = (torch.random.fork_rng(devices=[]) if device_type == "cpu"
            else torch.random.fork_rng(device_type=device_type))
    with fork, torch.enable_grad():
        try:
            _run_probe(kind, device_type, dtype)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot run"
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return None


def native_error(module: nn.Module, fmt: Format, device_type: str) -> str | None:
    """Why ``module`` cannot train in ``fmt`` natively on ``device_type``, or None when it can.

    fp32 always can; a format without native kernels (fp8, MX, ...) never; bf16/fp16 are
    probed once per (:func:`probe_kind`, format, device) with a tiny real layer.
    """
    if fmt == FP32:
        return None
    if not fmt.native:
        return f"{fmt.name} has no native kernels"
    return _probe(probe_kind(module), fmt.name, fmt.dtype, device_type)
