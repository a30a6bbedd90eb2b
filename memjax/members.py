"""What an ensemble is made of: the per-member arrays (`Members`), and how the Runner (and
`memjax.cost`, which counts a run's work without running it) turns them into the
initialized state, each member's view of the training set and the compiled epoch. The only
place memjax builds an ensemble."""
from __future__ import annotations

import dataclasses
import functools
import sys

import jax
import numpy as np
import optax

from memjax import memory
from memjax.augment import Augmentation
from memjax.config import ModelConfig, TrainConfig
from memjax.errors import MemjaxError
from memjax.ensemble import (EnsembleState, init_ensemble, init_width_ensemble, make_optimizer,
                             pad_members, set_regularization)
from memjax.metrics.lass import lass_adversarial_examples
from memjax.models import Network, build_network, model_entry
from memjax.train import make_train_epoch
from memjax.views import MemberView, noise_masks


@dataclasses.dataclass(frozen=True)
class Members:
    """What varies across members, one row per member (None: the same for all).

    ids: [M] member ids (keys derive from them: memjax.keys). widths: [M] or [M, layers]
    hidden units (an MLP masked to each width). example_mask: [M, N] bool, the training
    examples a member sees. input_noise, label_noise: [M] fractions of a member's examples
    replaced by randX / randY. strengths: regularizer name -> [M] (memjax.models.REGULARIZERS).
    learning_rate, weight_decay: [M] (None: the TrainConfig's). adversarial_weight: [M] w in
    (1 - w) clean + w adversarial loss.
    """

    ids: np.ndarray
    widths: np.ndarray | None = None
    example_mask: np.ndarray | None = None
    input_noise: np.ndarray | None = None
    label_noise: np.ndarray | None = None
    strengths: dict[str, np.ndarray] | None = None
    learning_rate: np.ndarray | None = None
    weight_decay: np.ndarray | None = None
    adversarial_weight: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.ids)

    def own_examples(self) -> np.ndarray | None:
        """The examples Runner.own_accuracy looks at: those some member trains on, when
        they are under 90 % of the set (a smaller copy of them is then kept beside it);
        None: all of them."""
        if self.example_mask is None:
            return None
        used = np.flatnonzero(np.any(self.example_mask, 0))
        return used if len(used) < 0.9 * self.example_mask.shape[1] else None

    def own_inputs(self, num_examples: int) -> int:
        """How many inputs Runner.own_accuracy predicts per member (`own_examples`)."""
        used = self.own_examples()
        return num_examples if used is None else len(used)

    def subset(self, rows: np.ndarray) -> "Members":
        """The members at `rows` (indices)."""
        def take(value):
            if isinstance(value, dict):
                return {k: take(v) for k, v in value.items()}
            if value is None or np.ndim(value) == 0:
                return value
            return np.asarray(value)[rows]

        return Members(**{f.name: take(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def padded(self, total: int) -> "Members":
        """The same members and `total - count` dummy copies of the last one."""
        def pad(value):
            if isinstance(value, dict):
                return {k: pad(v) for k, v in value.items()}
            if value is None or np.ndim(value) == 0:
                return value
            return pad_members(np.asarray(value), total)

        return Members(**{f.name: pad(getattr(self, f.name)) for f in dataclasses.fields(self)})


def build_ensemble(model: ModelConfig, train: TrainConfig, num_classes: int,
                   example_x: np.ndarray, members: Members
                   ) -> tuple[Network, optax.GradientTransformation, EnsembleState]:
    """The network, the optimizer and the initialized state of `members` (on the default
    device). example_x: [1, H, W, C] float, for shapes. A CNN convolves and normalizes in
    the run's form (conv_form), the planned one where the run leaves it unset."""
    tx = make_optimizer(train.momentum, train.nesterov)
    lr = train.learning_rate if members.learning_rate is None else members.learning_rate
    wd = train.weight_decay if members.weight_decay is None else members.weight_decay
    regularized = members.strengths is not None
    kw = dict(seed=train.seed, member_ids=members.ids, learning_rate=lr, weight_decay=wd)
    if members.widths is not None:
        network, state = init_width_ensemble(model, num_classes, tx, example_x,
                                             widths=members.widths, regularized=regularized,
                                             **kw)
    else:
        form = convolution_form(model, train)
        network = build_network(model, num_classes, regularized=regularized,
                                conv_form=form.conv_form,
                                norm_in_compute_dtype=form.norm_in_compute_dtype)
        state = init_ensemble(network, tx, example_x, **kw)
    if members.strengths:
        state = state.replace(variables=set_regularization(state.variables, **members.strengths))
    return network, tx, state


def abstract_ensemble(model: ModelConfig, train: TrainConfig, num_classes: int,
                      example_shape: tuple[int, ...], members: Members):
    """build_ensemble's network, optimizer and state, the state as jax.ShapeDtypeStructs
    (nothing allocated: for counting the work of a run before it runs, memjax.cost)."""
    built = {}

    def init():
        built["network"], built["tx"], state = build_ensemble(
            model, train, num_classes, np.zeros(example_shape, np.float32), members)
        return state

    state = jax.eval_shape(init)
    return built["network"], built["tx"], state


def convolution_form(model: ModelConfig, train: TrainConfig) -> memory.ConvPlan:
    """How a run's convolutional members convolve (the models registered with convolution
    forms: cnn, resnet9, resnet18): what `train` sets, the rest planned on this device
    (memjax.memory.conv_plan), in a form the model has (a planned form it lacks gives way
    to its first). The default ConvPlan for the MLP and for users' package.module:factory
    models, which convolve as they write themselves."""
    forms = model_entry(model.kind).conv_forms
    if not forms:
        return memory.ConvPlan()
    if train.conv_form is not None and train.conv_form not in forms:
        raise MemjaxError(f"model {model.kind!r} convolves in the {' or '.join(forms)} form "
                          f"only, not train.conv_form={train.conv_form}")
    form = memory.conv_plan(train.conv_form, train.member_chunk, train.norm_in_compute_dtype,
                            train.compute_dtype)
    if form.conv_form not in forms:
        form = memory.conv_plan(forms[0], train.member_chunk, train.norm_in_compute_dtype,
                                train.compute_dtype)
    return form


def epoch_program(network: Network, tx: optax.GradientTransformation, train: TrainConfig,
                  mesh, example_mask: np.ndarray | None):
    """The training epoch a Runner compiles (memjax.train.make_train_epoch) for members
    with these example masks ([M, N] bool; None: all examples). A CNN's members are
    grouped as its planned convolution form says (at most its chunk, as memory allows),
    unless train.member_chunk is set. The recipes (learning-rate schedule over
    train.epochs, label smoothing, augmentation) are the TrainConfig's."""
    planned = None
    if network.conv_form is not None and train.member_chunk is None:
        form = memory.conv_plan(train.conv_form, None, train.norm_in_compute_dtype,
                                train.compute_dtype)
        planned = form.member_chunk if form.conv_form == network.conv_form else None
    return make_train_epoch(
        network, tx, batch_size=train.batch_size, shared_order=train.shared_order,
        lr_halving_epochs=train.lr_halving_epochs, member_chunk=train.member_chunk, mesh=mesh,
        compute_dtype=train.compute_dtype, planned_chunk=planned,
        adversarial_examples=functools.partial(lass_adversarial_examples,
                                               protocol=train.adversarial_protocol),
        max_examples=None if example_mask is None else int(np.sum(example_mask, 1).max()),
        lr_schedule=train.lr_schedule, warmup_epochs=train.warmup_epochs,
        schedule_epochs=train.epochs, label_smoothing=train.label_smoothing,
        augmentation=Augmentation.of(train))


def searching(members: Members) -> tuple[bool, ...] | None:
    """Which members run the in-step adversarial search (weight > 0), as the training
    epoch's static `searching`; None when none has an adversarial weight."""
    weights = members.adversarial_weight
    if weights is None or not np.any(weights):
        return None
    return tuple(bool(w > 0) for w in np.asarray(weights))


def member_view(members: Members, num_examples: int, data_seed: int) -> MemberView:
    """The members' masks and adversarial weights as host arrays (None where unused)."""
    def noise(fractions):
        if fractions is None or not np.any(fractions):
            return None
        return noise_masks(fractions, num_examples, data_seed, members.example_mask)

    adversarial = members.adversarial_weight
    return MemberView(
        example_mask=None if members.example_mask is None else np.asarray(members.example_mask),
        input_noise_mask=noise(members.input_noise), label_noise_mask=noise(members.label_noise),
        adversarial_weight=None if adversarial is None or not np.any(adversarial)
        else np.asarray(adversarial, np.float32))


_NOTED: set[str] = set()  # the models note_unmasked_batchnorm has told of


def note_unmasked_batchnorm(network: Network) -> None:
    """Say once per model that its BatchNorm's training statistics count every row of a
    batch, when members train on subsets and its __call__ takes no example_mask."""
    if network.takes_example_mask or network.name in _NOTED:
        return
    _NOTED.add(network.name)
    print(f"memjax: note: model {network.name} has BatchNorm but its __call__ takes no "
          f"example_mask: its batch statistics count the examples outside each member's "
          f"subset too (docs/studies.md, Models, says how to take it)", file=sys.stderr)
