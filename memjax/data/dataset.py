"""The Dataset: train and validation splits of uint8 images, labels, noisy-example masks
and each example's index in its source's order."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Split:
    """One split, on the host.

    x: [N, H, W, C] uint8 pixels (0..255), or float16 already in [0, 1] units once some
       inputs are replaced by Gaussian noise (noise is not representable in uint8).
    y: [N] int32 labels. noisy: [N] bool, True where the input or label was replaced.
    index: [N] int64, each example's index in its source's order (`Dataset.order` says
       which order; default 0..N-1), kept through take, subset and noise.
    """

    x: np.ndarray
    y: np.ndarray
    noisy: np.ndarray
    index: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.index is None:
            object.__setattr__(self, "index", np.arange(len(self.y), dtype=np.int64))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, n: int | None) -> "Split":
        if n is None:
            return self
        return self.subset(slice(0, n))

    def subset(self, indices: np.ndarray | slice) -> "Split":
        return Split(self.x[indices], self.y[indices], self.noisy[indices], self.index[indices])

    def image_sha1(self) -> np.ndarray:
        """[N] str: the SHA-1 of each image's bytes as stored (uint8 [H, W, C] for every
        source): a key that joins these examples to the same images in any other order."""
        return np.array([hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()
                         for x in self.x])


@dataclass(frozen=True)
class Dataset:
    """name, num_classes, image_shape (H, W, C), the train / validation splits, and
    `order`: {"train": ..., "validation": ...}, what each split's `index` counts."""

    name: str
    train: Split
    validation: Split
    num_classes: int
    order: dict = field(default_factory=lambda: {"train": "position in the split",
                                                 "validation": "position in the split"})

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def with_train(self, train: Split) -> "Dataset":
        return replace(self, train=train)


def make_split(x: np.ndarray, y: np.ndarray, start: int = 0) -> Split:
    """A clean split whose examples sit at start, start + 1, ... in their source's order."""
    if x.ndim == 3:
        x = x[..., None]
    return Split(np.ascontiguousarray(x), y.astype(np.int32), np.zeros(len(y), bool),
                 np.arange(start, start + len(y), dtype=np.int64))


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
