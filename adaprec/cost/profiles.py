"""Device profiles: what a chip computes and moves per second, per format.

A profile is a YAML file in ``conf/cost/`` (or anywhere, loaded by path)::

    name: h100
    peak_tflops: {fp32: 66.9, tf32: 494.7, bf16: 989.4, fp16: 989.4, fp8_e4m3: 1978.9, fp8_e5m2: 1978.9}
    bandwidth_tbps: 3.35          # or {fp32: ..., bf16: ...} when measured per format
    fallback: {}                  # format -> format it runs as where the chip lacks it
    tf32: {matmul: false, conv: true}   # fp32 op kinds that run on TF32 tensor cores (torch defaults)
    op_tflops: {}                 # optional, measured: {matmul: {fp32: ..}, conv: {fp32: ..}}
    efficiency: {gemm: 0.75, elementwise: 0.9}   # achievable fraction of peak per op class
    kernel_us: 5.0                # fixed cost of one kernel launch / op dispatch
    optimizer_foreach: true       # optimizer steps launch one kernel per op for all tensors
    emulated: {}                  # format -> {call_us, ns_per_elem}: runs as fp32 + rounding
    metric: seconds               # or "bitops" (MACs x bits_w x bits_a, no time)

A format a chip lacks is priced as the format it falls back to, compute *and* bytes: on a V100
an emulated-bf16 layer costs what an fp32 layer costs. A format listed in ``emulated`` is what
adaprec's emulated executor runs (``auto`` on a CPU without the ISA): fp32 kernels, plus one
rounding per rounded tensor costing ``call_us + elems * ns_per_elem`` (forward and its gradient).

``tf32`` follows PyTorch's defaults: ``torch.backends.cudnn.allow_tf32`` is True (convolutions in
TF32 on Ampere and later), ``torch.backends.cuda.matmul.allow_tf32`` False unless
``torch.set_float32_matmul_precision("high")``; :func:`torch_tf32` reads the current flags.

Which format a format runs as (:meth:`DeviceProfile.resolve`), first rule that applies,
repeated until one stops:

1. the profile's own ``fallback`` entry for it;
2. it runs as itself if ``emulated`` or ``peak_tflops`` names it, or names its element width (``fp8``,
   ``fp6``, ``fp4``: one peak for every format of that width, e.g. mxfp8/fp8 tiles at ``fp8``);
3. the registry's ``Format.fallback`` (:mod:`adaprec.numerics.formats`): mxfp8 -> fp8,
   mxfp6 -> mxfp8_e4m3, mxfp4 -> mxfp6_e2m3, nvfp4 -> mxfp4, fp8 -> bf16. So on an H100, which
   has no fp4/fp6 tensor cores, nvfp4 and mxfp4 layers are priced as fp8 e4m3.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from adaprec.numerics.formats import FORMATS, get_format

__all__ = ["DeviceProfile", "load_profile", "profile_names", "conf_dir", "torch_tf32"]

_METRICS = ("seconds", "bitops")
_OP_CLASSES = ("gemm", "elementwise")
_TF32_KINDS = ("matmul", "conv")


def torch_tf32() -> dict[str, bool]:
    """The fp32 op kinds this process runs in TF32 on CUDA, from torch's current flags."""
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "conv": bool(torch.backends.cudnn.allow_tf32)}


def conf_dir() -> Path:
    """The Hydra config groups: ``adaprec/conf/`` inside an installed wheel (pyproject.toml maps
    the top-level ``conf/`` there), else the top-level ``conf/`` of the checkout that holds the
    package (a checkout or an editable install). The one place that knows where ``conf`` is."""
    package = Path(__file__).resolve().parents[1]
    for path in (package / "conf", package.parent / "conf"):
        if (path / "config.yaml").is_file():
            return path
    raise FileNotFoundError(f"adaprec's configs are missing: neither {package / 'conf'} nor "
                            f"{package.parent / 'conf'} holds config.yaml; reinstall adaprec "
                            "(pip install . from a checkout ships conf/ inside the package)")


@dataclass(frozen=True)
class DeviceProfile:
    """Peak rates of one device; see the module docstring for the fields."""

    name: str
    peak_tflops: Mapping[str, float] = field(default_factory=dict)
    bandwidth_tbps: float | Mapping[str, float] = 0.0
    fallback: Mapping[str, str] = field(default_factory=dict)
    tf32: Mapping[str, bool] = field(default_factory=dict)
    op_tflops: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    efficiency: Mapping[str, float] = field(default_factory=dict)
    kernel_us: float = 0.0
    optimizer_foreach: bool = False
    emulated: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    metric: str = "seconds"
    notes: str = ""

    def __post_init__(self):
        if self.metric not in _METRICS:
            raise ValueError(f"profile {self.name!r}: metric must be one of {_METRICS}, got {self.metric!r}")
        if self.metric == "seconds":
            for fmt in FORMATS:
                eff = self.compute_format(fmt)
                if self.peak_tflops.get(self._peak_key(eff) or eff, 0) <= 0:
                    raise ValueError(f"profile {self.name!r} has no positive peak_tflops for {eff!r} "
                                     f"(format {fmt}); add it or a fallback: {{{fmt}: <format>}}")
                if self.bandwidth(eff) <= 0:
                    raise ValueError(f"profile {self.name!r} needs a positive bandwidth_tbps for {eff!r}")
        bad = {k: v for k, v in self.efficiency.items() if k not in _OP_CLASSES or not 0 < float(v) <= 1}
        if bad:
            raise ValueError(f"profile {self.name!r}: efficiency {bad} invalid; keys {_OP_CLASSES}, "
                             "values in (0, 1]")
        if set(self.tf32) - set(_TF32_KINDS):
            raise ValueError(f"profile {self.name!r}: tf32 keys must be among {_TF32_KINDS}, "
                             f"got {sorted(self.tf32)}")
        if self.kernel_us < 0:
            raise ValueError(f"profile {self.name!r}: kernel_us must be >= 0, got {self.kernel_us}")
        for fmt, r in self.emulated.items():
            if get_format(fmt).name == "fp32" or set(r) != {"call_us", "ns_per_elem"} \
                    or min(r.values()) < 0:
                raise ValueError(f"profile {self.name!r}: emulated.{fmt} must be a non-fp32 format "
                                 "with {call_us: >=0, ns_per_elem: >=0}")

    @property
    def unit(self) -> str:
        """Unit of a priced cost: ``"s"`` (modeled seconds) or ``"bops"``."""
        return "s" if self.metric == "seconds" else "bops"

    def resolve(self, fmt: str) -> str:
        """The format ``fmt`` actually runs as on this device (the module docstring's rule)."""
        name = get_format(fmt).name
        seen = [name]
        while True:
            if name in self.fallback:
                nxt = self.fallback[name]
            elif (name in self.emulated or self._peak_key(name) is not None
                  or get_format(name).fallback is None):
                return name
            else:
                nxt = get_format(name).fallback
            name = get_format(nxt).name
            if name in seen:
                raise ValueError(f"profile {self.name!r}: fallback cycle {' -> '.join(seen + [name])}")
            seen.append(name)

    def _peak_key(self, fmt: str) -> str | None:
        """The ``peak_tflops`` key that prices ``fmt``: its name, else its element width."""
        if fmt in self.peak_tflops:
            return fmt
        width = f"fp{get_format(fmt).bits}"
        return width if width in self.peak_tflops and get_format(fmt).bits < 16 else None

    def is_emulated(self, fmt: str) -> bool:
        """Whether ``fmt`` (already resolved) runs as fp32 kernels plus rounding here."""
        return fmt in self.emulated

    def compute_format(self, fmt: str) -> str:
        """The format the kernels of a ``fmt`` layer compute and store in (resolved, emulation
        followed: an emulated format's tensors are fp32)."""
        eff = self.resolve(fmt)
        return "fp32" if self.is_emulated(eff) else eff

    def flops_per_s(self, fmt: str, kind: str | None = None) -> float:
        """Achievable FLOP/s for ``fmt`` (a compute format) on op ``kind`` ("matmul", "conv"):
        a measured ``op_tflops`` rate as is, else the peak (TF32 where ``tf32[kind]``) x
        ``efficiency.gemm``."""
        if kind is not None and kind in self.op_tflops and fmt in self.op_tflops[kind]:
            return float(self.op_tflops[kind][fmt]) * 1e12
        eff = float(self.efficiency.get("gemm", 1.0))
        if fmt == "fp32" and self.tf32.get(kind or "matmul", False) and "tf32" in self.peak_tflops:
            return float(self.peak_tflops["tf32"]) * 1e12 * eff
        return float(self.peak_tflops[self._peak_key(fmt) or fmt]) * 1e12 * eff

    def bandwidth(self, fmt: str) -> float:
        """Achievable bytes per second for tensors in ``fmt``: ``bandwidth_tbps`` x
        ``efficiency.elementwise``."""
        bw = self.bandwidth_tbps
        if isinstance(bw, Mapping):
            bw = bw.get(fmt, bw.get("default", 0.0))
        return float(bw) * 1e12 * float(self.efficiency.get("elementwise", 1.0))

    def rounding_s(self, fmt: str, tensors: int, elems: int) -> float:
        """Seconds to round ``tensors`` tensors of ``elems`` elements in all to emulated ``fmt``
        (forward and gradient)."""
        r = self.emulated[fmt]
        return tensors * float(r["call_us"]) * 1e-6 + elems * float(r["ns_per_elem"]) * 1e-9

    @property
    def kernel_s(self) -> float:
        return float(self.kernel_us) * 1e-6

    @classmethod
    def from_dict(cls, data: Mapping, name: str | None = None) -> "DeviceProfile":
        known = set(cls.__dataclass_fields__)
        extra = set(data) - known - {"measurements", "source", "machine", "date", "fp32_uses_tf32"}
        if extra:
            raise ValueError(f"unknown profile keys {sorted(extra)}; valid keys: {sorted(known)}")
        data = dict(data)
        if "fp32_uses_tf32" in data:  # profiles written before per-kind tf32
            on = bool(data.pop("fp32_uses_tf32"))
            data.setdefault("tf32", {"matmul": on, "conv": on})
        fields = {k: v for k, v in data.items() if k in known}
        fields["emulated"] = {get_format(f).name: dict(r) for f, r in (fields.get("emulated") or {}).items()}
        fields["name"] = str(fields.get("name") or name or "unnamed")
        return cls(**fields)


def profile_names() -> list[str]:
    """Names of the profiles shipped in ``conf/cost/``."""
    return sorted(p.stem for p in (conf_dir() / "cost").glob("*.yaml"))


def load_profile(spec: str | Path | Mapping | DeviceProfile) -> DeviceProfile:
    """A profile by name (``"h100"`` -> ``conf/cost/h100.yaml``), YAML path, dict, or as is."""
    if isinstance(spec, DeviceProfile):
        return spec
    if isinstance(spec, Mapping):
        return DeviceProfile.from_dict(spec)
    path = Path(spec)
    if not path.suffix:
        path = conf_dir() / "cost" / f"{spec}.yaml"
    if not path.is_file():
        raise ValueError(f"no cost profile {str(spec)!r}; names: {', '.join(profile_names())}, "
                         "or a path to a YAML written by `python -m adaprec.tools.calibrate`")
    data = yaml.safe_load(path.read_text()) or {}
    return DeviceProfile.from_dict(data, name=path.stem)
