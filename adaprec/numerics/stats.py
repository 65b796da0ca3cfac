"""Per-tensor numerics statistics, reduced on the device and derived on the host.

``raw_stats`` returns a small vector of sums and counts (so statistics of several tensors, e.g.
a layer's weight and bias, combine by adding/maxing) without any host sync. ``derive`` turns
the read-back vector into the ratios a controller reads.

Definitions (``x`` evaluated in fp32; gradients first multiplied up to the loss scale under
which fp16 would see them):
- ``fp16_overflow``: fraction that becomes inf when cast to fp16 (|x| >= 65520 after RNE, plus
  values already inf); ``fp16_underflow``: nonzero finite values below fp16's smallest normal
  2^-14; ``fp16_flush``: nonzero values that round to zero in fp16 (|x| <= 2^-25).
- ``<fmt>_rel_err``: ||x - round_fmt(x)|| / ||x|| over elements finite in x and in the format,
  so the error measures mantissa loss and range problems are counted by the rates above.
- ``absmax`` and ``norm`` at the true (unscaled) magnitude; both are inf when any element is
  inf or NaN (``nonfinite_frac`` then says how many). ``mean_abs`` averages the finite values.

Cost: ``absmax`` (and, with ``exact_norm``, ``norm``) take one fused pass over the whole
tensor. Rates, mean and rounding errors are computed on a strided sample of at most
``sample`` elements (all of them for smaller tensors, so small tensors are exact); the
stride is a prime, so the sample never aliases with power-of-two or small periodic layouts.
Presence is never missed: when the exact absmax is non-finite or beyond fp16's range and the
sample saw none, the count is raised to one element.

**Every candidate format** (``reduce_probes(..., formats=...)``; the monitor passes the formats
its controller may choose) gets a :class:`FormatError` per tensor, evaluated on the same sample
at the scale that format really uses: the loss scale (gradients are already at it) for the
unscaled formats; for per-tensor formats a power-of-two scale from the tensor's exact amax
(the ``current`` recipe; a delayed history may differ); for block and tile formats each block's
own scale, which needs the sample to hold whole blocks of the blocking dimension: probes are
then taken with ``chunk`` = the largest block size, as whole chunks of consecutive elements
along the dimension the executor blocks (the last one, channels for convolution activations,
``(out, rest)`` rows for weights), each row zero-padded to a whole number of chunks (zeros never
change a block's amax and count nowhere). Tile formats (DeepSeek 128x128 weight blocks) are
judged with 1x128 tiles for every tensor (a documented approximation). A format with per-role
formats (``fp8_hybrid``) is judged per kind by the format of that role: forward formats for
``input``/``act``/``weight``, the ``dgrad`` format for ``grad``, the ``wgrad`` one for ``wgrad``.

- ``overflow``: finite values whose scaled magnitude reaches past the format's largest value
  plus half an ulp (they would be inf, or saturate to +-max); ``underflow``: nonzero values
  that become 0 at the format's scale (flush to zero); ``rel_err``: ``||q - x|| / ||x||`` over
  values in range (mantissa loss, flushes included); ``mse``: the mean squared error of the
  in-range values at the true magnitude, over all elements (Transformer Engine's quantization
  MSE); ``dyn_range`` (per tensor): log2 of absmax over the smallest nonzero magnitude seen.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache

import torch
import torch.nn.functional as F

from adaprec.numerics.formats import FP16, Format, get_format, registry_generation
from adaprec.numerics.recipes import Block, PerTensor, Tiles, Unscaled, pow2_scale

__all__ = ["TensorStats", "LayerStats", "FormatError", "ShadowStats", "raw_stats", "combine_raw",
           "derive", "tensor_stats", "STAT_NAMES", "FORMAT_STATS", "SHADOW_STATS", "KINDS",
           "DEFAULT_SAMPLE", "DEFAULT_FORMATS", "Probe", "probe", "reduce_probes", "combine_rows",
           "judged_plain", "chunk_for", "format_for_kind"]

KINDS = ("input", "act", "grad", "weight", "wgrad")
DEFAULT_FORMATS = ("fp32", "bf16", "fp16")
# positions in the raw vector; counts and sums are estimates for the whole tensor. Per judged
# plain format, _PER_FORMAT more columns follow from _FIRST_FORMAT on.
(_N, _NONFIN, _ABSMAX, _SUMABS, _SUMSQ, _OVF, _UNF, _FLUSH, _ERRBF, _ERRH, _SUMSQH, _SCALE,
 _EXACT_SUMSQ, _MINNZ) = range(14)
_FIRST_FORMAT = 14
(_F_OVF, _F_FLUSH, _F_ERR, _F_SQ) = range(4)
_PER_FORMAT = 4
_FP16_TINY = FP16.smallest_normal
_FP16_OVERFLOW_AT = 65520.0  # smallest magnitude that rounds to inf in fp16 (RNE)
DEFAULT_SAMPLE = 1 << 14  # rates: standard error <= 0.4% at p = 0.5, 0.08% at p = 0.01


@dataclass(frozen=True)
class FormatError:
    """What one format would do to one tensor at the scale it really uses (module docstring)."""

    overflow: float = 0.0
    underflow: float = 0.0
    rel_err: float = 0.0
    mse: float = 0.0


FORMAT_STATS = tuple(f.name for f in fields(FormatError))


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor (or a group, e.g. a layer's parameters) at one step.

    ``formats``: a :class:`FormatError` per judged format (empty for hand-built statistics
    that predate it; :meth:`error` then falls back to the fp16/bf16 fields)."""

    numel: int
    absmax: float
    mean_abs: float
    nonfinite_frac: float
    fp16_overflow: float
    fp16_underflow: float
    fp16_flush: float
    bf16_rel_err: float
    fp16_rel_err: float
    norm: float
    dyn_range: float = 0.0
    formats: Mapping[str, FormatError] = field(default_factory=dict)

    def error(self, fmt: str) -> FormatError | None:
        """The judged error of ``fmt`` on this tensor; None when ``fmt`` was not judged."""
        name = get_format(fmt).name
        if name in self.formats:
            return self.formats[name]
        if name == "fp32":
            return FormatError()
        if name == "fp16":
            return FormatError(self.fp16_overflow, self.fp16_flush, self.fp16_rel_err,
                               (self.fp16_rel_err * self.norm) ** 2 / max(self.numel, 1))
        if name == "bf16":
            return FormatError(0.0, 0.0, self.bf16_rel_err,
                               (self.bf16_rel_err * self.norm) ** 2 / max(self.numel, 1))
        return None


STAT_NAMES = tuple(f.name for f in fields(TensorStats) if f.name not in ("numel", "formats"))


@dataclass(frozen=True)
class ShadowStats:
    """A layer's output in its format against the same layer recomputed in fp32 on the same
    (raw, fp32) input slice: ``rel_err`` = ||y - y32|| / ||y32||, ``rmse`` (absolute),
    ``spread`` = the standard deviation of y32, ``rel_spread`` = rmse / spread (the error
    relative to how much the output varies: the mantissa signal a per-element relative error
    misses when outputs sit far from zero), ``numel`` compared."""

    rel_err: float
    rmse: float
    spread: float
    rel_spread: float
    numel: int
    reference: TensorStats | None = None

    def predicted(self, fmt: str) -> float:
        """``rel_spread`` the layer's output would have from being held in ``fmt``: the
        reference (fp32) output rounded to ``fmt`` at its real scale, RMSE over the spread
        (0 for fp32, inf when ``fmt`` was not judged). A lower bound on the whole layer's error
        in ``fmt`` (input and weight rounding come on top)."""
        err = self.reference.error(fmt) if self.reference is not None else None
        if err is None:
            return float("inf")
        if err.overflow > 0:
            return float("inf")
        if self.spread <= 0:
            return 0.0 if err.mse == 0 else float("inf")
        return err.mse ** 0.5 / self.spread


SHADOW_STATS = ("rel_err", "rmse", "spread", "rel_spread")


@dataclass(frozen=True)
class LayerStats:
    """What the monitor measured for one layer at one sampled step.

    The GEMM operands in fp32 before any cast (Transformer Engine's fprop / dgrad / wgrad
    inputs): ``input``, the layer's input activation; ``weight``, its own parameters;
    ``grad``, the gradient arriving at its output. Also ``act``, the output as the layer
    stored it (in its format), and ``wgrad``, the parameters' gradients. ``shadow``: the
    output against an fp32 recomputation (sampled slice). A kind is None when absent (no
    parameters, output not differentiable, a layer the monitor cannot recompute).
    """

    layer: str
    step: int
    format: str
    act: TensorStats | None = None
    grad: TensorStats | None = None
    weight: TensorStats | None = None
    wgrad: TensorStats | None = None
    input: TensorStats | None = None
    shadow: ShadowStats | None = None

    def as_row(self) -> dict:
        """Flat ``{"step", "layer", "format", "<kind>_<stat>": value,
        "<kind>_<format>_<stat>": value, "shadow_<stat>": value}`` (NaN where absent)."""
        row: dict = {"step": self.step, "layer": self.layer, "format": self.format}
        judged = sorted({f for k in KINDS if getattr(self, k) is not None
                         for f in getattr(self, k).formats})
        for kind in KINDS:
            ts = getattr(self, kind)
            for name in STAT_NAMES:
                row[f"{kind}_{name}"] = getattr(ts, name) if ts is not None else float("nan")
            for fmt in judged:
                err = ts.formats.get(fmt) if ts is not None else None
                for name in FORMAT_STATS:
                    row[f"{kind}_{fmt}_{name}"] = getattr(err, name) if err is not None else float("nan")
        for name in SHADOW_STATS:
            row[f"shadow_{name}"] = getattr(self.shadow, name) if self.shadow is not None else float("nan")
        for fmt in judged:
            row[f"shadow_{fmt}_rel_spread"] = (self.shadow.predicted(fmt) if self.shadow is not None
                                               else float("nan"))
        return row

    def worst(self, stat: str, kinds: tuple[str, ...] = ("act", "grad")) -> float:
        """Largest value of ``stat`` over the given kinds (0 when none present)."""
        vals = [getattr(getattr(self, k), stat) for k in kinds if getattr(self, k) is not None]
        return max(vals, default=0.0)

    def worst_error(self, fmt: str, stat: str, kinds: Sequence[str] = ("input", "weight", "grad")) -> float:
        """Largest :class:`FormatError` ``stat`` of ``fmt`` over the present ``kinds`` (default:
        the GEMM operands); inf when a present kind was not judged in ``fmt`` (unknown is not
        safe), 0 when no kind is present."""
        out = 0.0
        for k in kinds:
            ts = getattr(self, k)
            if ts is None:
                continue
            err = ts.error(fmt)
            out = max(out, float("inf") if err is None else getattr(err, stat))
        return out


@lru_cache(maxsize=4096)
def _prime_at_least(k: int) -> int:
    k = max(k, 2)
    while any(k % d == 0 for d in range(2, int(k**0.5) + 1)):
        k += 1
    return k


def _sample(x: torch.Tensor, sample: int) -> torch.Tensor:
    flat = x.reshape(-1)
    n = flat.numel()
    if n <= sample:
        return flat
    return flat[:: _prime_at_least(-(-n // sample))]


def _rows_view(x: torch.Tensor, axis: int, weight: bool) -> torch.Tensor:
    """``x`` as ``(A, B, C)`` with C the blocking dimension (a view where the layout allows)."""
    if x.dim() <= 1:
        return x.reshape(1, 1, -1)
    if weight and x.dim() > 2:
        return x.reshape(1, x.shape[0], -1)
    if axis not in (-1, x.dim() - 1) and x.dim() > 2:  # (N, C, ...) blocked over channels
        return x.flatten(2).transpose(1, 2)
    return x.reshape(1, -1, x.shape[-1])


def _chunk_sample(x: torch.Tensor, sample: int, chunk: int, axis: int, weight: bool
                  ) -> tuple[torch.Tensor, int]:
    """Whole rows of the blocking dimension (prime row stride), each zero-padded to a multiple
    of ``chunk``; rows longer than ``sample`` fall back to every k-th chunk of the flat tensor
    (chunks there may straddle rows). Returns the flat sample (a copy) and its real count."""
    v = _rows_view(x, axis, weight)
    a, b, c = v.shape
    pad = (-c) % chunk
    rows = a * b
    if c + pad <= sample:
        k = 1 if rows * (c + pad) <= sample else _prime_at_least(-(-rows * (c + pad) // sample))
        idx = torch.arange(0, rows, k, device=x.device)
        picked = v[idx // b, idx % b]  # (K, C): advanced indexing copies
        real = picked.numel()
        picked = F.pad(picked, (0, pad)) if pad else picked
        return picked.reshape(-1), real
    flat = x.reshape(-1)
    n_chunks = flat.numel() // chunk
    k = _prime_at_least(-(-n_chunks * chunk // sample))
    picked = flat[: n_chunks * chunk].view(n_chunks, chunk)[::k].reshape(-1)
    return picked, picked.numel()


@dataclass
class Probe:
    """What a hook keeps of one tensor on a sampled step: exact full-tensor reductions and a
    small fp32 sample at loss scale ``scale``. Probes are reduced together by
    :func:`reduce_probes`, so the per-tensor cost is a handful of ops whatever the stat count.
    ``real``: elements of ``sample`` that came from the tensor (the rest is block padding);
    ``chunk``: the sample holds whole chunks of this many elements of the blocking dimension."""

    sample: torch.Tensor
    numel: int
    absmax: torch.Tensor            # 0-dim float64 at ``scale``; NaN/inf propagate
    sumsq: torch.Tensor | None      # exact sum of squares at ``scale``, or None
    scale: float
    real: int = -1
    chunk: int = 1

    def __post_init__(self):
        if self.real < 0:
            self.real = self.sample.numel()


def probe(x: torch.Tensor, scale: float = 1.0, prescaled: float = 1.0,
          sample: int = DEFAULT_SAMPLE, exact_norm: bool = False, exact_absmax: bool = True,
          chunk: int = 1, axis: int = -1, weight: bool = False) -> Probe:
    """Take a :class:`Probe` of ``x`` (no host sync).

    Range checks see ``x`` at loss scale ``scale``; ``prescaled`` is the scale ``x`` already
    carries (a gradient from a scaled backward). ``exact_norm`` adds one pass for the exact
    L2 norm (used for parameters and their gradients). ``exact_absmax=False`` takes absmax from
    the sample too: no full pass at all, but a rare inf or overflow outside the sample can be
    missed (the monitor's ``exact=False`` mode, for statistics on every step). ``chunk`` > 1
    samples whole blocks of the blocking dimension (``axis``; ``weight``: ``(out, rest)`` rows)
    so block formats can be judged (module docstring); 1 samples single elements.
    """
    x = x.detach()
    # equal scales (the usual case while scaling is on) need no division: a loss scale that
    # backed off all the way to 0.0 (every step overflowing) must not raise ZeroDivisionError
    factor = 1.0 if scale == prescaled else scale / prescaled
    n = x.numel()
    if n == 0:
        z = torch.zeros((), dtype=torch.float64, device=x.device)
        return Probe(x.reshape(-1).float(), 0, z, z if exact_norm else None, scale, 0, chunk)
    sumsq = (torch.linalg.vector_norm(x, 2, dtype=torch.float32).to(torch.float64) * factor) ** 2 \
        if exact_norm else None
    # a copy, never a view: the tensor may change in place before the probe is reduced
    # (gradients are unscaled in place, an inplace ReLU rewrites its input's activations)
    if chunk > 1:
        xs, real = _chunk_sample(x, sample, chunk, axis, weight)
        xs = xs.to(torch.float32, copy=True)
    else:
        xs = _sample(x, sample).to(torch.float32, copy=True)
        real = xs.numel()
    xs = xs * factor if factor != 1.0 else xs
    source, scale_by = (x, factor) if exact_absmax else (xs, 1.0)
    absmax = _absmax(source).to(torch.float64) * scale_by
    return Probe(xs, n, absmax, sumsq, scale, real, chunk)


def _absmax(x: torch.Tensor) -> torch.Tensor:
    """max |x| (NaN if any element is NaN), in one pass: aminmax reads ``x`` once without an
    |x| temporary and runs ~15x faster than ``vector_norm(x, inf)`` on CPU."""
    if not x.is_floating_point() or x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        x = x.float()
    lo, hi = torch.aminmax(x)
    return torch.maximum(hi, -lo).float()  # maximum propagates NaN


def judged_plain(formats: Sequence[str]) -> list[Format]:
    """The plain formats (no per-role formats) that judging ``formats`` needs, fp32 left out
    (it is exact by definition)."""
    out: dict[str, Format] = {}
    for name in formats:
        fmt = get_format(name)
        for role, grad in (("input", False), ("weight", False), ("output", True), ("weight", True)):
            plain = fmt.role_format(role, grad)
            if plain.name != "fp32":
                out[plain.name] = plain
    return list(out.values())


def chunk_for(formats: Sequence[str]) -> int:
    """The sample chunk judging ``formats`` needs: the largest block (tile) size, else 1."""
    sizes = [1]
    for f in judged_plain(formats):
        if isinstance(f.recipe, Block):
            sizes.append(f.recipe.size)
        elif isinstance(f.recipe, Tiles):
            sizes.append(f.recipe.activation[1])
    return max(sizes)


def format_for_kind(fmt: str, kind: str) -> str:
    """The plain format ``fmt`` uses for a tensor of ``kind`` (its per-role formats)."""
    f = get_format(fmt)
    role = {"weight": ("weight", False), "wgrad": ("weight", True), "grad": ("output", True)}.get(
        kind, ("input", False))
    return f.role_format(*role).name


def _overflow_limit(fmt: Format) -> float:
    """Smallest magnitude the element cannot hold: max plus half an ulp at the top binade."""
    e = fmt.element
    return fmt.max + 2.0 ** (math.floor(math.log2(fmt.max)) - e.mbits - 1)


def _judge(fmt: Format, af: torch.Tensor, amax: torch.Tensor,
           rounded: dict[torch.dtype, torch.Tensor]) -> list[torch.Tensor]:
    """Per element of ``af`` (``[rows, L]``: |x| of one probe per row, finite) in ``fmt`` at
    its real scale: overflow, squared error, in-range square, and zero after rounding (a flush
    or a zero already); ``amax``: each row's probe's finite absmax, ``[rows]``; ``rounded``:
    ``af`` already cast to 16-bit dtypes and back (an unscaled format reuses its cast)."""
    e, r = fmt.element, fmt.recipe
    rows, length = af.shape
    if isinstance(r, PerTensor):
        s = pow2_scale(e.max, amax.float(), r.margin)
        s = torch.where(torch.isfinite(s) & (amax > 0), s, torch.ones_like(s))[:, None]
        y, deq = af * s, 1.0 / s
    elif isinstance(r, Block):
        t = None
        if r.tensor_scale:  # NVFP4's per-tensor scale, one per probe (blocks never straddle probes)
            t = (amax.float() / (r.scale_element.max * e.max))
            t = torch.where(amax > 0, t, torch.ones_like(t))
            t = t[:, None].expand(rows, length // r.size).reshape(-1, 1)
        blocks, mul, deq_b, _, _ = r._scaled(af.reshape(-1), e, t)
        y, deq = (blocks * mul).reshape(rows, length), deq_b.expand_as(blocks).reshape(rows, length)
    elif isinstance(r, Tiles):
        blocks, s = r._scaled(af.reshape(-1), e, "input")
        y, deq = (blocks / s).reshape(rows, length), s.expand_as(blocks).reshape(rows, length)
    else:
        y, deq = af, None
    over = y >= _overflow_limit(fmt)
    if deq is None and not e.saturate and e.dtype in rounded:
        q = rounded[e.dtype]  # e.round(af) is this very cast
    else:
        q = e.round(y.clamp(max=e.max) if e.saturate else y)
        q = q * deq if deq is not None else q
    # arithmetic masks, not torch.where (several times slower on CPU): in range = 1 - over;
    # an out-of-range q (inf) times 0 is NaN, which nan_to_num zeroes as the mask would
    ok = 1.0 - over.float()
    err = torch.nan_to_num((q - af) * ok, nan=0.0, posinf=0.0, neginf=0.0)
    return [over, err * err, af * af * ok, q == 0]


def _pow2_at_least(m: int) -> int:
    return 1 << max(m - 1, 0).bit_length()


# elements per pass on CPU: temporaries of 64k floats stay in cache and in the allocator's
# free lists (whole-sample temporaries of several MB were paged in afresh at every op, half
# the time); on an accelerator one pass over everything, as fewest launches
_CPU_PASS = 1 << 16


def _row_sums(x: torch.Tensor, amax: torch.Tensor, plain: list[Format]) -> torch.Tensor:
    """Per row of ``x`` (``[rows, L]``, zero padded): the sums, counts and smallest nonzero of
    :func:`reduce_probes`, ``[rows, 10 + 4 * len(plain)]`` float64 (column 9: min nonzero)."""
    a = x.abs()
    af = torch.nan_to_num(a, nan=0.0, posinf=0.0)  # |x| >= 0: no -inf; non-finite -> 0
    d = a - af  # 0 where finite, inf where inf, NaN where NaN
    nonfinite = torch.nan_to_num(d, nan=1.0, posinf=1.0)
    inf_x = torch.nan_to_num(d, nan=0.0, posinf=1.0)
    hf = af.to(torch.float16).float()
    over_h = torch.nan_to_num(hf * 0.0, nan=1.0)  # inf * 0 = NaN: fp16 overflowed
    err_h = torch.nan_to_num(hf - af, posinf=0.0)
    af_h = af * (1.0 - over_h)
    bf = af.to(torch.bfloat16).float()
    err_bf = bf - af
    zero = af == 0
    fp16 = [over_h, err_h * err_h, af_h * af_h, hf == 0]  # fp16's judged columns (as _judge's)
    # counts that include zeros (a zero is below fp16's tiny and rounds to 0) have them
    # subtracted: underflows and flushes are of nonzero values only
    columns = [nonfinite, inf_x + over_h, af, af * af, (af < _FP16_TINY, True), (fp16[3], True),
               err_bf * err_bf, fp16[1], fp16[2]]
    for fmt in plain:
        e = fmt.element
        if isinstance(fmt.recipe, Unscaled) and e.dtype == torch.float16 and not e.saturate:
            over, err2, sq_ok, q_zero = fp16  # what _judge would compute, already here
        else:
            over, err2, sq_ok, q_zero = _judge(fmt, af, amax, {torch.float16: hf, torch.bfloat16: bf})
        columns += [over, (q_zero, True), err2, sq_ok]
    nz = zero.sum(-1, dtype=torch.float32)
    done: dict[int, torch.Tensor] = {}  # each distinct tensor summed once
    sums = []
    for c in columns:
        t, less_zeros = c if isinstance(c, tuple) else (c, False)
        if id(t) not in done:
            done[id(t)] = t.sum(-1, dtype=torch.float32)
        sums.append(done[id(t)] - nz if less_zeros else done[id(t)])
    # smallest nonzero: on non-negative floats the int32 bit pattern orders like the value;
    # (bits - 1) & 0x7fffffff sends 0 to the largest int, so a zero is never the minimum
    low = ((af.view(torch.int32) - 1) & 0x7FFFFFFF).amin(-1)
    none = low == 0x7FFFFFFF  # no nonzero value: inf, as a min over nothing
    minnz = torch.where(none, torch.full_like(low, 0x7F800000), low + 1).view(torch.float32)
    return torch.stack([*sums[:9], minnz, *sums[9:]], 1).to(torch.float64)


def reduce_probes(probes: list[Probe], formats: Sequence[str] = ()) -> torch.Tensor:
    """Raw statistics vectors of many probes as one ``[len(probes), RAW_LEN]`` float64 matrix.

    Each sample is zero-padded to a power of two (zeros count nowhere: a zero is finite, in
    range, not a flush, and errs by nothing) and the probes are ordered by that length, so
    probes of equal length form one ``[rows, L]`` matrix whose statistics are row sums: a
    fixed number of ops per pass whatever the probe count, each judged format
    (:func:`judged_plain` of ``formats``) adding a few. Masks are arithmetic where possible
    (``torch.where`` and ``isfinite`` are the slowest elementwise ops on CPU); sums accumulate
    in fp32 (torch's cascade summation; counts are exact) and are returned in float64.
    """
    dev = probes[0].sample.device
    f64 = torch.float64
    lengths = [p.sample.numel() for p in probes]
    plain = judged_plain(formats)
    block = 1
    for fmt in plain:
        size = fmt.recipe.size if isinstance(fmt.recipe, Block) else (
            fmt.recipe.activation[1] if isinstance(fmt.recipe, Tiles) else 1)
        if any(m % size for m in lengths):
            raise ValueError(f"judging {fmt.name} needs probes taken with chunk a multiple of "
                             f"{size} (probe(..., chunk=chunk_for(formats)))")
        block = max(block, size)
    padded = [_pow2_at_least(max(m, block)) for m in lengths]  # whole blocks, never empty
    order = sorted(range(len(probes)), key=padded.__getitem__)
    absmax = torch.stack([p.absmax for p in probes])
    finite_amax = torch.where(torch.isfinite(absmax), absmax, torch.zeros_like(absmax))
    per_pass = _CPU_PASS if dev.type == "cpu" else None
    parts, i = [], 0
    while i < len(order):  # one pass: probes of one padded length, at most per_pass elements
        length = padded[order[i]]
        rows = 1 if per_pass is None else max(1, per_pass // length)
        j = i
        while j < len(order) and padded[order[j]] == length and (per_pass is None or j - i < rows):
            j += 1
        batch = order[i:j]
        pieces = []
        for k in batch:
            pieces.append(probes[k].sample)
            if length > lengths[k]:
                pieces.append(torch.zeros(length - lengths[k], device=dev))
        x = torch.cat(pieces).view(len(batch), length)
        parts.append(_row_sums(x, finite_amax[torch.tensor(batch, device=dev)], plain))
        i = j
    raw = torch.cat(parts)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    raw = raw[inverse.to(dev)]
    sums, minnz = torch.cat([raw[:, :9], raw[:, 10:]], 1), raw[:, 9]
    numel = torch.tensor([float(p.numel) for p in probes], dtype=f64, device=dev)
    k = numel / torch.tensor([float(max(p.real, 1)) for p in probes], dtype=f64, device=dev)
    sums = sums * k[:, None]  # sample counts -> whole-tensor estimates
    nan = torch.full((), float("nan"), dtype=f64, device=dev)
    exact = torch.stack([p.sumsq if p.sumsq is not None else nan for p in probes])
    # the exact absmax sees every element: presence is never missed by the sample
    nonfin = torch.where(torch.isfinite(absmax), sums[:, 0], sums[:, 0].clamp(min=1.0))
    overflow = torch.where(absmax.nan_to_num(0.0) >= _FP16_OVERFLOW_AT, sums[:, 1].clamp(min=1.0), sums[:, 1])
    absmax = torch.where(torch.isnan(absmax), float("inf"), absmax)  # any non-finite -> inf
    scale = torch.tensor([p.scale for p in probes], dtype=f64, device=dev)
    base = torch.stack([numel, nonfin, absmax, sums[:, 2], sums[:, 3], overflow, sums[:, 4],
                        sums[:, 5], sums[:, 6], sums[:, 7], sums[:, 8], scale, exact, minnz], 1)
    return torch.cat([base, sums[:, 9:]], 1)


def raw_stats(x: torch.Tensor, scale: float = 1.0, prescaled: float = 1.0,
              sample: int = DEFAULT_SAMPLE, exact_norm: bool = False,
              formats: Sequence[str] = ()) -> torch.Tensor:
    """The raw statistics vector of one tensor (see :func:`probe`)."""
    return reduce_probes([probe(x, scale, prescaled, sample, exact_norm, chunk=chunk_for(formats))],
                         formats)[0]


def combine_rows(rows: list[list[float]]) -> list[float]:
    """Host-side :func:`combine_raw` of read-back rows."""
    out = [sum(col) for col in zip(*rows)]
    out[_ABSMAX] = max(r[_ABSMAX] for r in rows)
    out[_MINNZ] = min(r[_MINNZ] for r in rows)
    out[_SCALE] = rows[0][_SCALE]
    return out


def combine_raw(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Combine raw vectors of several tensors into one (sums add, absmax takes the max)."""
    stacked = torch.stack(vectors)
    out = stacked.sum(0)
    out[_ABSMAX] = stacked[:, _ABSMAX].max()
    out[_MINNZ] = stacked[:, _MINNZ].min()
    out[_SCALE] = stacked[0, _SCALE]
    return out


@lru_cache(maxsize=256)
def _judged_columns(formats: tuple[str, ...], kind: str, generation: int
                    ) -> tuple[tuple[str, int | None], ...]:
    """Per candidate of ``formats``: its name and where its columns start in the raw vector
    for a tensor of ``kind`` (None: fp32, exact). Cached per registry ``generation``: derive runs
    per probe per step."""
    plain = {f.name: i for i, f in enumerate(judged_plain(formats))}
    out = []
    for name in formats:
        cand = get_format(name).name
        p = format_for_kind(cand, kind)
        out.append((cand, None if p == "fp32" else _FIRST_FORMAT + _PER_FORMAT * plain[p]))
    return tuple(out)


def derive(raw: list[float], formats: Sequence[str] = (), kind: str = "input") -> TensorStats:
    """Turn one read-back raw vector into :class:`TensorStats` (``formats``: the candidates the
    vector was reduced with; ``kind`` picks their per-role formats)."""
    n, nonfin = raw[_N], raw[_NONFIN]
    scale = raw[_SCALE] or 1.0
    n_fin = max(n - nonfin, 1.0)
    sumsq = raw[_SUMSQ]
    exact = raw[_EXACT_SUMSQ]
    norm_sq = exact if exact == exact else sumsq  # NaN marks "not measured exactly"
    if nonfin > 0:
        norm_sq = float("inf")
    absmax, minnz = raw[_ABSMAX], raw[_MINNZ]
    dyn = math.log2(absmax / minnz) if 0 < minnz < float("inf") and math.isfinite(absmax) and absmax > 0 else (
        float("inf") if not math.isfinite(absmax) else 0.0)
    judged: dict[str, FormatError] = {}
    for cand, o in _judged_columns(tuple(formats), kind, registry_generation()):
        if o is None:  # fp32 for this kind
            judged[cand] = FormatError()
            continue
        ovf, flush, err, sq = raw[o + _F_OVF], raw[o + _F_FLUSH], raw[o + _F_ERR], raw[o + _F_SQ]
        judged[cand] = FormatError(
            overflow=min(ovf / n, 1.0) if n else 0.0, underflow=min(flush / n, 1.0) if n else 0.0,
            rel_err=(err / sq) ** 0.5 if sq > 0 else 0.0,
            mse=err / n / (scale * scale) if n else 0.0)
    return TensorStats(
        numel=int(n),
        absmax=raw[_ABSMAX] / scale,
        mean_abs=raw[_SUMABS] / n_fin / scale,
        nonfinite_frac=min(nonfin / n, 1.0) if n else 0.0,
        fp16_overflow=min(raw[_OVF] / n, 1.0) if n else 0.0,
        fp16_underflow=raw[_UNF] / n if n else 0.0,
        fp16_flush=raw[_FLUSH] / n if n else 0.0,
        bf16_rel_err=(raw[_ERRBF] / sumsq) ** 0.5 if sumsq > 0 else 0.0,
        fp16_rel_err=(raw[_ERRH] / raw[_SUMSQH]) ** 0.5 if raw[_SUMSQH] > 0 else 0.0,
        norm=norm_sq**0.5 / scale,
        dyn_range=dyn,
        formats=judged,
    )


def tensor_stats(x: torch.Tensor, scale: float = 1.0, prescaled: float = 1.0,
                 sample: int = DEFAULT_SAMPLE, exact_norm: bool = True,
                 formats: Sequence[str] = ()) -> TensorStats:
    """Convenience: raw stats read back and derived (one sync); ``formats``: judge these."""
    return derive(raw_stats(x, scale, prescaled, sample, exact_norm, formats).tolist(), formats)
