"""One jitted epoch for a whole ensemble.

An epoch is a lax.scan of `train_step` over minibatches, vmapped over members (in chunks,
see `ensemble.map_members`). The data is on the device once; each member's minibatch is an
index gather from that single copy, in the member's own order (or a shared one), then
augmented on the device when the run asks for it (memjax.augment).

The learning rate of each step is the member's own rate (state.learning_rate, the peak of
a schedule) times `schedule_multiplier` at the step's place in the run: constant (halved
every lr_halving_epochs, set once per epoch), or onecycle / cosine, set at every step.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from memjax import dynamics, keys
from memjax.augment import Augmentation, augment, input_fill
from memjax.dynamics import Dynamics
from memjax.ensemble import EnsembleState, map_members, member_plan
from memjax.models import Network, in_compute_dtype
from memjax.order import epoch_order
from memjax.views import MemberView, NoiseSource, member_batch


@dataclass(frozen=True)
class Trainer:
    """What every step of every member shares (static under jit).

    adversarial_examples(apply_fn, variables, x, y, key) -> x_adv: the points adversarial
    training trains on (memjax.metrics.lass.lass_adversarial_examples for the paper's);
    needed only when some member's adversarial weight is set. max_examples: no member's
    example mask holds more examples (memjax.order.epoch_order; None: all of them).
    lr_schedule, warmup_epochs, schedule_epochs: the learning rate's multiplier at each
    step (`schedule_multiplier`; schedule_epochs: its horizon, TrainConfig.epochs).
    label_smoothing: targets (1 - a) one-hot + a / classes (0: the integer-label loss).
    augmentation: what each step does to its minibatch (memjax.augment; None: nothing).
    """

    network: Network
    tx: optax.GradientTransformation
    batch_size: int
    shared_order: bool = False
    lr_halving_epochs: int | None = None
    compute_dtype: str = "float32"
    adversarial_examples: Callable | None = None
    max_examples: int | None = None
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    schedule_epochs: int | None = None
    label_smoothing: float = 0.0
    augmentation: Augmentation | None = None


@flax.struct.dataclass
class Carry:
    """One member's state through the steps of an epoch; frozen: it diverged; dynamics:
    its per-example training records (memjax.dynamics), or None."""

    variables: dict
    opt_state: optax.OptState
    frozen: jax.Array
    dynamics: Dynamics | None = None


@flax.struct.dataclass
class StepKeys:
    """One member's DROPOUT, ATTACK and AUGMENT streams in this epoch (fold_in the step);
    augment: None when the run does not augment."""

    dropout: jax.Array
    attack: jax.Array
    augment: jax.Array | None = None


def schedule_multiplier(schedule: str, step, warmup_steps: float, total_steps: float):
    """The learning rate's multiplier (float32) at `step` (the run's step count: epoch x
    steps per epoch + step in the epoch, so fractional epoch = step / steps per epoch).

    constant: 1. onecycle: step / warmup_steps up to the peak, then (total - step) /
    (total - warmup), 0 from `total_steps` on: np.interp(step, [0, warmup, total], [0, 1,
    0]), the triangle of ffcv's CIFAR example (peak at epoch 5 of 24, lr 0.5) and Page's
    PiecewiseLinear([0, 5, 24], [0, 0.4, 0]); optax.join_schedules of two
    optax.linear_schedule. cosine: the same linear warm-up, then 0.5 (1 + cos(pi x
    (step - warmup) / (total - warmup))), 0 from `total_steps` on:
    optax.warmup_cosine_decay_schedule(0, 1, warmup, total). The first step of a run is
    at 0, as ffcv's LambdaLR (which starts at lr_schedule[0] = 0); Page's optimizer
    counts from 1, one step ahead.
    """
    step = jnp.asarray(step, jnp.float32)
    if schedule == "constant":
        return jnp.ones_like(step)
    rise = step / warmup_steps if warmup_steps > 0 else jnp.ones_like(step)
    if schedule == "onecycle":
        fall = (total_steps - step) / (total_steps - warmup_steps)
    elif schedule == "cosine":
        done = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
        fall = 0.5 * (1.0 + jnp.cos(jnp.pi * done))
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    return jnp.clip(jnp.where(step < warmup_steps, rise, fall), 0.0, 1.0)


def example_losses(logits, labels, label_smoothing: float = 0.0):
    """Per-example cross-entropy [B] of float32 logits [B, K] against integer labels [B]:
    with label_smoothing a > 0, against (1 - a) one-hot + a / K (optax.smooth_labels; the
    loss of PyTorch's CrossEntropyLoss(label_smoothing=a) in ffcv, and Page's (1 - a) x
    cross-entropy + a x mean over classes of -log p)."""
    if not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
                                  label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def step_loss(params, variables, xb, yb, w, t, step_keys: StepKeys, view: MemberView,
              trainer: Trainer):
    """The weighted mean loss of one member's minibatch, and (collection updates, logits).

    xb: [B, H, W, C] float32, yb: [B], w: [B] example weights (0: padding, or outside the
    member's examples). With an adversarial weight a: (1 - a) clean + a adversarial, the
    adversarial points searched on the current variables (no gradient through the search).
    The search and the adversarial pass stay float32 under bf16 compute: the search's
    radius (TRAINING_LASS, 0.3/255) is below bf16's spacing of pixels (up to 2^-8), so in
    bf16 an adversarial point would round back to its example or past the radius.
    """
    network = trainer.network
    xc, pc = in_compute_dtype(trainer.compute_dtype, (xb, params))
    logits, updates = network.apply_train({**variables, "params": pc}, xc,
                                          jax.random.fold_in(step_keys.dropout, t), w > 0)
    logits = logits.astype(jnp.float32)
    losses = example_losses(logits, yb, trainer.label_smoothing)
    if view.adversarial_weight is not None:
        if trainer.adversarial_examples is None:
            raise ValueError("members with an adversarial weight need adversarial_examples")
        current = {**variables, "params": params}
        search_key, drop_key = jax.random.split(jax.random.fold_in(step_keys.attack, t))
        x_adv = jax.lax.stop_gradient(
            trainer.adversarial_examples(network.apply, current, xb, yb, search_key))
        adv_logits, adv_updates = network.apply_train({**current, **updates}, x_adv, drop_key,
                                                      w > 0)
        # A member of weight 0 trains as it would alone (its group may search for others):
        # its clean loss, and its BatchNorm statistics from the clean pass.
        a = view.adversarial_weight
        adversarial = a > 0
        losses = jnp.where(adversarial, (1 - a) * losses
                           + a * example_losses(adv_logits, yb, trainer.label_smoothing),
                           losses)
        updates = jax.tree.map(lambda new, old: jnp.where(adversarial, new, old), adv_updates,
                               updates)
    return jnp.sum(w * losses) / jnp.maximum(jnp.sum(w), 1.0), (updates, logits)


def train_step(carry: Carry, batch, *, data, step_keys: StepKeys, view: MemberView,
               trainer: Trainer, epoch=None, lr=None, steps: int | None = None):
    """One SGD step of one member: batch = (t, indices [B], weights [B]); data = (x, y,
    noise). Returns the new carry and (summed loss, correct count) of the batch.

    The minibatch is augmented (trainer.augmentation, memjax.augment) with the key
    fold_in(step_keys.augment, t). Under a learning-rate schedule the step's rate is
    lr (the member's peak) x schedule_multiplier at epoch x steps + t (steps: per epoch).

    One select decides the step: a batch without examples (past the end of a smaller
    member's data) is no step, since momentum and weight decay would still move the
    parameters; a non-finite loss freezes the member (one member's NaN never stops the
    others). Parameters that an update made non-finite give a non-finite loss at the next
    step, so the loss is the whole check: no extra pass over the parameters, which would
    cost as much memory traffic as the update itself (the step is bandwidth-bound).
    """
    t, idx, w = batch
    xb, yb = member_batch(*data, view, idx)
    if trainer.augmentation is not None:
        xb = augment(xb, jax.random.fold_in(step_keys.augment, t), trainer.augmentation,
                     input_fill(trainer.network))
    variables = carry.variables
    (loss, (updates, logits)), grads = jax.value_and_grad(step_loss, has_aux=True)(
        variables["params"], variables, xb, yb, w, t, step_keys, view, trainer)
    grads = _after_every_gradient(grads)
    before = carry.opt_state
    if trainer.lr_schedule != "constant":
        rate = lr * schedule_multiplier(trainer.lr_schedule, epoch * steps + t,
                                        trainer.warmup_epochs * steps,
                                        trainer.schedule_epochs * steps)
        before = before._replace(hyperparams={**before.hyperparams, "learning_rate": rate})
    deltas, opt_state = trainer.tx.update(grads, before, variables["params"])
    params = optax.apply_updates(variables["params"], deltas)
    n = jnp.sum(w)
    finite = jnp.isfinite(loss)
    ok = ~carry.frozen & (n > 0) & finite
    variables, opt_state = jax.tree.map(
        lambda new, old: jnp.where(ok, new, old),
        ({**variables, **updates, "params": params}, opt_state), (variables, before))
    correct = jnp.sum(w * (jnp.argmax(logits, -1) == yb))
    frozen = carry.frozen | ((n > 0) & ~finite)
    records = carry.dynamics
    if records is not None:
        records = dynamics.update(records, idx, (w > 0) & ok, logits, yb, epoch)
    return Carry(variables, opt_state, frozen, records), (loss * n, correct)


def member_epoch(trainer: Trainer, seed, epoch, data, member_id, lr, wd, carry: Carry,
                 view: MemberView):
    """One epoch of one member; returns (carry, {"train_loss", "train_accuracy"}), averaged
    over the member's own examples as they were trained.

    An update that overflowed on the epoch's last step has no next loss to show it: one
    look at the parameters per epoch flags it.
    """
    order, weight = epoch_order(keys.order_key(seed, member_id, epoch, trainer.shared_order),
                                data[1].shape[0], trainer.batch_size, view.example_mask,
                                trainer.max_examples)
    if trainer.lr_halving_epochs:
        lr = lr * 0.5 ** (epoch // trainer.lr_halving_epochs)
    carry.opt_state.hyperparams.update(learning_rate=lr, weight_decay=wd)
    step_keys = StepKeys(keys.epoch_stream(seed, member_id, keys.DROPOUT, epoch),
                         keys.epoch_stream(seed, member_id, keys.ATTACK, epoch),
                         None if trainer.augmentation is None
                         else keys.epoch_stream(seed, member_id, keys.AUGMENT, epoch))
    step = functools.partial(train_step, data=data, step_keys=step_keys, view=view,
                             trainer=trainer, epoch=epoch, lr=lr, steps=order.shape[0])
    carry, (loss_sum, correct) = jax.lax.scan(
        step, carry, (jnp.arange(order.shape[0]), order, weight))
    finite = jax.tree.reduce(jnp.logical_and,
                             jax.tree.map(lambda p: jnp.isfinite(p).all(),
                                          carry.variables["params"]))
    carry = carry.replace(frozen=carry.frozen | ~finite)
    n = jnp.maximum(weight.sum(), 1.0)
    return carry, {"train_loss": loss_sum.sum() / n, "train_accuracy": correct.sum() / n}


def make_train_epoch(network: Network, tx: optax.GradientTransformation, *, batch_size: int,
                     shared_order: bool = False, lr_halving_epochs: int | None = None,
                     member_chunk: int | None = None, mesh=None,
                     compute_dtype: str = "float32",
                     adversarial_examples: Callable | None = None,
                     max_examples: int | None = None,
                     planned_chunk: int | None = None, lr_schedule: str = "constant",
                     warmup_epochs: float = 0.0, schedule_epochs: int | None = None,
                     label_smoothing: float = 0.0,
                     augmentation: Augmentation | None = None) -> Callable:
    """Build `train_epoch(state, seed, x, y, view=None, noise=None, searching=None) ->
    (state, metrics)`, jitted, state donated. searching (static): which members have an
    adversarial weight > 0, as the host knows it (memjax.members.searching); on one device
    only those then run the in-step search (`ensemble.map_members`' needs), where without
    it every member of a group with one does.

    Members are split over `mesh` (None: every device) in groups of `member_chunk` (None:
    planned from device memory, at most `planned_chunk` when that is set: the chunk of a
    planned convolution form, memjax.memory.ConvPlan); see `ensemble.map_members`.
    compute_dtype `bfloat16`: mixed precision, the forward and backward pass in bf16 on bf16
    copies of the float32 master weights, which receive the (float32) gradient and the
    update; the loss is float32.

    x: [N, H, W, C] uint8 (or float in [0, 1]), y: [N] int32, both on the device, shared by
    all members. view (memjax.views.MemberView, [M, ...]): per-member example masks
    (dataset size), noise masks (which examples a member sees from `noise`, the shared
    NoiseSource) and adversarial weights. metrics: {"train_loss": [M], "train_accuracy":
    [M], "diverged": [M] bool}.

    A member whose minibatch loss is not finite is flagged in state.diverged and frozen:
    that step is not taken and every later update is masked, while the others train on.
    Its variables stay as they were before the first such step (if an update overflowed,
    they are the non-finite result of that update, which made the next loss non-finite).
    A member whose parameters are not finite at the end of an epoch is flagged too.
    max_examples: the most examples any member's example mask holds, so that an epoch
    stops after the steps that hold them (memjax.order.epoch_order).

    The recipes (Trainer, TrainConfig): lr_schedule `onecycle` or `cosine` over
    schedule_epochs (the run's epochs) with warmup_epochs, per step (`schedule_multiplier`:
    an epoch's steps include those a smaller member skips); label_smoothing; augmentation
    of each minibatch (memjax.augment). Nesterov momentum is the optimizer's
    (memjax.ensemble.make_optimizer). At their defaults the program is the one without them.
    """
    if lr_schedule != "constant":
        if lr_halving_epochs:
            raise ValueError("lr_halving_epochs works with lr_schedule='constant' only")
        if not schedule_epochs or not 0 <= warmup_epochs < schedule_epochs:
            raise ValueError(f"a {lr_schedule} schedule needs schedule_epochs (its horizon) "
                             f"above warmup_epochs >= 0, got {schedule_epochs}, "
                             f"{warmup_epochs}")
    if augmentation is not None and not augmentation.active:
        augmentation = None
    trainer = Trainer(network, tx, batch_size, shared_order, lr_halving_epochs, compute_dtype,
                      adversarial_examples, max_examples, lr_schedule, warmup_epochs,
                      schedule_epochs, label_smoothing, augmentation)

    def per_member(state, seed, x, y, view, noise):
        one = functools.partial(member_epoch, trainer, seed, state.epoch, (x, y, noise))
        diverged = (jnp.zeros(state.member_ids.shape, bool) if state.diverged is None
                    else state.diverged)
        return one, (state.member_ids, state.learning_rate, state.weight_decay,
                     Carry(state.variables, state.opt_state, diverged, state.dynamics),
                     MemberView() if view is None else view)

    @functools.partial(jax.jit, donate_argnums=0, static_argnames="searching")
    def train_epoch(state: EnsembleState, seed, x, y, view: MemberView | None = None,
                    noise: NoiseSource | None = None, searching: tuple[bool, ...] | None = None):
        one, stacked = per_member(state, seed, x, y, view, noise)
        light = (_without_search(one) if view is not None
                 and view.adversarial_weight is not None else None)
        carry, metrics = map_members(one, member_chunk, mesh=mesh, light=light,
                                     needs=searching, at_most=planned_chunk)(*stacked)
        return state.replace(variables=carry.variables, opt_state=carry.opt_state,
                             diverged=carry.frozen, dynamics=carry.dynamics,
                             epoch=state.epoch + 1), \
            {**metrics, "diverged": carry.frozen}

    def placement(state, seed, x, y, view=None, noise=None, searching=None) -> dict:
        """How train_epoch places these members (ensemble.member_plan)."""
        return member_plan(*per_member(state, seed, x, y, view, noise)[:2], member_chunk,
                           mesh=mesh, at_most=planned_chunk)

    train_epoch.placement = placement
    return train_epoch


def _without_search(one: Callable) -> tuple[Callable, Callable]:
    """(needed, light_fn) for map_members: a group of members whose adversarial weights are
    all 0 trains without the in-step search (the view is the last stacked argument)."""
    def light_fn(*args):
        *rest, view = args
        return one(*rest, view.replace(adversarial_weight=None))

    return lambda *group: jnp.any(group[-1].adversarial_weight > 0), light_fn


def _after_every_gradient(grads):
    """The same gradients, each made to depend on all of them (+ 0 x one element of each).

    A layer's weight gradient does not need the backward pass through that layer's weights
    (dW = h^T delta), so XLA may update a weight before the backward pass has read it, and
    to allow that it copies every such weight on every step: two extra passes over most of
    the parameters in a bandwidth-bound step. (jax.lax.optimization_barrier does not remove
    the copy.) XLA does not fold x * 0 for floats, so the dependency stays.
    """
    token = sum(leaf.ravel()[0] for leaf in jax.tree_util.tree_leaves(grads)) * 0
    return jax.tree_util.tree_map(lambda g: g + token.astype(g.dtype), grads)
