"""Configs written as the fast CIFAR-10 trainers write them (docs/recipes.md).

    from memjax.recipes import resnet9_cifar10
    model, train = resnet9_cifar10(members=8, epochs=20, compute_dtype="bfloat16")

`resnet9_cifar10` is libffcv/ffcv's examples/cifar (train_cifar.py with its rn9 defaults:
batch 512, 24 epochs, SGD momentum 0.9 with weight decay 5e-4, peak learning rate 0.5 at
epoch 5 of a linear one-cycle, label smoothing 0.1, flips, translations by 2 pixels and a
4-pixel cutout filled with the mean, flip test-time augmentation) on memjax's ResNet-9
(memjax.models.resnet: Page's). Where memjax's recipe settings differ from ffcv's, the
settings say so (memjax.config.TrainConfig, memjax.augment).
"""
from __future__ import annotations

from dataclasses import replace

from memjax.config import ModelConfig, TrainConfig

# ffcv's CIFAR_MEAN and CIFAR_STD (examples/cifar/train_cifar.py), in [0, 1] pixels
CIFAR10_MEAN = (125.307 / 255, 122.961 / 255, 113.8575 / 255)
CIFAR10_STD = (51.5865 / 255, 50.847 / 255, 51.255 / 255)

RESNET9_CIFAR10_TRAIN = TrainConfig(
    members=1, epochs=24, batch_size=512, learning_rate=0.5, momentum=0.9,
    weight_decay=5e-4, lr_schedule="onecycle", warmup_epochs=5, label_smoothing=0.1,
    augment_flip=True, augment_crop=2, augment_crop_mode="constant", augment_cutout=4,
    eval_flip=True)


def resnet9_cifar10(width: int | None = None, **train) -> tuple[ModelConfig, TrainConfig]:
    """ResNet-9 of base width `width` (None: 64) with inputs normalized as ffcv does, and
    the recipe's TrainConfig with `train` replaced (members, epochs, compute_dtype, ...).
    A onecycle warm-up of 5 of 24 epochs is kept as that share of other epoch counts."""
    config = replace(RESNET9_CIFAR10_TRAIN, **train)
    if "epochs" in train and "warmup_epochs" not in train:
        config = replace(config, warmup_epochs=5 / 24 * config.epochs)
    return (ModelConfig(kind="resnet9", width=width, input_mean=CIFAR10_MEAN,
                        input_std=CIFAR10_STD), config)
