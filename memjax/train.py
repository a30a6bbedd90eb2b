"""One jitted epoch for a whole ensemble, and evaluation on any split.

An epoch is a lax.scan over minibatches, vmapped over members (in chunks, see
`ensemble.map_members`). The data is on the device once; each member's minibatch is an
index gather from that single copy, in the member's own order (or a shared one).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import optax

from memjax import sharding
from memjax.adversarial import lass_adversarial_examples
from memjax.ensemble import ATTACK, DATA, DROPOUT, EnsembleState, map_members
from memjax.members import MemberView, NoiseSource, member_batch
from memjax.models import ApplyFn, Network, as_float
from memjax.order import epoch_order  # noqa: F401  (re-exported: part of the trainer's API)

if TYPE_CHECKING:
    from memjax.checkpoint import PhaseCheckpoints


def make_train_epoch(network: Network, tx: optax.GradientTransformation, *, batch_size: int,
                     shared_order: bool = False, lr_halving_epochs: int | None = None,
                     member_chunk: int | None = None, mesh=None,
                     compute_dtype: str = "float32",
                     adversarial_examples: Callable = lass_adversarial_examples) -> Callable:
    """Build `train_epoch(state, seed, x, y, view=None, noise=None) -> (state, metrics)`,
    jitted, state donated.

    Members are split over `mesh` (None: every device) in groups of `member_chunk` (None:
    planned from device memory); see `ensemble.map_members`. compute_dtype `bfloat16`: mixed
    precision, the forward and backward pass in bf16 on bf16 copies of the float32 master
    weights, which receive the (float32) gradient and the update; the loss is float32.

    x: [N, H, W, C] uint8 (or float in [0, 1]), y: [N] int32, both on the device, shared by
    all members. view (memjax.members.MemberView, [M, ...]): per-member example masks
    (dataset size), noise masks (which examples a member sees from `noise`, the shared
    NoiseSource) and adversarial weights w (loss = (1 - w) clean + w adversarial, with
    examples from `adversarial_examples(apply_fn, variables, x, y, key)`).
    metrics: {"train_loss": [M], "train_accuracy": [M], "diverged": [M] bool}, averaged
    over the epoch's minibatches as they were trained (weighted by examples, each member
    over its own).

    A member whose minibatch loss is not finite is flagged in state.diverged and frozen:
    that step is not taken and every later update is masked, while the others train on.
    Its variables stay as they were before the first such step (if an update overflowed,
    they are the non-finite result of that update, which made the next loss non-finite).
    A member whose parameters are not finite at the end of an epoch is flagged too.
    """

    def member_epoch(variables, opt_state, member_id, lr, wd, diverged, view, epoch, seed, x,
                     y, noise):
        root = jax.random.key(seed)
        member_key = jax.random.fold_in(root, member_id)
        order_key = jax.random.fold_in(
            jax.random.fold_in(root if shared_order else member_key, DATA), epoch)
        order, weight = epoch_order(order_key, y.shape[0], batch_size, view.example_mask)
        if lr_halving_epochs:
            lr = lr * 0.5 ** (epoch // lr_halving_epochs)
        opt_state.hyperparams.update(learning_rate=lr, weight_decay=wd)
        dropout_key = jax.random.fold_in(jax.random.fold_in(member_key, DROPOUT), epoch)
        attack_key = jax.random.fold_in(jax.random.fold_in(member_key, ATTACK), epoch)

        def step(carry, inputs):
            variables, opt_state, frozen = carry
            t, idx, w = inputs
            xb, yb = member_batch(x, y, noise, view, idx)

            def loss_fn(params):
                current = {**variables, "params": params}
                xc, pc = xb, params
                if compute_dtype != "float32":
                    xc = xb.astype(compute_dtype)
                    pc = jax.tree_util.tree_map(lambda p: p.astype(compute_dtype), params)
                logits, updates = network.apply_train(
                    {**variables, "params": pc}, xc, jax.random.fold_in(dropout_key, t), w > 0)
                logits = logits.astype(jnp.float32)
                losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
                if view.adversarial_weight is not None:
                    search_key, drop_key = jax.random.split(jax.random.fold_in(attack_key, t))
                    x_adv = jax.lax.stop_gradient(
                        adversarial_examples(network.apply, current, xb, yb, search_key))
                    adv_logits, updates = network.apply_train(
                        {**current, **updates}, x_adv, drop_key, w > 0)
                    a = view.adversarial_weight
                    losses = (1 - a) * losses + a * optax.softmax_cross_entropy_with_integer_labels(
                        adv_logits, yb)
                return jnp.sum(w * losses) / jnp.maximum(jnp.sum(w), 1.0), (updates, logits)

            (loss, (updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                variables["params"])
            grads = _after_every_gradient(grads)
            deltas, new_opt_state = tx.update(grads, opt_state, variables["params"])
            params = optax.apply_updates(variables["params"], deltas)
            n = jnp.sum(w)
            # One select decides the step: a batch without examples (past the end of a
            # smaller member's data) is no step, since momentum and weight decay would still
            # move the parameters; a non-finite loss freezes the member (divergence
            # isolation: one member's NaN never stops the others). Parameters that an update
            # made non-finite give a non-finite loss at the next step, so the loss is the
            # whole check: no extra pass over the parameters, which would cost as much
            # memory traffic as the update itself (the step is bandwidth-bound).
            finite = jnp.isfinite(loss)
            ok = ~frozen & (n > 0) & finite
            variables, opt_state = jax.tree.map(
                lambda new, old: jnp.where(ok, new, old),
                ({**variables, **updates, "params": params}, new_opt_state),
                (variables, opt_state))
            correct = jnp.sum(w * (jnp.argmax(logits, -1) == yb))
            frozen = frozen | ((n > 0) & ~finite)
            return (variables, opt_state, frozen), (loss * n, correct)

        steps = order.shape[0]
        (variables, opt_state, diverged), (loss_sum, correct) = jax.lax.scan(
            step, (variables, opt_state, diverged), (jnp.arange(steps), order, weight))
        # An update that overflowed on the epoch's last step has no next loss to show it:
        # one look at the parameters per epoch flags it.
        diverged = diverged | ~jax.tree.reduce(
            jnp.logical_and, jax.tree.map(lambda p: jnp.isfinite(p).all(), variables["params"]))
        n = jnp.maximum(weight.sum(), 1.0)
        return variables, opt_state, diverged, {"train_loss": loss_sum.sum() / n,
                                                "train_accuracy": correct.sum() / n,
                                                "diverged": diverged}

    @functools.partial(jax.jit, donate_argnums=0)
    def train_epoch(state: EnsembleState, seed, x, y, view: MemberView | None = None,
                    noise: NoiseSource | None = None):
        view = MemberView() if view is None else view
        per_member = map_members(
            lambda v, o, i, lr, wd, d, vw: member_epoch(v, o, i, lr, wd, d, vw, state.epoch,
                                                        seed, x, y, noise),
            member_chunk, mesh=mesh)
        diverged = (jnp.zeros(state.member_ids.shape, bool) if state.diverged is None
                    else state.diverged)
        variables, opt_state, diverged, metrics = per_member(
            state.variables, state.opt_state, state.member_ids, state.learning_rate,
            state.weight_decay, diverged, view)
        return state.replace(variables=variables, opt_state=opt_state, diverged=diverged,
                             epoch=state.epoch + 1), metrics

    return train_epoch


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


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk", "member_chunk", "mesh"))
def evaluate(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array, *, chunk: int = 2048,
             member_chunk: int | None = None, mesh=None) -> dict[str, jax.Array]:
    """Per-member, per-example correctness and loss, computed on the device.

    apply_fn(variables_of_one_member, x[B, ...]) -> logits [B, classes].
    variables: stacked [M, ...]. x: [N, H, W, C] uint8 or float in [0, 1]; y: [N] int.
    Returns {"correct": [M, N] bool, "loss": [M, N] float32 (cross-entropy, nats)}.
    Examples are processed `chunk` at a time (the last chunk padded), members in groups
    of `member_chunk` (None: planned) split over `mesh` (None: every device).
    """
    n = y.shape[0]
    chunk = min(chunk, n)
    chunks = -(-n // chunk)
    pad = chunks * chunk - n
    xs = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape(
        (chunks, chunk) + x.shape[1:])
    ys = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(chunks, chunk)

    def on_chunk(batch):
        xb, yb = batch

        def member(v):
            logits = apply_fn(v, as_float(xb))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            return jnp.argmax(logits, -1) == yb, loss

        return map_members(member, member_chunk, mesh=mesh)(variables)

    correct, loss = jax.lax.map(on_chunk, (xs, ys))
    m = correct.shape[1]
    unchunk = lambda a: jnp.moveaxis(a, 1, 0).reshape(m, chunks * chunk)[:, :n]
    # every host gets every member's results (one run dir)
    return sharding.everywhere({"correct": unchunk(correct), "loss": unchunk(loss)}, m, mesh)


def fit(state: EnsembleState, train_epoch: Callable, seed: int, x: jax.Array, y: jax.Array,
        epochs: int, *, on_epoch: Callable[[int, EnsembleState, dict], None] | None = None,
        desc: str = "training", checkpoints: "PhaseCheckpoints | None" = None) -> EnsembleState:
    """Run `epochs` more jitted epochs; the host sees metrics once per epoch.

    on_epoch(epoch, state, metrics) is called after each epoch with metrics on the host
    (e.g. to evaluate or log to metrics.jsonl). checkpoints (memjax.checkpoint), if given,
    saves the state after on_epoch at its interval and after the last epoch. Shows a
    progress bar on stderr.
    """
    from tqdm.auto import tqdm

    for i in tqdm(range(epochs), desc=desc, unit="epoch", leave=False, mininterval=1.0):
        state, metrics = train_epoch(state, seed, x, y)
        if on_epoch is not None:
            on_epoch(int(state.epoch), state, sharding.to_host(metrics))
        if checkpoints is not None:
            checkpoints.save(state, force=i == epochs - 1)
    return state
