"""Frozen configuration dataclasses shared by every study, and string overrides.

Each study (experiments/) composes these into its own frozen config and defines presets
`smoke` (seconds, for tests), `cpu` (minutes on a 2-core CPU) and `paper` (the paper's sizes).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from memjax.errors import MemjaxError


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how much of it.

    name: `embedded` (a 10k/2k real MNIST subset shipped with memjax), `mnist`, `cifar10`
      or `npz:PATH`. data_dir: folder holding `<name>.npz` (else tensorflow-datasets).
    train_size / validation_size: keep only the first n examples of a split (None: all).
    downscale: integer factor to average-pool images by (E2 uses 2: 28x28 -> 14x14).
    """

    name: str = "embedded"
    data_dir: str | None = None
    train_size: int | None = None
    validation_size: int | None = None
    downscale: int = 1
    data_seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """kind: `mlp` (hidden widths) or `cnn` (the paper's CIFAR-10 CNN: `conv_channels` per
    conv layer, 200 in the paper; BatchNorm optional)."""

    kind: str = "mlp"
    hidden: tuple[int, ...] = (4096, 4096)
    batchnorm: bool = False
    conv_channels: int = 200


@dataclass(frozen=True)
class TrainConfig:
    """How an ensemble is trained.

    lr_halving_epochs: halve the learning rate every that many epochs (None: constant).
    shared_order: every member sees the same data order (default: its own permutation).
    member_chunk: members per vmap group, groups run one after another with lax.map
      (None: planned from the device's memory and the model's size, see memjax.plan).
    eval_chunk: examples per evaluation chunk.
    compute_dtype: `float32`, or `bfloat16` for mixed precision (bf16 compute, float32
      master weights and loss).
    """

    members: int = 100
    epochs: int = 1
    batch_size: int = 128
    learning_rate: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_halving_epochs: int | None = None
    shared_order: bool = False
    seed: int = 0
    member_chunk: int | None = None
    eval_chunk: int = 2048
    compute_dtype: str = "float32"


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def override(config: Any, dotted: str, value: str) -> Any:
    """Return `config` with the field at `dotted` (e.g. `train.epochs`) set from a string."""
    head, _, rest = dotted.partition(".")
    names = {f.name: f for f in dataclasses.fields(config)}
    if head not in names:
        raise MemjaxError(f"unknown setting {dotted!r}; known: {', '.join(sorted(names))}")
    current = getattr(config, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise MemjaxError(f"setting {head!r} has no field {rest!r}")
        return dataclasses.replace(config, **{head: override(current, rest, value)})
    hint = typing.get_type_hints(type(config))[head]
    return dataclasses.replace(config, **{head: _parse(value, hint, dotted)})


def _parse(text: str, hint: Any, name: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if args and type(None) in args:
        if text.lower() in ("none", ""):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            return tuple(_parse(t, args[0], name) for t in text.split(",") if t)
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint in (int, float, str):
            return hint(text)
    except ValueError:
        raise MemjaxError(f"{name}: cannot read {text!r} as {getattr(hint, '__name__', hint)}") from None
    raise MemjaxError(f"{name}: cannot be set from the command line")


def check_positive(**values: int | None) -> None:
    """One-line errors for counts that must be positive."""
    for name, value in values.items():
        if value is not None and value <= 0:
            raise MemjaxError(f"{name} must be positive, got {value}")


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise MemjaxError(f"{name} must be in [0, 1], got {value}")
