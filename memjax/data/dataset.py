"""The Dataset: train and validation splits of uint8 images, labels and noisy-example masks."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Split:
    """One split, on the host.

    x: [N, H, W, C] uint8 pixels (0..255), or float16 already in [0, 1] units once some
       inputs are replaced by Gaussian noise (noise is not representable in uint8).
    y: [N] int32 labels. noisy: [N] bool, True where the input or label was replaced.
    """

    x: np.ndarray
    y: np.ndarray
    noisy: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, n: int | None) -> "Split":
        if n is None:
            return self
        return Split(self.x[:n], self.y[:n], self.noisy[:n])

    def subset(self, indices: np.ndarray) -> "Split":
        return Split(self.x[indices], self.y[indices], self.noisy[indices])


@dataclass(frozen=True)
class Dataset:
    """name, num_classes, image_shape (H, W, C), and the train / validation splits."""

    name: str
    train: Split
    validation: Split
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def with_train(self, train: Split) -> "Dataset":
        return replace(self, train=train)


def make_split(x: np.ndarray, y: np.ndarray) -> Split:
    if x.ndim == 3:
        x = x[..., None]
    return Split(np.ascontiguousarray(x), y.astype(np.int32), np.zeros(len(y), bool))


def downscale(split: Split, factor: int) -> Split:
    """Average-pool images by an integer factor (e.g. 28x28 -> 14x14 for factor 2)."""
    if factor == 1:
        return split
    n, h, w, c = split.x.shape
    x = split.x.astype(np.float32).reshape(n, h // factor, factor, w // factor, factor, c)
    pooled = x.mean(axis=(2, 4))
    if split.x.dtype == np.uint8:
        pooled = np.rint(pooled).astype(np.uint8)
    else:
        pooled = pooled.astype(split.x.dtype)
    return replace(split, x=pooled)
