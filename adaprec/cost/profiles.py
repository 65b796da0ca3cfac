"""Device profiles: what a chip computes and moves per second, per format.

A profile is a YAML file in ``conf/cost/`` (or anywhere, loaded by path)::

    name: h100
    peak_tflops: {fp32: 66.9, tf32: 494.7, bf16: 989.4, fp16: 989.4, fp8_e4m3: 1978.9, fp8_e5m2: 1978.9}
    bandwidth_tbps: 3.35          # or {fp32: ..., bf16: ...} when measured per format
    fallback: {}                  # format -> format it runs as where the chip lacks it
    fp32_uses_tf32: false         # price fp32 matmul/conv at the tf32 peak
    op_tflops: {}                 # optional, measured: {matmul: {fp32: ..}, conv: {fp32: ..}}
    metric: seconds               # or "bitops" (MACs x bits_w x bits_a, no time)

A format a chip lacks is priced as the format it falls back to, compute *and* bytes: on a V100
an emulated-bf16 layer costs what an fp32 layer costs. Which format a format runs as
(:meth:`DeviceProfile.resolve`), first rule that applies, repeated until one stops:

1. the profile's own ``fallback`` entry for it;
2. it runs as itself if ``peak_tflops`` names it, or names its element width (``fp8``,
   ``fp6``, ``fp4``: one peak for every format of that width, e.g. mxfp8/fp8 tiles at ``fp8``);
3. the registry's ``Format.fallback`` (:mod:`adaprec.numerics.formats`): mxfp8 -> fp8,
   mxfp6 -> mxfp8_e4m3, mxfp4 -> mxfp6_e2m3, nvfp4 -> mxfp4, fp8 -> bf16. So on an H100, which
   has no fp4/fp6 tensor cores, nvfp4 and mxfp4 layers are priced as fp8 e4m3.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from adaprec.numerics.formats import FORMATS, get_format

__all__ = ["DeviceProfile", "load_profile", "profile_names", "conf_dir"]

_METRICS = ("seconds", "bitops")


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
    fp32_uses_tf32: bool = False
    op_tflops: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    metric: str = "seconds"
    notes: str = ""

    def __post_init__(self):
        if self.metric not in _METRICS:
            raise ValueError(f"profile {self.name!r}: metric must be one of {_METRICS}, got {self.metric!r}")
        if self.metric == "seconds":
            for fmt in FORMATS:
                eff = self.resolve(fmt)
                if self.peak_tflops.get(self._peak_key(eff) or eff, 0) <= 0:
                    raise ValueError(f"profile {self.name!r} has no positive peak_tflops for {eff!r} "
                                     f"(format {fmt}); add it or a fallback: {{{fmt}: <format>}}")
                if self.bandwidth(eff) <= 0:
                    raise ValueError(f"profile {self.name!r} needs a positive bandwidth_tbps for {eff!r}")

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
            elif self._peak_key(name) is not None or get_format(name).fallback is None:
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

    def flops_per_s(self, fmt: str, kind: str | None = None) -> float:
        """FLOP/s for ``fmt`` (already resolved) on op ``kind`` ("matmul", "conv")."""
        if kind is not None and kind in self.op_tflops and fmt in self.op_tflops[kind]:
            return float(self.op_tflops[kind][fmt]) * 1e12
        if fmt == "fp32" and self.fp32_uses_tf32:
            return float(self.peak_tflops["tf32"]) * 1e12
        return float(self.peak_tflops[self._peak_key(fmt) or fmt]) * 1e12

    def bandwidth(self, fmt: str) -> float:
        """Bytes per second for tensors in ``fmt`` (already resolved)."""
        bw = self.bandwidth_tbps
        if isinstance(bw, Mapping):
            bw = bw.get(fmt, bw.get("default", 0.0))
        return float(bw) * 1e12

    @classmethod
    def from_dict(cls, data: Mapping, name: str | None = None) -> "DeviceProfile":
        known = set(cls.__dataclass_fields__)
        extra = set(data) - known - {"measurements", "source", "machine", "date"}
        if extra:
            raise ValueError(f"unknown profile keys {sorted(extra)}; valid keys: {sorted(known)}")
        fields = {k: v for k, v in data.items() if k in known}
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
