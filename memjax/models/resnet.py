"""The CIFAR ResNets: ResNet-9 (David Page's fast CIFAR-10 ResNet) and ResNet-18 (the CIFAR
variant of kuangliu/pytorch-cifar), both with a `width` knob and BatchNorm after every
convolution.

Shared with the paper's CNN (memjax.models.base.PaperCNN): BatchNorm's training statistics
count only the rows of `example_mask` (the trainer's zero-weight rows, padding and examples
outside a member's subset, do not shift them), `norm_in_compute_dtype` normalizes in the
input's dtype (ComputeDtypeBatchNorm: bf16 end to end), and `conv_form` says how each
convolution is written (CONV_FORMS). Every BatchNorm is PyTorch's BatchNorm2d as the
sources use it, momentum 0.1 and eps 1e-5: flax momentum 0.9 (flax keeps that share of the
running average, PyTorch mixes in that share of the batch), epsilon 1e-5, scale 1, bias 0.
Convolution and linear weights initialize as PyTorch's defaults do (kaiming_uniform with
a = sqrt(5): uniform with variance 1 / (3 fan_in)), as do linear biases (uniform in +-1 /
sqrt(fan_in)); no convolution has a bias, as in both sources.

Inputs are [batch, H, W, C] in any size; the sources' fixed pools on CIFAR's 32 x 32 (Page's
MaxPool2d(4), kuangliu's avg_pool2d(out, 4), both over a 4 x 4 map) are written as global
pools, the same on 32 x 32 and defined on other sizes (28 x 28 MNIST, 16 x 16 test images).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from memjax.errors import MemjaxError
from memjax.models.base import CONV_FORMS, ComputeDtypeBatchNorm, im2col_conv

# PyTorch's default weight initialization of Conv2d and Linear: kaiming_uniform_(a=sqrt(5)),
# i.e. uniform(-b, b) with b = 1 / sqrt(fan_in)
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# PyTorch BatchNorm2d(momentum=0.1) as flax's momentum (the running average's own share)
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5


def _torch_bias_init(fan_in: int):
    """PyTorch's Linear bias initialization: uniform in +-1 / sqrt(fan_in)."""
    bound = 1 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _counted(example_mask: jax.Array | None, train: bool) -> jax.Array | None:
    """The rows BatchNorm's training statistics count, shaped [batch, 1, 1, 1] (None: all).
    A batch without counted rows is no step (the trainer discards it): all rows keep its
    statistics finite."""
    if example_mask is None or not train:
        return None
    example_mask = example_mask | ~example_mask.any()
    return example_mask.reshape((-1, 1, 1, 1))


class ConvBN(nn.Module):
    """Convolution (k x k, stride, zero padding `padding` on every side as PyTorch pads,
    no bias) -> BatchNorm; the caller applies the ReLU."""

    features: int
    kernel: int = 3
    strides: int = 1
    padding: int = 1
    conv_form: str = "conv"
    norm_in_compute_dtype: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
        lowered = im2col_conv if self.conv_form == "im2col" else None
        p = self.padding
        x = nn.Conv(self.features, (self.kernel, self.kernel), (self.strides, self.strides),
                    padding=((p, p), (p, p)), use_bias=False, kernel_init=TORCH_KERNEL_INIT,
                    conv_general_dilated=lowered, name="conv")(x)
        norm = ComputeDtypeBatchNorm if self.norm_in_compute_dtype else nn.BatchNorm
        return norm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                    name="bn")(x, mask=mask)


def _check_form(conv_form: str, forms: tuple[str, ...], model: str) -> None:
    if conv_form not in CONV_FORMS:
        raise MemjaxError(f"unknown conv_form {conv_form!r}; known: {', '.join(CONV_FORMS)}")
    if conv_form not in forms:
        raise MemjaxError(f"{model} convolves in the {' or '.join(forms)} form only, not "
                          f"{conv_form} (which covers stride-1 convolutions)")


class ResNet9(nn.Module):
    """The fast CIFAR-10 ResNet-9 of David Page's DAWNBench entry ("How to train your
    ResNet", davidcpage/cifar10-fast: dawn.py / dawn_utils.py `net()`), with c = width
    (64 in the source):

        prep    conv_bn(c)
        layer1  conv_bn(2c) -> maxpool 2 -> + residual(conv_bn(2c) -> conv_bn(2c))
        layer2  conv_bn(4c) -> maxpool 2
        layer3  conv_bn(8c) -> maxpool 2 -> + residual(conv_bn(8c) -> conv_bn(8c))
        pool    max over the whole map (Page: MaxPool2d(4) on the 4 x 4 map of 32 x 32)
        linear  8c -> classes, no bias, then x 0.125 (Page's Mul(weight=0.125))

    conv_bn is conv 3x3 stride 1 padding 1 (no bias) -> BatchNorm -> ReLU, the pool after
    the ReLU, and the residual x + f(x) after the pool, as Page orders them. Every
    convolution is 3x3 at stride 1, so both convolution forms (CONV_FORMS) cover it.

    Differs from Page: his training details are the trainer's (TrainConfig), not the
    model's (he trains in fp16 with BatchNorm in fp32, as memjax's bf16 with
    norm_in_compute_dtype off does); the weight initialization follows PyTorch's defaults,
    which his code keeps, but from JAX's random numbers.

    Not ffcv's ResNet-9 (libffcv/ffcv examples/cifar/train_cifar.py, also MadryLab/
    datamodels' examples/cifar10/train_cifar.py, from KakaoBrain's torchskeleton):
    conv_bn(3, 64) -> conv_bn(64, 128, k=5, s=2, p=2) -> Residual(conv_bn(128, 128) x 2)
    -> conv_bn(128, 256) -> MaxPool2d(2) -> Residual(conv_bn(256, 256) x 2) ->
    conv_bn(256, 128, p=0) -> AdaptiveMaxPool2d(1) -> Linear(128, 10, no bias) -> x 0.2.
    That one downsamples with a strided 5x5 convolution, has no 512-channel stage and
    scales the logits by 0.2.
    """

    num_classes: int = 10
    width: int = 64
    conv_form: str = "conv"
    norm_in_compute_dtype: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 example_mask: jax.Array | None = None) -> jax.Array:
        """example_mask: [batch] bool, the rows BatchNorm's training statistics count."""
        _check_form(self.conv_form, tuple(CONV_FORMS), "resnet9")
        mask = _counted(example_mask, train)
        c = self.width

        def conv_bn(h, features, name):
            return nn.relu(ConvBN(features, conv_form=self.conv_form,
                                  norm_in_compute_dtype=self.norm_in_compute_dtype,
                                  name=name)(h, train, mask))

        def pool(h):
            return nn.max_pool(h, (2, 2), strides=(2, 2))

        x = conv_bn(x, c, "prep")
        x = pool(conv_bn(x, 2 * c, "layer1"))
        x = x + conv_bn(conv_bn(x, 2 * c, "layer1_res1"), 2 * c, "layer1_res2")
        x = pool(conv_bn(x, 4 * c, "layer2"))
        x = pool(conv_bn(x, 8 * c, "layer3"))
        x = x + conv_bn(conv_bn(x, 8 * c, "layer3_res1"), 8 * c, "layer3_res2")
        x = jnp.max(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, use_bias=False, kernel_init=TORCH_KERNEL_INIT,
                     name="linear")(x)
        return x * jnp.asarray(0.125, x.dtype)


class BasicBlock(nn.Module):
    """ResNet's basic block: conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the
    shortcut (the input; a 1x1 convolution at the stride -> BN where the stride or the
    channels change), then ReLU."""

    features: int
    strides: int = 1
    norm_in_compute_dtype: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
        kw = dict(norm_in_compute_dtype=self.norm_in_compute_dtype)
        out = nn.relu(ConvBN(self.features, strides=self.strides, name="conv1", **kw)(
            x, train, mask))
        out = ConvBN(self.features, name="conv2", **kw)(out, train, mask)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = ConvBN(self.features, kernel=1, strides=self.strides, padding=0,
                       name="shortcut", **kw)(x, train, mask)
        return nn.relu(out + x)


class ResNet18(nn.Module):
    """ResNet-18 for CIFAR as kuangliu/pytorch-cifar writes it (models/resnet.py,
    ResNet(BasicBlock, [2, 2, 2, 2])), with c = width (64 in the source): a 3x3 stem
    convolution with c channels at stride 1 (no 7x7 stem, no max pool) -> BN -> ReLU; four
    stages of 2 BasicBlocks with c, 2c, 4c, 8c channels, the first block of each at stride
    1, 2, 2, 2; global average pool (kuangliu: avg_pool2d(out, 4) on the 4 x 4 map of
    32 x 32); linear 8c -> classes with a bias.

    The strided 3x3 convolutions pad 1 on every side as PyTorch does (flax's "SAME" would
    pad 0 before and 1 after), so the sampled positions are the source's. Strided
    convolutions are outside the im2col form: ResNet-18 convolves in the `conv` form only.
    """

    num_classes: int = 10
    width: int = 64
    conv_form: str = "conv"
    norm_in_compute_dtype: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 example_mask: jax.Array | None = None) -> jax.Array:
        """example_mask: [batch] bool, the rows BatchNorm's training statistics count."""
        _check_form(self.conv_form, ("conv",), "resnet18")
        mask = _counted(example_mask, train)
        c, kw = self.width, dict(norm_in_compute_dtype=self.norm_in_compute_dtype)
        x = nn.relu(ConvBN(c, name="stem", **kw)(x, train, mask))
        for stage, (features, strides) in enumerate(zip((c, 2 * c, 4 * c, 8 * c), (1, 2, 2, 2))):
            for block in range(2):
                x = BasicBlock(features, strides if block == 0 else 1,
                               name=f"layer{stage + 1}_{block}", **kw)(x, train, mask)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=TORCH_KERNEL_INIT,
                        bias_init=_torch_bias_init(8 * c), name="linear")(x)
