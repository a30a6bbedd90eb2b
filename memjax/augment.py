"""Data augmentation on the device, per member, inside the compiled epoch.

The trainer (memjax.train.train_step) augments each member's minibatch after gathering it
from the one shared copy of the data (memjax.views.member_batch) and before the loss: no
host round-trip, no per-member copy of the data set. The draws of member m at step t of
epoch e come from fold_in(epoch_stream(seed, m, AUGMENT, e), t) (memjax.keys), so they
depend on (seed, member, epoch, step) alone: a member trained alone or in an ensemble, in
any chunk, and a resumed run draw the same. With every setting off the trainer does not
call `augment` at all: the compiled epoch is the one without augmentation.

Each example of a batch gets its own draws, in this order (the recipes of the fast CIFAR-10
trainers, davidcpage/cifar10-fast's dawn.py and libffcv/ffcv's examples/cifar):

- crop (`crop` = padding p > 0): pad the image by p on every side, then cut an H x W window
  at a uniform offset in 0..2p per axis. `crop_mode` "reflect" pads by reflection without
  repeating the edge (numpy's mode="reflect", as Page pads with np.pad(..., mode='reflect'),
  his Crop(32, 32) on the 4-padded set); "constant" pads with the fill below, which is
  ffcv's RandomTranslate(padding=2, fill=CIFAR_MEAN) (ffcv's own default fill is zeros).
- flip (`flip`): left-right flip with probability 1/2 (ffcv's RandomHorizontalFlip, Page's
  FlipLR). ffcv flips before it translates, Page after he crops: with offsets uniform over a
  range symmetric under the flip the two orders give the same distribution.
- cutout (`cutout` = side s > 0): an s x s square set to the fill, its top-left corner
  uniform over 0..H-s x 0..W-s, so the square lies inside the image whole. That is what
  both references do (ffcv's Cutout: randint(H - s + 1); Page's Cutout options:
  range(W + 1 - w)), not the clipped square around a uniform centre of DeVries & Taylor's
  Cutout paper. ffcv cuts 4 x 4 (on 32 x 32), Page 8 x 8.

The fill is the network's input mean where it has one (`input_fill`: the per-channel
`input_mean` of memjax.models.Network, in the input's units, [0, 1] pixels): what both
references fill with, since ffcv fills with CIFAR_MEAN before it normalizes and Page fills
with 0 after he has. Without an input mean the fill is 0, the input that the network (which
does not normalize) sees as zero: black pixels, MNIST's background.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from memjax.errors import MemjaxError

CROP_MODES = ("reflect", "constant")


@dataclass(frozen=True)
class Augmentation:
    """What a training step does to its minibatch (memjax.train.Trainer.augmentation).

    crop: padding p of the random crop (0: no crop); crop_mode: `reflect` or `constant`
    (padded with the fill); flip: random left-right flips; cutout: side of the cut-out
    square (0: none). TrainConfig's augment_crop, augment_crop_mode, augment_flip and
    augment_cutout (`Augmentation.of`).
    """

    crop: int = 0
    crop_mode: str = "reflect"
    flip: bool = False
    cutout: int = 0

    @property
    def active(self) -> bool:
        return bool(self.crop or self.flip or self.cutout)

    @classmethod
    def of(cls, train) -> "Augmentation | None":
        """The augmentation a TrainConfig asks for; None when it asks for none."""
        out = cls(train.augment_crop, train.augment_crop_mode, train.augment_flip,
                  train.augment_cutout)
        return out if out.active else None

    def check(self, height: int, width: int) -> None:
        """One-line errors for settings that do not fit an H x W image."""
        if self.crop < 0 or self.cutout < 0:
            raise MemjaxError(f"augmentation crop padding and cutout size must be >= 0, got "
                              f"{self.crop} and {self.cutout}")
        if self.crop_mode not in CROP_MODES:
            raise MemjaxError(f"augmentation crop mode must be reflect or constant, got "
                              f"{self.crop_mode!r}")
        if self.crop and self.crop_mode == "reflect" and self.crop >= min(height, width):
            raise MemjaxError(f"reflect padding {self.crop} needs images larger than it, got "
                              f"{height} x {width}")
        if self.cutout > min(height, width):
            raise MemjaxError(f"cutout {self.cutout} is larger than the {height} x {width} "
                              f"images")


def input_fill(network) -> tuple[float, ...]:
    """The fill of cutout and constant padding: the network's per-channel input mean
    (`input_mean`, empty when it has none: then 0)."""
    mean = getattr(network, "input_mean", None)
    return () if mean is None else tuple(float(v) for v in np.ravel(mean))


def draws(key: jax.Array, batch: int, height: int, width: int,
          augmentation: Augmentation) -> dict[str, jax.Array]:
    """The random choices `augment` makes for a batch: {"offset": [B, 2] int32 crop offsets
    (row, column) in 0..2p, "flip": [B] bool, "corner": [B, 2] int32 top-left corners of the
    cutout square in 0..H-s, 0..W-s}, each present only when its augmentation is on. The
    three come from split(key, 3), so turning one on never changes the others' draws."""
    crop_key, flip_key, cutout_key = jax.random.split(key, 3)
    out = {}
    if augmentation.crop:
        out["offset"] = jax.random.randint(crop_key, (batch, 2), 0, 2 * augmentation.crop + 1)
    if augmentation.flip:
        out["flip"] = jax.random.bernoulli(flip_key, 0.5, (batch,))
    if augmentation.cutout:
        s = augmentation.cutout
        out["corner"] = jax.random.randint(cutout_key, (batch, 2), 0,
                                           jnp.array([height - s + 1, width - s + 1]))
    return out


def augment(x: jax.Array, key: jax.Array, augmentation: Augmentation,
            fill: Any = ()) -> jax.Array:
    """x [B, H, W, C] float augmented as `augmentation` says, each example with its own
    draws (`draws(key, ...)`): crop, then flip, then cutout. fill: the per-channel value
    of cutout and constant padding ([C], one value, or empty: 0), in x's units. Pure,
    jittable and vmappable (one key per member)."""
    b, h, w, c = x.shape
    augmentation.check(h, w)
    fill = jnp.asarray(fill if fill is not None and np.size(fill) else (0.0,), x.dtype)
    if fill.ndim != 1 or fill.shape[0] not in (1, c):
        raise MemjaxError(f"the fill has {fill.shape[0]} channels, the images {c}")
    fill = jnp.broadcast_to(fill, (c,))
    drawn = draws(key, b, h, w, augmentation)
    if augmentation.crop:
        p = augmentation.crop
        pad = ((0, 0), (p, p), (p, p), (0, 0))
        if augmentation.crop_mode == "reflect":
            padded = jnp.pad(x, pad, mode="reflect")
        else:
            # (jnp.pad fills with one value, the fill is per channel)
            padded = jnp.where(_inside(h, w, p), jnp.pad(x, pad), fill)
        x = jax.vmap(lambda image, at: jax.lax.dynamic_slice(image, (at[0], at[1], 0),
                                                             (h, w, c)))(padded, drawn["offset"])
    if augmentation.flip:
        x = jnp.where(drawn["flip"][:, None, None, None], x[:, :, ::-1, :], x)
    if augmentation.cutout:
        s = augmentation.cutout
        corner = drawn["corner"]
        rows = jnp.arange(h)[None, :] - corner[:, :1]   # [B, H]
        cols = jnp.arange(w)[None, :] - corner[:, 1:]   # [B, W]
        square = (((rows >= 0) & (rows < s))[:, :, None]
                  & ((cols >= 0) & (cols < s))[:, None, :])
        x = jnp.where(square[..., None], fill, x)
    return x


def _inside(h: int, w: int, p: int) -> jax.Array:
    """[1, H + 2p, W + 2p, 1] bool: the pixels of the padded image that are the image's."""
    rows = jnp.arange(h + 2 * p)
    cols = jnp.arange(w + 2 * p)
    inside = (((rows >= p) & (rows < p + h))[:, None] & ((cols >= p) & (cols < p + w))[None, :])
    return inside[None, :, :, None]
