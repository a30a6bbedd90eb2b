"""The benchmark's cases (`memjax bench --cases`) and their arithmetic.

(a) 100 x MLP 784-512-512-10, (b) 100 x MLP 784-4096-4096-10, (c) 100 x the paper's CNN with
BatchNorm on 28 x 28 x 3 (32 x 32 images cropped), batch 128, plain SGD (momentum 0.9 for the
CNN), on synthetic device-resident uint8 data (`synthetic_data`); e1: the consistency study's
cpu preset (100 x MLP 2 x 256 on the embedded MNIST subset); f_cscore: the C-score protocol's
training (members on their own 50 % subsets; `CSCORE_SIZES`); resnet9: 8 x Page's ResNet-9 by
memjax.recipes.resnet9_cifar10 in bf16, with models/hour (`models_per_hour`). `PRESETS` sizes
each case for a GPU and for a CPU; `training_costs` gives the FLOPs and bytes per
model-example that turn a row's rate into TFLOP/s and a share of the roofline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np

from memjax.config import ModelConfig
from memjax.models import build_network

@dataclass(frozen=True)
class Case:
    model: ModelConfig
    image: tuple[int, int, int]  # H, W, C of the stored images
    members: int
    steps: int  # timed steps per epoch
    serial: int  # members timed by one-at-a-time baselines
    momentum: float = 0.0
    batch: int = 128
    # (CNN) members per vmap group of the chunked convolution forms: 10, what memjax's
    # memory plan allows the paper CNN's im2col form on an H200 (so a planned form runs as
    # it was measured there; it allows 4 on an 80 GB GPU)
    form_chunk: int = 10
    vmap_all: bool = False  # (CNN) time one vmap over all members too
    compute_dtype: str = "float32"  # (resnet9) both sides' compute precision
    conv_form: str | None = None  # (resnet9) memjax's convolution form (None: as planned)


# models/hour of the resnet9 case: at the target, ResNet-9 members at >= 93 %
# CIFAR-10 test accuracy in <= 20 epochs of its 50,000 training images
RESNET9_EPOCHS, CIFAR10_TRAIN_IMAGES = 20, 50_000


def _resnet9_case(width: int, image, members: int, steps: int, serial: int, batch: int,
                  compute_dtype: str, conv_form: str | None = None) -> Case:
    """The resnet9 case: memjax.recipes.resnet9_cifar10's model (input normalized as ffcv
    does) and its momentum."""
    from memjax.recipes import resnet9_cifar10

    model, train = resnet9_cifar10(width)
    return Case(model, image, members, steps, serial, train.momentum, batch=batch,
                compute_dtype=compute_dtype, conv_form=conv_form)


def models_per_hour(model_examples_per_s: float | None) -> float | None:
    """Models trained an hour at the recipe's length: model-examples/s x 3600 / (20 epochs x
    50,000 CIFAR-10 training images)."""
    if not model_examples_per_s:
        return None
    return model_examples_per_s * 3600 / (RESNET9_EPOCHS * CIFAR10_TRAIN_IMAGES)


def _presets() -> dict[str, dict[str, Case]]:
    mlp, cnn = (28, 28, 1), (32, 32, 3)
    return {
        "gpu": {
            # 2 serial members: each of jax-one-at-a-time's is a program of its own to compile
            # (about 5 s on an H100), the rate of a loop does not depend on how many it runs,
            # and the bf16 rows need the time (a, b and c: about 4 minutes of an H200)
            "a_mlp512": Case(ModelConfig(hidden=(512, 512)), mlp, 100, 300, 2),
            "b_mlp4096": Case(ModelConfig(hidden=(4096, 4096)), mlp, 100, 40, 2),
            # (one vmap over all 100 ran out of memory on an H200: 42.5 GiB for one buffer)
            "c_cnn": Case(ModelConfig(kind="cnn", conv_channels=200, batchnorm=True), cnn, 100,
                          6, 2, 0.9),
            # 8 members of width 64 at batch 512 in bf16: a member's saved activations are
            # about 1.1 M values an example (conv, BatchNorm and ReLU outputs of 8 conv_bn
            # layers), 0.6 G values a step, 1-2 GB in bf16 with BatchNorm in float32, so
            # all 8 at once take some 10-16 GB, well inside an H200's 141 GB; 20 steps (10,240
            # examples) an epoch keep the case to about a minute
            "resnet9": _resnet9_case(64, cnn, 8, 20, 2, batch=512, compute_dtype="bfloat16"),
        },
        "cpu": {
            "a_mlp512": Case(ModelConfig(hidden=(128, 128)), mlp, 20, 20, 3),
            "b_mlp4096": Case(ModelConfig(hidden=(512, 512)), mlp, 20, 8, 2),
            # XLA:CPU convolutions are slow (about 1 GFLOP/s here): a narrow, small CNN.
            "c_cnn": Case(ModelConfig(kind="cnn", conv_channels=4, batchnorm=True), cnn, 4, 2,
                          1, 0.9, batch=32, form_chunk=2, vmap_all=True),
            # width 8, 2 members, 2 steps of 32, float32 and im2col: as the cifar-cpu
            # presets train (the plan times them by this row; im2col is some 7x faster than
            # XLA:CPU's convolutions here). PyTorch trains in float32 too: its bf16
            # autocast on a CPU is about 20x slower than its float32
            "resnet9": _resnet9_case(8, cnn, 2, 2, 1, batch=32, compute_dtype="float32",
                                     conv_form="im2col"),
        },
    }


PRESETS = _presets()


def forward_macs(model: ModelConfig, image: tuple[int, int, int], classes: int = 10) -> int:
    """Multiply-accumulates of one example's forward pass (pooling and ReLU left out)."""
    if model.kind == "mlp":
        widths = (math.prod(image),) + tuple(model.hidden) + (classes,)
        return sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    if model.kind == "resnet9":  # 3x3 convolutions at stride 1, padding 1; pools halve
        h, w, c = image
        k = model.width or 64
        macs = 0
        for channels, pool, residual in ((k, False, False), (2 * k, True, True),
                                         (4 * k, True, False), (8 * k, True, True)):
            macs += h * w * 9 * c * channels
            h, w, c = (-(-h // 2), -(-w // 2), channels) if pool else (h, w, channels)
            macs += 2 * h * w * 9 * c * c if residual else 0
        return macs + c * classes
    h, w, c = image[0] - 4, image[1] - 4, image[2]  # crop 2 a side
    k = model.conv_channels
    macs = h * w * 25 * c * k
    h, w = -(-h // 2), -(-w // 2)
    macs += h * w * 25 * k * k
    h, w = -(-h // 2), -(-w // 2)
    return macs + h * w * k * 384 + 384 * 192 + 192 * classes


def first_layer(model: ModelConfig, image: tuple[int, int, int],
                classes: int = 10) -> tuple[int, int]:
    """(multiply-accumulates per example, weights) of the first layer, the one whose input
    needs no gradient."""
    if model.kind == "mlp":
        width = model.hidden[0] if model.hidden else classes
        return math.prod(image) * width, math.prod(image) * width
    if model.kind == "resnet9":
        k = model.width or 64
        return image[0] * image[1] * 9 * image[2] * k, 9 * image[2] * k
    h, w, c = image[0] - 4, image[1] - 4, image[2]
    return h * w * 25 * c * model.conv_channels, 25 * c * model.conv_channels


def parameter_count(model: ModelConfig, image: tuple[int, int, int], classes: int = 10) -> int:
    network = build_network(model, classes)
    shapes = jax.eval_shape(network.init, jax.random.key(0), np.zeros((1,) + image, np.float32))
    return sum(math.prod(l.shape) for l in jax.tree_util.tree_leaves(shapes))


def training_costs(case: Case) -> dict[str, float]:
    """FLOPs per model-example: forward 2 x MACs, backward twice that, less the first
    layer's input gradient, which nobody computes (6 x MACs - 2 x first-layer MACs). Bytes
    moved per model-example: every weight read by the forward and the backward pass (the
    first layer's only by the forward), its gradient written and read back, and the update
    written (momentum: its buffer read and written too), spread over the batch; activations
    are left out (they stay on chip for the MLPs)."""
    params = parameter_count(case.model, case.image)
    first_macs, first_weights = first_layer(case.model, case.image)
    passes = 5 + (2 if case.momentum else 0)
    return {"flops_per_model_example": 6 * forward_macs(case.model, case.image) - 2 * first_macs,
            "bytes_per_model_example": 4 * (passes * params - first_weights) / case.batch}


def synthetic_data(image, examples: int, seed: int = 0, classes: int = 10):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (examples,) + image, dtype=np.uint8),
            rng.integers(0, classes, examples).astype(np.int32))



# The C-score anchor's model and training (pluskid/structural-regularity, mnist.py)
CSCORE_SIZES = {"gpu": dict(members=200, serial=5, hidden=(512, 256)),
                "cpu": dict(members=20, serial=3, hidden=(512, 256))}
