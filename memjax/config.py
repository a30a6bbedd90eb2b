"""Frozen configuration dataclasses shared by every study, and string overrides.

Each study (experiments/) composes these into its own frozen config and defines presets
`smoke` (seconds, for tests), `cpu` (minutes on a 2-core CPU) and `paper` (the paper's sizes).
"""
from __future__ import annotations

import dataclasses
import math
import os
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
    test_as_validation: train on the whole official training split and validate on the
      official test split (mnist, cifar10; npz:PATH always does). Default: the paper's
      split, validation taken from the end of the official training split.
    """

    name: str = "embedded"
    data_dir: str | None = None
    train_size: int | None = None
    validation_size: int | None = None
    downscale: int = 1
    data_seed: int = 0
    test_as_validation: bool = False

    def check(self, prefix: str = "data.") -> None:
        check_numbers(self, prefix, positive=("train_size", "validation_size", "downscale"),
                      seeds=("data_seed",))
        _check_data(self)


@dataclass(frozen=True)
class ModelConfig:
    """Which network (memjax.models.registry).

    kind: a registered model, `mlp`, `cnn` (also `paper-cnn`: the paper's CIFAR-10 CNN),
      `resnet9`, `resnet18` or one registered with memjax.models.register_model; or
      `package.module:factory`, a function factory(num_classes=...) returning a
      flax.linen Module (importable from the current directory or PYTHONPATH).
    hidden: the MLP's hidden widths (nothing else reads it).
    batchnorm: the paper's CNN with BatchNorm (the ResNets always have it).
    conv_channels: the paper's CNN's channels per conv layer (200 in the paper).
    width: the ResNets' base channels (None: 64, the architectures' own; a narrow one for
      CPU runs); it means nothing to mlp (`hidden`), cnn (`conv_channels`) or a
      package.module:factory model.
    input_mean, input_std: per-channel input normalization inside the network, (x -
      mean) / std on the [0, 1] input (memjax.models.Network; () each: none), one value
      per channel (checked against the data when the network is built).
    """

    kind: str = "mlp"
    hidden: tuple[int, ...] = (4096, 4096)
    batchnorm: bool = False
    conv_channels: int = 200
    width: int | None = None
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()

    def check(self, prefix: str = "model.") -> None:
        from memjax.models.registry import check_kind  # (the registry imports flax)

        # (hidden=() is a linear model)
        check_numbers(self, prefix, positive=("hidden", "conv_channels", "width", "input_std"))
        check_kind(self.kind)
        if self.input_mean and self.input_std and len(self.input_mean) != len(self.input_std):
            raise MemjaxError(f"{prefix}input_mean has {len(self.input_mean)} values and "
                              f"{prefix}input_std {len(self.input_std)}; give one per channel")


@dataclass(frozen=True)
class TrainConfig:
    """How an ensemble is trained.

    lr_halving_epochs: halve the learning rate every that many epochs (None: constant).
    shared_order: every member sees the same data order (default: its own permutation).
    member_chunk: members per vmap group, groups run one after another with lax.map
      (None: planned from the device's memory and the model's size, see memjax.memory).
    eval_chunk: examples per evaluation chunk.
    compute_dtype: `float32`, or `bfloat16` for mixed precision (bf16 compute, float32
      master weights and loss).
    conv_form: how a CNN's members convolve (memjax.models.CONV_FORMS): `conv`, lax.conv
      per member (vmapped: one grouped convolution; at member_chunk 1, lax.map: one plain
      convolution per member), or `im2col`, patches times kernel (vmapped: one batched
      matmul); None: planned (memjax.memory.plan_conv_form: the fastest form the bench
      recorded on this kind of accelerator, with its member chunk; else `conv`).
    norm_in_compute_dtype: BatchNorm normalizes in compute_dtype (bf16 end to end) instead
      of float32 (its statistics are reduced in float32 either way); None: planned.
    record_dynamics: keep per-example training records in the state (memjax.dynamics) and
      save their scores with each training phase (`--record dynamics`).
    aum_include_first_epoch: those records' AUM also averages the margins of each phase's
      first epoch (default: from the second on, as asappresearch/aum's runner does).
    adversarial_protocol: how adversarial training's in-step LASS searches
      (memjax.metrics.PROTOCOLS: `exhaustive` or `authors`).

    The recipes of the fast CIFAR-10 trainers (docs/recipes.md; every default leaves
    training as it was without them):
    lr_schedule: the learning rate of each step, a multiplier of each member's own rate
      (its peak) at fractional epoch epoch + step / steps per epoch over `epochs`:
      `constant`; `onecycle`, linear 0 -> 1 at warmup_epochs -> 0 at `epochs` (ffcv's
      and Page's triangle); `cosine`, linear 0 -> 1 over warmup_epochs, then cosine
      decay to 0 at `epochs`. lr_halving_epochs works with `constant` only.
    warmup_epochs: where onecycle peaks and cosine's warm-up ends (fractions allowed).
    nesterov: Nesterov momentum (optax.sgd(nesterov=True); needs momentum > 0).
      Weight decay is L2 added to the gradient before momentum, as ffcv's PyTorch SGD
      and Page's optimizer apply it (memjax.ensemble.make_optimizer).
    label_smoothing: the cross-entropy's targets (1 - a) one-hot + a / classes (0: the
      integer-label loss).
    augment_crop, augment_crop_mode, augment_flip, augment_cutout: on-device augmentation
      of each training minibatch (memjax.augment): random crop after padding by
      augment_crop pixels (`reflect` or `constant` padding), random left-right flips, a
      cut-out square of side augment_cutout; 0 / false: off.
    eval_flip: evaluation averages each member's logits on x and on x flipped left-right
      (flip test-time augmentation, memjax.evaluation.evaluation_program).
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
    conv_form: str | None = None
    norm_in_compute_dtype: bool | None = None
    record_dynamics: bool = False
    aum_include_first_epoch: bool = False
    adversarial_protocol: str = "exhaustive"
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    nesterov: bool = False
    label_smoothing: float = 0.0
    augment_crop: int = 0
    augment_crop_mode: str = "reflect"
    augment_flip: bool = False
    augment_cutout: int = 0
    eval_flip: bool = False

    def check(self, prefix: str = "train.") -> None:
        check_numbers(self, prefix, positive=("members", "epochs", "batch_size", "learning_rate",
                                              "member_chunk", "eval_chunk", "lr_halving_epochs"),
                      nonnegative=("weight_decay",), seeds=("seed",))
        if not 0 <= self.momentum < 1:
            raise MemjaxError(f"{prefix}momentum must be in [0, 1), got {self.momentum}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise MemjaxError(f"{prefix}compute_dtype must be float32 or bfloat16, got "
                              f"{self.compute_dtype!r}")
        if self.conv_form not in (None, "conv", "im2col"):
            raise MemjaxError(f"{prefix}conv_form must be conv or im2col (or unset: planned), "
                              f"got {self.conv_form!r}")
        if self.adversarial_protocol not in ("exhaustive", "authors"):
            raise MemjaxError(f"{prefix}adversarial_protocol must be exhaustive or authors, "
                              f"got {self.adversarial_protocol!r}")
        self._check_recipes(prefix)

    def _check_recipes(self, prefix: str) -> None:
        check_numbers(self, prefix, nonnegative=("warmup_epochs", "augment_crop",
                                                 "augment_cutout"))
        if self.lr_schedule not in LR_SCHEDULES:
            raise MemjaxError(f"{prefix}lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                              f"got {self.lr_schedule!r}")
        if self.lr_schedule != "constant":
            if self.lr_halving_epochs:
                raise MemjaxError(f"{prefix}lr_halving_epochs works with lr_schedule=constant "
                                  f"only, got lr_schedule={self.lr_schedule}")
            if not self.warmup_epochs < self.epochs:
                raise MemjaxError(f"{prefix}warmup_epochs must be below epochs "
                                  f"({self.epochs}), got {self.warmup_epochs}")
        if self.nesterov and not self.momentum:
            raise MemjaxError(f"{prefix}nesterov needs momentum > 0")
        if not 0 <= self.label_smoothing < 1:
            raise MemjaxError(f"{prefix}label_smoothing must be in [0, 1), got "
                              f"{self.label_smoothing}")
        if self.augment_crop_mode not in ("reflect", "constant"):
            raise MemjaxError(f"{prefix}augment_crop_mode must be reflect or constant, got "
                              f"{self.augment_crop_mode!r}")

    def check_data(self, num_examples: int, image_shape: tuple[int, ...] = ()) -> None:
        """The checks that need the data: a batch no larger than the training set, and
        augmentation that fits images of image_shape (H, W, ...) (before anything is
        written or compiled)."""
        from memjax.augment import Augmentation

        if self.batch_size > num_examples:
            raise MemjaxError(f"batch size {self.batch_size} is larger than the "
                              f"{num_examples} training examples")
        augmentation = Augmentation.of(self)
        if augmentation is not None and len(image_shape) >= 2:
            augmentation.check(*image_shape[:2])


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def override(config: Any, dotted: str, value: str, *, _above: str = "") -> Any:
    """Return `config` with the field at `dotted` (e.g. `train.epochs`) set from a string."""
    head, _, rest = dotted.partition(".")
    names = {f.name: f for f in dataclasses.fields(config)}
    if head not in names:
        raise MemjaxError(f"unknown setting {_above + dotted!r}; known: "
                          f"{', '.join(_above + n for n in sorted(names))}")
    current = getattr(config, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise MemjaxError(f"setting {_above + head!r} has no field {rest!r}")
        return dataclasses.replace(
            config, **{head: override(current, rest, value, _above=f"{_above}{head}.")})
    hint = typing.get_type_hints(type(config))[head]
    return dataclasses.replace(config, **{head: _parse(value, hint, _above + dotted)})


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


def env_number(name: str, kind: type = float, default: Any = None, *,
               minimum: float | None = None, maximum: float | None = None) -> Any:
    """Environment variable `name` as a number of type `kind` (unset or empty: `default`),
    within [minimum, maximum]; a one-line error otherwise."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
        if kind is int:
            if value != int(value):
                raise ValueError(text)
            value = int(value)
    except (ValueError, OverflowError):
        raise MemjaxError(f"environment variable {name}={text!r} is not "
                          f"{'an integer' if kind is int else 'a number'}") from None
    if (minimum is not None and not value >= minimum) or (maximum is not None
                                                          and not value <= maximum):
        bounds = f"[{minimum if minimum is not None else '-inf'}, " \
                 f"{maximum if maximum is not None else 'inf'}]"
        raise MemjaxError(f"environment variable {name}={text!r} must be in {bounds}")
    return value


MAX_SEED = 2 ** 31 - 1  # seeds travel as int32 into jitted code
KNOWN_DATASETS = ("embedded", "mnist", "cifar10")
LR_SCHEDULES = ("constant", "onecycle", "cosine")


def check_numbers(config: Any, prefix: str = "", *, positive=(), nonnegative=(), fractions=(),
                  seeds=(), nonempty=(), distinct=()) -> None:
    """One-line errors (MemjaxError naming `prefix` + field) for fields of `config` that
    hold a number or a tuple of numbers: `positive` > 0, `nonnegative` >= 0, `fractions` in
    [0, 1], `seeds` integers in [0, 2^31 - 1], `nonempty` tuples with at least one value,
    `distinct` tuples without a value twice (each value is a curve or a phase of its own);
    every number finite. None passes (unset)."""
    for name in nonempty:
        if getattr(config, name) == ():
            raise MemjaxError(f"{prefix}{name} needs at least one value")
    for name in distinct:
        _check_distinct(prefix + name, getattr(config, name) or ())
    for names, ok, rule in ((positive, lambda v: v > 0, "must be positive"),
                            (nonnegative, lambda v: v >= 0, "must be >= 0"),
                            (fractions, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
                            (seeds, lambda v: 0 <= v <= MAX_SEED,
                             f"must be an integer in [0, {MAX_SEED}]")):
        for name in names:
            value = getattr(config, name)
            for v in value if isinstance(value, tuple) else (value,):
                if v is None:
                    continue
                if isinstance(v, float) and not math.isfinite(v):
                    raise MemjaxError(f"{prefix}{name} must be a finite number, got {v}")
                if not ok(v):
                    raise MemjaxError(f"{prefix}{name} {rule}, got {v}")


def check_fraction(name: str, value: float) -> None:
    """One-line error for a function argument that must lie in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise MemjaxError(f"{name} must be in [0, 1], got {value}")


def check_choices(name: str, values: tuple, known: tuple) -> None:
    """One-line error for values of `name` outside `known`, or one listed twice."""
    unknown = [v for v in values if v not in known]
    if unknown:
        raise MemjaxError(f"unknown {name} {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(known)}")
    _check_distinct(name, values)


def _check_distinct(name: str, values: tuple) -> None:
    twice = sorted({v for v in values if values.count(v) > 1}, key=values.index)
    if twice:
        shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in twice)
        raise MemjaxError(f"{name} lists {shown} more than once; give each value once")


def validate(config: Any, prefix: str = "") -> None:
    """Check a study's config before anything runs; raise MemjaxError naming the problem:
    every number anywhere in it must be finite, and each nested config (DataConfig,
    ModelConfig, TrainConfig, ...) runs its own `check`. The study's own fields are its
    study's `check` to judge (checks that need the data happen when it is loaded)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            if hasattr(value, "check"):
                value.check(f"{prefix}{f.name}.")
            validate(value, f"{prefix}{f.name}.")
            continue
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise MemjaxError(f"{prefix}{f.name} must be a finite number, got {v}")


def _check_data(config: DataConfig) -> None:
    name = config.name
    if name.startswith("npz:"):
        path = name[4:]
        if os.path.isdir(path):
            raise MemjaxError(f"data file {path} is a directory; npz:PATH names an .npz file "
                              f"(for a folder of <name>.npz files use --data-dir)")
        if not os.path.isfile(path):
            raise MemjaxError(f"data file {path} does not exist")
        if not os.access(path, os.R_OK):
            raise MemjaxError(f"data file {path} is not readable (permission denied)")
    elif name not in KNOWN_DATASETS:
        raise MemjaxError(f"unknown dataset {name!r}; use embedded, mnist, cifar10 or npz:PATH")
    if name == "embedded" and config.test_as_validation:
        raise MemjaxError("the embedded subset has no test split (its validation images are "
                          "official MNIST training images 50000-51999); use data.name=mnist "
                          "for data.test_as_validation")
    if config.data_dir is not None and not os.path.isdir(config.data_dir):
        what = "is a file, not a directory" if os.path.exists(config.data_dir) else "does not exist"
        raise MemjaxError(f"data directory {config.data_dir} {what}")
