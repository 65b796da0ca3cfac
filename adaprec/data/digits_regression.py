"""A regression task on real inputs: scikit-learn's digits pixels in, a fixed teacher's output out.

Built for precision studies: ``input_scale`` keeps the pixels in large raw units (activations
then leave fp16's range), and ``target_offset`` / ``target_scale`` put the targets where a
format's spacing or smallest subnormal matters. The teacher is a fixed random one-hidden-layer
tanh network of the standardized pixels, so the target is an exact, learnable function of the
inputs: any error floor a run hits comes from its number formats, not from label noise.
"""
from __future__ import annotations

import torch

from adaprec.data._common import bundled_digits, stratified_split
from adaprec.data.bundle import DataBundle

__all__ = ["load_digits_regression", "teacher_targets"]


def teacher_targets(pixels: torch.Tensor, seed: int, width: int = 32,
                    out_features: int = 1) -> torch.Tensor:
    """Standardized (mean 0, std 1 per output) outputs of a fixed random tanh network of
    ``pixels`` ``[N, D]`` (standardized per feature first): ``[N]`` for one output, else
    ``[N, out_features]``; ``seed`` fixes the network (its first output is, up to
    float rounding, the same for any ``out_features``)."""
    gen = torch.Generator().manual_seed(seed)
    z = (pixels - pixels.mean(0)) / (pixels.std(0) + 1e-3)  # constant border pixels: std 0
    w1 = torch.randn(pixels.size(1), width, generator=gen) / pixels.size(1) ** 0.5
    w2 = torch.randn(width, generator=gen)
    if out_features > 1:  # more outputs: more columns drawn after the first one's
        w2 = torch.cat([w2[:, None], torch.randn(width, out_features - 1, generator=gen)], 1)
    t = torch.tanh(z @ w1) @ w2
    return (t - t.mean(0)) / t.std(0)


def load_digits_regression(input_scale: float | None = None, target_offset: float = 0.0,
                           target_scale: float = 1.0, val_fraction: float = 0.2, seed: int = 0,
                           teacher_seed: int = 1234, out_features: int = 1, **_) -> DataBundle:
    """Digits as ``x [N, 64]`` and ``y = target_offset + target_scale * teacher(x)``: ``[N]``,
    or ``[N, out_features]`` (independent teacher outputs) when ``out_features > 1``.

    ``input_scale``: ``None`` standardizes the pixels (train statistics); a number keeps the raw
    intensities (0..16) multiplied by it, unnormalized. The split is stratified by digit class
    and fixed by ``seed``. Extra config keys (``task``) are accepted and ignored.
    """
    pixels, labels = bundled_digits()
    if out_features < 1:
        raise ValueError(f"out_features must be >= 1, got {out_features}")
    y = target_offset + target_scale * teacher_targets(pixels, teacher_seed, out_features=out_features)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    if input_scale is None:
        mean, std = pixels[train_idx].mean(0), pixels[train_idx].std(0) + 1e-3
        x = (pixels - mean) / std
    else:
        if input_scale <= 0:
            raise ValueError(f"input_scale must be > 0 (or null to standardize), got {input_scale}")
        x = pixels * float(input_scale)
    return DataBundle("regression", x[train_idx], y[train_idx].float(), x[val_idx],
                      y[val_idx].float())
