"""Flax modules (the MLP and the paper's CIFAR-10 CNN) and their pure apply functions.

A model's `variables` is Flax's dict: {"params": ...} plus {"batch_stats": ...} when the CNN
uses BatchNorm. Inputs are floats in [0, 1] with shape [batch, H, W, C].

Per-member constants that a sweep varies live in the variables too, so they are stacked and
vmapped beside the parameters and every consumer of `Network.apply` (evaluation, metrics)
honours them without knowing about them:
- {"masks": {"hidden_i": [width_i]}} (MLP built with `masked=True`): 1.0 for the hidden
  units a member uses, 0.0 for the rest (width sweeps in one max-width model);
- {"regularization": {"dropout", "input_dropout", "input_noise", "hidden_noise"}} scalars
  (built with `regularized=True`): strengths, traced arrays, active only in training mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from memjax.config import ModelConfig
from memjax.errors import MemjaxError

Variables = Any


REGULARIZERS = ("dropout", "input_dropout", "input_noise", "hidden_noise")


class Regularization(nn.Module):
    """Training-time stochastic regularizers whose strengths are variables (collection
    "regularization"), so each member of an ensemble can have its own.

    dropout / input_dropout: drop probability in [0, 1) (inverted dropout: kept units are
    scaled by 1 / (1 - rate), so rate 0 is exactly the identity). input_noise /
    hidden_noise: std of additive Gaussian noise, in input units ([0, 1] pixels) and
    activation units. All randomness comes from the "dropout" rng stream.
    """

    @nn.compact
    def __call__(self, x: jax.Array, kind: str, train: bool) -> jax.Array:
        strengths = {name: self.variable("regularization", name, jnp.zeros, (), jnp.float32)
                     for name in REGULARIZERS}
        if not train:
            return x
        noise, rate = (("input_noise", "input_dropout") if kind == "input"
                       else ("hidden_noise", "dropout"))
        std = strengths[noise].value
        x = x + std * jax.random.normal(self.make_rng("dropout"), x.shape, x.dtype)
        keep = 1.0 - strengths[rate].value
        kept = jax.random.uniform(self.make_rng("dropout"), x.shape) < keep
        return jnp.where(kept, x / jnp.maximum(keep, 1e-6), 0.0)


class MLP(nn.Module):
    """Flatten, then Dense+ReLU per hidden width, then a linear read-out.

    masked: hidden unit j of layer i is multiplied by masks/hidden_i[j] (width sweeps).
    regularized: input dropout / noise on the input, dropout / noise after each hidden ReLU.
    """

    hidden: Sequence[int] = (4096, 4096)
    num_classes: int = 10
    masked: bool = False
    regularized: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        regularize = Regularization(name="strengths") if self.regularized else None
        if regularize is not None:
            x = regularize(x, "input", train)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width)(x))
            if regularize is not None:
                x = regularize(x, "hidden", train)
            if self.masked:
                # After the regularizers, so noise never switches an unused unit on.
                x = x * self.variable("masks", f"hidden_{i}", jnp.ones, (width,), x.dtype).value
        return nn.Dense(self.num_classes)(x)


class PaperCNN(nn.Module):
    """PAPER.md's small AlexNet-style CNN: center crop by 2 pixels a side (32 -> 28), two
    conv 5x5x200 [-> BN] -> ReLU -> maxpool 3x3/2 blocks, dense 384 and 192 [-> BN] -> ReLU,
    dense to the classes. BatchNorm is off by default."""

    num_classes: int = 10
    batchnorm: bool = False
    channels: int = 200
    crop: int = 2
    regularized: bool = False  # input regularizers after the crop, hidden ones after dense ReLUs

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 example_mask: jax.Array | None = None) -> jax.Array:
        """example_mask: [batch] bool, the rows BatchNorm's training statistics count (the
        trainer's zero-weight rows, padding and examples outside a member's subset, must
        not shift them); None: all rows."""
        c = self.crop
        if c:
            x = x[:, c:-c, c:-c, :]
        regularize = Regularization(name="strengths") if self.regularized else None
        if regularize is not None:
            x = regularize(x, "input", train)

        if example_mask is not None:
            # a batch without counted rows is no step (the trainer discards it); keep its
            # statistics finite
            example_mask = example_mask | ~example_mask.any()

        def norm(h):
            if not self.batchnorm:
                return h
            mask = None if example_mask is None or not train else \
                example_mask.reshape((-1,) + (1,) * (h.ndim - 1))
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(h, mask=mask)

        for _ in range(2):
            x = nn.relu(norm(nn.Conv(self.channels, (5, 5), padding="SAME")(x)))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        for width in (384, 192):
            x = nn.relu(norm(nn.Dense(width)(x)))
            if regularize is not None:
                x = regularize(x, "hidden", train)
        return nn.Dense(self.num_classes)(x)


@dataclass(frozen=True)
class Network:
    """A module with pure `init` and `apply` functions over Flax variables."""

    module: nn.Module

    def init(self, key: jax.Array, example_x: jax.Array) -> Variables:
        """Variables for one member from its key; example_x: [batch, H, W, C]."""
        return self.module.init(key, example_x, train=False)

    def apply(self, variables: Variables, x: jax.Array) -> jax.Array:
        """Evaluation-mode logits [batch, classes] for x: [batch, H, W, C] in [0, 1]."""
        return self.module.apply(variables, x, train=False)

    def apply_train(self, variables: Variables, x: jax.Array, rng: jax.Array,
                    example_mask: jax.Array | None = None) -> tuple[jax.Array, Variables]:
        """Training-mode logits and the updated non-parameter collections (BN statistics);
        rng drives stochastic layers (dropout). example_mask: [batch] bool, the rows that
        count in BatchNorm's statistics (None: all)."""
        mutable = [k for k in variables if k != "params"]
        rngs = {"dropout": rng}
        if not mutable:
            return self.module.apply(variables, x, train=True, rngs=rngs), {}
        counted = example_mask is not None and "batch_stats" in variables
        extra = {"example_mask": example_mask} if counted else {}
        logits, updates = self.module.apply(variables, x, train=True, rngs=rngs, mutable=mutable,
                                            **extra)
        return logits, dict(updates)


def build_network(config: ModelConfig, num_classes: int, *, masked: bool = False,
                  regularized: bool = False) -> Network:
    """masked: hidden-unit masks (MLP only); regularized: per-member regularizer strengths."""
    if config.kind == "mlp":
        config.check()
        return Network(MLP(tuple(config.hidden), num_classes, masked, regularized))
    if config.kind == "cnn":
        if masked:
            raise MemjaxError("width masks are implemented for the MLP only")
        config.check()
        return Network(PaperCNN(num_classes, config.batchnorm, config.conv_channels,
                                regularized=regularized))
    raise MemjaxError(f"unknown model {config.kind!r}; known: mlp, cnn")


ApplyFn = Callable[[Variables, jax.Array], jax.Array]


def as_float(x: jax.Array) -> jax.Array:
    """Pixels to float32 in [0, 1]: uint8 is divided by 255, float data is already scaled."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)


COMPUTE_DTYPES = ("float32", "bfloat16")


def in_compute_dtype(dtype: str | None, tree):
    """`tree` with its floating arrays cast to `dtype` (None or "float32": unchanged): the
    one place memjax casts to bf16, for the trainer's mixed precision (its parameters and
    minibatch) and for the metrics (`computing_in`)."""
    if dtype is None or dtype == "float32":
        return tree
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def computing_in(apply_fn: ApplyFn, dtype: str | None) -> ApplyFn:
    """apply_fn with its matmuls in `dtype`: floating variables and the input cast to it,
    logits returned as float32 (mixed precision for the metrics; gradients flow through the
    casts back to float32). None or "float32": apply_fn itself."""
    if dtype is None or dtype == "float32":
        return apply_fn
    in_compute_dtype(dtype, ())  # checks the name

    def apply(variables, x):
        return apply_fn(*in_compute_dtype(dtype, (variables, x))).astype(jnp.float32)

    return apply
