"""The rows of a sweep: its cells (`grid`), the width buckets that keep cheap members off
the widest one's program (`width_buckets`), its seeds, and the per-epoch curves it reads."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from memjax.config import DataConfig, ModelConfig
from memjax.errors import MemjaxError


def check_sweep_members(config: Any) -> None:
    """A sweep's ensemble is its cells x `seeds` members, so train.members must stay 1."""
    trains = [getattr(config, n) for n in ("train", "cnn_train") if hasattr(config, n)]
    if any(t.members != 1 for t in trains):
        raise MemjaxError("a sweep trains one member per cell and seed: set seeds "
                          "(--seeds N), not train.members")


def check_width_sweep(model: ModelConfig, study: str) -> None:
    """A width sweep masks the hidden units of an MLP (memjax.members: per-member widths)."""
    if model.kind != "mlp":
        raise MemjaxError(f"{study} sweeps the hidden width of an MLP: model.kind must be "
                          f"mlp, not {model.kind!r}")


def width_model(model: ModelConfig, width: int) -> ModelConfig:
    """`model`, an MLP, at `width` units in each hidden layer: a bucket's model, its other
    settings (input normalization) kept."""
    return replace(model, hidden=(width,) * len(model.hidden))


def width_buckets(widths: np.ndarray, limits: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
    """Group members by width so that cheap members don't pay for the widest one: bucket
    b holds the widths in (limits[b-1], limits[b]] and runs as a masked MLP of its largest
    member width. Returns [(model width, member indices)], non-empty buckets only."""
    widths = np.asarray(widths)
    edges = sorted(limits)
    if widths.max() > edges[-1]:
        edges.append(int(widths.max()))
    out, lower = [], 0
    for upper in edges:
        rows = np.flatnonzero((widths > lower) & (widths <= upper))
        if rows.size:
            out.append((int(widths[rows].max()), rows))
        lower = upper
    return out


def grid(**axes: Any) -> dict[str, np.ndarray]:
    """Cartesian product of named axes, one row per member: grid(a=[1, 2], b=[x, y]) ->
    {"a": [1, 1, 2, 2], "b": [x, y, x, y]}."""
    names = list(axes)
    mesh = np.meshgrid(*[np.arange(len(axes[n])) for n in names], indexing="ij")
    return {n: np.asarray(axes[n], dtype=object)[m.ravel()] for n, m in zip(names, mesh)}


def measured(curve) -> tuple[np.ndarray, np.ndarray]:
    """(1-based epochs, values) of a per-epoch curve where it was measured (not NaN)."""
    curve = np.asarray(curve, float)
    at = np.flatnonzero(np.isfinite(curve))
    return at + 1, curve[at]


def epoch_means(history: dict, names=("train_accuracy", "validation_accuracy")) -> dict:
    """{name: [epochs] mean over the members} of a phase's per-epoch history [epochs, M]."""
    return {n: np.nanmean(np.asarray(history[n], float), axis=1).tolist() for n in names}


def first_epoch_at_least(curve: np.ndarray, threshold: float) -> int | None:
    """1-based epoch at which a per-epoch curve first reaches threshold (None: never)."""
    hits = np.flatnonzero(np.asarray(curve) >= threshold)
    return int(hits[0]) + 1 if hits.size else None


# The score studies' CIFAR-10 presets: the 50,000 official training images (the 10,000 test
# images as validation), and for a CPU the first 1,000 and 500 of them at 16 x 16 with a narrow
# ResNet-9
CIFAR10 = DataConfig(name="cifar10", test_as_validation=True)
CIFAR10_CPU = DataConfig(name="cifar10", train_size=1000, validation_size=500, downscale=2,
                         test_as_validation=True)
CPU_WIDTH, CPU_EPOCHS = 8, 8
