"""Noise variants of a training split (PAPER.md "Data"): randY and randX with a fraction p.

Which examples are replaced, and what replaces them, is a deterministic function of the data
seed alone, independent of every model seed.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from memjax.config import check_fraction
from memjax.data.dataset import Split
from memjax.errors import MemjaxError
from memjax.keys import host_rng

INPUT_NOISE_STATS = ("per_pixel", "global")


def _choose(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(n, bool)
    mask[rng.permutation(n)[: int(round(fraction * n))]] = True
    return mask


def random_labels(split: Split, fraction: float, num_classes: int, seed: int) -> Split:
    """randY: the labels of round(fraction * N) random examples replaced by uniform labels.

    A replaced label may by chance equal the original; the example is still marked noisy.
    """
    check_fraction("label-noise fraction", fraction)
    rng = host_rng(seed, "randY")
    mask = _choose(len(split), fraction, rng)
    y = split.y.copy()
    y[mask] = rng.integers(0, num_classes, size=int(mask.sum()), dtype=np.int32)
    return replace(split, y=y, noisy=split.noisy | mask)


def random_inputs(split: Split, fraction: float, seed: int, stats: str = "per_pixel") -> Split:
    """randX: inputs of round(fraction * N) random examples replaced by i.i.d. Gaussian noise.

    The noise has the data's mean and standard deviation, per pixel (default) or global,
    measured on the split before replacement. The result's x is float16 in [0, 1] units
    (noise is unclipped, as in the paper).
    """
    check_fraction("input-noise fraction", fraction)
    if stats not in INPUT_NOISE_STATS:
        raise MemjaxError(f"input noise statistics must be one of {INPUT_NOISE_STATS}, got {stats!r}")
    rng = host_rng(seed, "randX")
    mask = _choose(len(split), fraction, rng)
    scale = 255.0 if split.x.dtype == np.uint8 else 1.0
    x = split.x.astype(np.float32) / scale
    axis = 0 if stats == "per_pixel" else None
    mean, std = x.mean(axis=axis), x.std(axis=axis)
    noise = rng.standard_normal((int(mask.sum()),) + x.shape[1:], dtype=np.float32)
    x[mask] = mean + std * noise
    return replace(split, x=x.astype(np.float16), noisy=split.noisy | mask)


def with_noise(split: Split, kind: str, fraction: float, num_classes: int, seed: int,
               input_stats: str = "per_pixel") -> Split:
    """Apply the named noise (`real`, `randX` or `randY`) to a split."""
    if kind == "real":
        return split
    if kind == "randY":
        return random_labels(split, fraction, num_classes, seed)
    if kind == "randX":
        return random_inputs(split, fraction, seed, input_stats)
    raise MemjaxError(f"unknown noise kind {kind!r}; known: real, randX, randY")
