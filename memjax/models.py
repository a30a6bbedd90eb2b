"""Flax modules (the MLP and the paper's CIFAR-10 CNN) and their pure apply functions.

A model's `variables` is Flax's dict: {"params": ...} plus {"batch_stats": ...} when the CNN
uses BatchNorm. Inputs are floats in [0, 1] with shape [batch, H, W, C].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from memjax.config import ModelConfig, check_positive
from memjax.errors import MemjaxError

Variables = Any


class MLP(nn.Module):
    """Flatten, then Dense+ReLU per hidden width, then a linear read-out."""

    hidden: Sequence[int] = (4096, 4096)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class PaperCNN(nn.Module):
    """PAPER.md's small AlexNet-style CNN: center crop by 2 pixels a side (32 -> 28), two
    conv 5x5x200 [-> BN] -> ReLU -> maxpool 3x3/2 blocks, dense 384 and 192 [-> BN] -> ReLU,
    dense to the classes. BatchNorm is off by default."""

    num_classes: int = 10
    batchnorm: bool = False
    channels: int = 200
    crop: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = self.crop
        if c:
            x = x[:, c:-c, c:-c, :]

        def norm(h):
            if not self.batchnorm:
                return h
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)

        for _ in range(2):
            x = nn.relu(norm(nn.Conv(self.channels, (5, 5), padding="SAME")(x)))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        for width in (384, 192):
            x = nn.relu(norm(nn.Dense(width)(x)))
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

    def apply_train(self, variables: Variables, x: jax.Array,
                    rng: jax.Array) -> tuple[jax.Array, Variables]:
        """Training-mode logits and the updated non-parameter collections (BN statistics);
        rng drives stochastic layers (dropout)."""
        mutable = [k for k in variables if k != "params"]
        rngs = {"dropout": rng}
        if not mutable:
            return self.module.apply(variables, x, train=True, rngs=rngs), {}
        logits, updates = self.module.apply(variables, x, train=True, rngs=rngs, mutable=mutable)
        return logits, dict(updates)


def build_network(config: ModelConfig, num_classes: int) -> Network:
    if config.kind == "mlp":
        check_positive(**{f"hidden width {i + 1}": w for i, w in enumerate(config.hidden)})
        return Network(MLP(tuple(config.hidden), num_classes))
    if config.kind == "cnn":
        check_positive(conv_channels=config.conv_channels)
        return Network(PaperCNN(num_classes, config.batchnorm, config.conv_channels))
    raise MemjaxError(f"unknown model {config.kind!r}; known: mlp, cnn")


ApplyFn = Callable[[Variables, jax.Array], jax.Array]


def as_float(x: jax.Array) -> jax.Array:
    """Pixels to float32 in [0, 1]: uint8 is divided by 255, float data is already scaled."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)
