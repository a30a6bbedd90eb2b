"""The paper's networks (the MLP and the CIFAR-10 CNN) and what every model shares: the
convolution forms, `ComputeDtypeBatchNorm`, the per-member regularizers and the precision
helpers (`Network`, the pure init / apply around a module, is memjax.models.network).

A model's `variables` is Flax's dict: {"params": ...} plus {"batch_stats": ...} when it
uses BatchNorm. Inputs are floats in [0, 1] with shape [batch, H, W, C] (a Network
normalizes them per channel itself when it has an input_mean / input_std).

Per-member constants that a sweep varies live in the variables too, so they are stacked and
vmapped beside the parameters and every consumer of `Network.apply` (evaluation, metrics)
honours them without knowing about them:
- {"masks": {"hidden_i": [width_i]}} (MLP built with `masked=True`): 1.0 for the hidden
  units a member uses, 0.0 for the rest (width sweeps in one max-width model);
- {"regularization": {"dropout", "input_dropout", "input_noise", "hidden_noise"}} scalars
  (built with `regularized=True`): strengths, traced arrays, active only in training mode.

How the CNN convolves (`CONV_FORMS`, chosen per run: TrainConfig.conv_form, planned by
memjax.memory.plan_conv_form) changes how vmap batches its members, not its variables: every
form has the same parameter tree, so members, checkpoints and metrics move between forms.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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
        # The strengths are float32 variables; x stays in its (compute) dtype, or a bf16
        # network would compute in float32 from the first regularizer on.
        std = strengths[noise].value.astype(x.dtype)
        x = x + std * jax.random.normal(self.make_rng("dropout"), x.shape, x.dtype)
        keep = 1.0 - strengths[rate].value
        kept = jax.random.uniform(self.make_rng("dropout"), x.shape) < keep
        return jnp.where(kept, x / jnp.maximum(keep, 1e-6).astype(x.dtype), 0.0)


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
                # After the regularizers, so noise never switches an unused unit on. The
                # float32 mask in x's dtype (0 and 1 are exact in bf16): else a bf16 network
                # would compute every later layer in float32.
                mask = self.variable("masks", f"hidden_{i}", jnp.ones, (width,), x.dtype)
                x = x * mask.value.astype(x.dtype)
        return nn.Dense(self.num_classes)(x)


# How one member's convolution is written, and so what vmap makes of a chunk of members:
CONV_FORMS = {
    "conv": "lax.conv per member (XLA: cuDNN on GPUs); vmap over a chunk of members makes one "
            "grouped convolution, the members as channels ([B, H, W, chunk x C], "
            "feature_group_count = chunk); at chunk 1 (lax.map) a plain convolution",
    "im2col": "the k x k shifted windows of the padded input as patches [B, H, W, k x k x C] "
              "times the kernel [k x k x C, O]; vmap over a chunk makes one batched matmul "
              "[chunk, B x H x W, k x k x C] x [chunk, k x k x C, O]",
}


def im2col_conv(lhs: jax.Array, rhs: jax.Array, window_strides, padding, lhs_dilation=None,
                rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                precision=None) -> jax.Array:
    """lax.conv_general_dilated as patches times kernel, for what flax's nn.Conv passes at
    stride 1 without dilation or groups: lhs [B, H, W, C] (NHWC), rhs [kh, kw, C, O] (HWIO),
    padding "SAME", "VALID" or ((top, bottom), (left, right)). Returns [B, H', W', O].

    The patches are slices of the padded input, not conv_general_dilated_patches (itself a
    convolution with a one-hot kernel): data movement XLA fuses, whose gradient is pads and
    adds; the matmul's output keeps the inputs' dtype, as the convolution's does."""
    ones = (1,) * (lhs.ndim - 2)
    if (tuple(window_strides) != ones or tuple(lhs_dilation or ones) != ones
            or tuple(rhs_dilation or ones) != ones or feature_group_count != 1):
        raise MemjaxError("the im2col form covers stride-1 convolutions without dilation or "
                          "feature groups")
    if dimension_numbers is not None and tuple(dimension_numbers) != (
            (0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)):
        raise MemjaxError("the im2col form covers NHWC inputs and HWIO kernels")
    kh, kw, cin, cout = rhs.shape
    if isinstance(padding, str):
        pads = (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)) \
            if padding.upper() == "SAME" else ((0, 0), (0, 0))
    else:
        pads = tuple(tuple(p) for p in padding)
    # Windows cut from a float32 copy, the patches cast back: the input's gradient, a sum of
    # k x k shifted patch gradients, then adds in float32 (as a convolution's accumulates),
    # not in bf16; XLA fuses the casts into the copies, so no float32 array is stored.
    x = jnp.pad(lhs.astype(jnp.promote_types(lhs.dtype, jnp.float32)), ((0, 0), *pads, (0, 0)))
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    # window (i, j), channel c at (i * kw + j) * C + c: rhs.reshape's order
    patches = jnp.concatenate([x[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)],
                              axis=-1).astype(lhs.dtype)
    return jax.lax.dot_general(patches, rhs.reshape(kh * kw * cin, cout),
                               (((3,), (0,)), ((), ())), precision=precision)


class ComputeDtypeBatchNorm(nn.Module):
    """nn.BatchNorm (same variables, statistics and running averages) that normalizes in the
    input's dtype: the batch mean and variance are reduced in float32 from the input (as
    flax does; a bf16 E[x^2] - E[x]^2 would cancel), then (x - mean) * scale / sqrt(var +
    eps) + bias runs in x.dtype. With bf16 inputs the network stays bf16 end to end, where
    nn.BatchNorm computes that line in float32 and rounds it back. With float32 inputs it
    is nn.BatchNorm's arithmetic."""

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        shape = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            x32 = x.astype(jnp.float32)
            where = None if mask is None else jnp.asarray(mask, bool)
            mean = x32.mean(axes, where=where)
            var = jnp.maximum(0.0, jnp.square(x32).mean(axes, where=where) - jnp.square(mean))
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        mul = jax.lax.rsqrt(var + self.epsilon) * scale
        return (x - mean.astype(x.dtype)) * mul.astype(x.dtype) + bias.astype(x.dtype)


class PaperCNN(nn.Module):
    """PAPER.md's small AlexNet-style CNN: center crop by 2 pixels a side (32 -> 28), two
    conv 5x5x200 [-> BN] -> ReLU -> maxpool 3x3/2 blocks, dense 384 and 192 [-> BN] -> ReLU,
    dense to the classes. BatchNorm is off by default.

    conv_form: how each convolution is written (CONV_FORMS); norm_in_compute_dtype:
    BatchNorm normalizes in the dtype of its input (ComputeDtypeBatchNorm: bf16 when the
    trainer computes in bf16) instead of float32. Neither changes the variables."""

    num_classes: int = 10
    batchnorm: bool = False
    channels: int = 200
    crop: int = 2
    regularized: bool = False  # input regularizers after the crop, hidden ones after dense ReLUs
    conv_form: str = "conv"
    norm_in_compute_dtype: bool = False

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

        norms = iter(range(4))

        def norm(h):
            if not self.batchnorm:
                return h
            mask = None if example_mask is None or not train else \
                example_mask.reshape((-1,) + (1,) * (h.ndim - 1))
            if self.norm_in_compute_dtype:  # (named as nn.BatchNorm's: the same variables)
                return ComputeDtypeBatchNorm(not train, 0.9, name=f"BatchNorm_{next(norms)}")(
                    h, mask=mask)
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(h, mask=mask)

        if self.conv_form not in CONV_FORMS:
            raise MemjaxError(f"unknown conv_form {self.conv_form!r}; known: "
                              f"{', '.join(CONV_FORMS)}")
        lowered = im2col_conv if self.conv_form == "im2col" else None
        for _ in range(2):
            x = nn.relu(norm(nn.Conv(self.channels, (5, 5), padding="SAME",
                                     conv_general_dilated=lowered)(x)))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        for width in (384, 192):
            x = nn.relu(norm(nn.Dense(width)(x)))
            if regularize is not None:
                x = regularize(x, "hidden", train)
        return nn.Dense(self.num_classes)(x)


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
