"""One jitted epoch for a whole ensemble, and evaluation on any split.

An epoch is a lax.scan over minibatches, vmapped over members (in chunks, see
`ensemble.map_members`). The data is on the device once; each member's minibatch is an
index gather from that single copy, in the member's own order (or a shared one).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from memjax.adversarial import lass_adversarial_examples
from memjax.ensemble import ATTACK, DATA, DROPOUT, EnsembleState, map_members
from memjax.members import MemberView, NoiseSource, member_batch
from memjax.models import ApplyFn, Network, as_float


def epoch_order(key: jax.Array, num_examples: int, batch_size: int,
                example_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """A random order as [steps, batch] indices and weights; the last batch is padded with
    weight-0 copies of example 0, so every example is seen exactly once per epoch.

    example_mask: [N] bool, the member's own examples (dataset-size sweeps): they come first,
    in random order, and the rest get weight 0 (whole weight-0 batches change nothing).
    """
    steps = -(-num_examples // batch_size)
    pad = steps * batch_size - num_examples
    order = jax.random.permutation(key, num_examples)
    weight = jnp.ones((num_examples,))
    if example_mask is not None:
        order = order[jnp.argsort(~example_mask[order], stable=True)]
        weight = (jnp.arange(num_examples) < jnp.sum(example_mask)).astype(weight.dtype)
    order = jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)])
    weight = jnp.concatenate([weight, jnp.zeros((pad,))])
    return order.reshape(steps, batch_size), weight.reshape(steps, batch_size)


def make_train_epoch(network: Network, tx: optax.GradientTransformation, *, batch_size: int,
                     shared_order: bool = False, lr_halving_epochs: int | None = None,
                     member_chunk: int | None = None,
                     adversarial_examples: Callable = lass_adversarial_examples) -> Callable:
    """Build `train_epoch(state, seed, x, y, view=None, noise=None) -> (state, metrics)`,
    jitted, state donated.

    x: [N, H, W, C] uint8 (or float in [0, 1]), y: [N] int32, both on the device, shared by
    all members. view (memjax.members.MemberView, [M, ...]): per-member example masks
    (dataset size), noise masks (which examples a member sees from `noise`, the shared
    NoiseSource) and adversarial weights w (loss = (1 - w) clean + w adversarial, with
    examples from `adversarial_examples(apply_fn, variables, x, y, key)`).
    metrics: {"train_loss": [M], "train_accuracy": [M]}, averaged over the epoch's
    minibatches as they were trained (weighted by examples, each member over its own).
    """

    def member_epoch(variables, opt_state, member_id, lr, wd, view, epoch, seed, x, y, noise):
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
            variables, opt_state = carry
            t, idx, w = inputs
            xb, yb = member_batch(x, y, noise, view, idx)

            def loss_fn(params):
                current = {**variables, "params": params}
                logits, updates = network.apply_train(
                    current, xb, jax.random.fold_in(dropout_key, t))
                losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
                if view.adversarial_weight is not None:
                    search_key, drop_key = jax.random.split(jax.random.fold_in(attack_key, t))
                    x_adv = jax.lax.stop_gradient(
                        adversarial_examples(network.apply, current, xb, yb, search_key))
                    adv_logits, updates = network.apply_train(
                        {**current, **updates}, x_adv, drop_key)
                    a = view.adversarial_weight
                    losses = (1 - a) * losses + a * optax.softmax_cross_entropy_with_integer_labels(
                        adv_logits, yb)
                return jnp.sum(w * losses) / jnp.maximum(jnp.sum(w), 1.0), (updates, logits)

            (loss, (updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                variables["params"])
            deltas, new_opt_state = tx.update(grads, opt_state, variables["params"])
            n = jnp.sum(w)
            # A batch without examples (past the end of a smaller member's data) is no step:
            # momentum and weight decay would otherwise still move the parameters.
            keep = lambda new, old: jax.tree_util.tree_map(
                lambda a, b: jnp.where(n > 0, a, b), new, old)
            params = keep(optax.apply_updates(variables["params"], deltas), variables["params"])
            opt_state = keep(new_opt_state, opt_state)
            updates = keep(updates, {k: variables[k] for k in updates})
            correct = jnp.sum(w * (jnp.argmax(logits, -1) == yb))
            return ({**variables, **updates, "params": params}, opt_state), (loss * n, correct)

        steps = order.shape[0]
        (variables, opt_state), (loss_sum, correct) = jax.lax.scan(
            step, (variables, opt_state), (jnp.arange(steps), order, weight))
        n = jnp.maximum(weight.sum(), 1.0)
        return variables, opt_state, {"train_loss": loss_sum.sum() / n,
                                      "train_accuracy": correct.sum() / n}

    @functools.partial(jax.jit, donate_argnums=0)
    def train_epoch(state: EnsembleState, seed, x, y, view: MemberView | None = None,
                    noise: NoiseSource | None = None):
        view = MemberView() if view is None else view
        per_member = map_members(
            lambda v, o, i, lr, wd, vw: member_epoch(v, o, i, lr, wd, vw, state.epoch, seed,
                                                     x, y, noise),
            member_chunk)
        variables, opt_state, metrics = per_member(
            state.variables, state.opt_state, state.member_ids, state.learning_rate,
            state.weight_decay, view)
        return state.replace(variables=variables, opt_state=opt_state,
                             epoch=state.epoch + 1), metrics

    return train_epoch


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk", "member_chunk"))
def evaluate(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array, *, chunk: int = 2048,
             member_chunk: int | None = None) -> dict[str, jax.Array]:
    """Per-member, per-example correctness and loss, computed on the device.

    apply_fn(variables_of_one_member, x[B, ...]) -> logits [B, classes].
    variables: stacked [M, ...]. x: [N, H, W, C] uint8 or float in [0, 1]; y: [N] int.
    Returns {"correct": [M, N] bool, "loss": [M, N] float32 (cross-entropy, nats)}.
    Examples are processed `chunk` at a time (the last chunk padded), members in groups
    of `member_chunk`.
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

        return map_members(member, member_chunk)(variables)

    correct, loss = jax.lax.map(on_chunk, (xs, ys))
    m = correct.shape[1]
    unchunk = lambda a: jnp.moveaxis(a, 1, 0).reshape(m, chunks * chunk)[:, :n]
    return {"correct": unchunk(correct), "loss": unchunk(loss)}


def fit(state: EnsembleState, train_epoch: Callable, seed: int, x: jax.Array, y: jax.Array,
        epochs: int, *, on_epoch: Callable[[int, EnsembleState, dict], None] | None = None,
        desc: str = "training") -> EnsembleState:
    """Run `epochs` jitted epochs; the host sees metrics once per epoch.

    on_epoch(epoch, state, metrics) is called after each epoch with metrics on the host
    (e.g. to evaluate, log to metrics.jsonl or checkpoint). Shows a progress bar on stderr.
    """
    from tqdm.auto import tqdm

    for _ in tqdm(range(epochs), desc=desc, unit="epoch", leave=False, mininterval=1.0):
        state, metrics = train_epoch(state, seed, x, y)
        if on_epoch is not None:
            on_epoch(int(state.epoch), state, jax.device_get(metrics))
    return state
