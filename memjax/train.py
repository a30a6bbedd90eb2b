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
from memjax.ensemble import DATA, DROPOUT, EnsembleState, map_members
from memjax.models import ApplyFn, Network, as_float

if TYPE_CHECKING:
    from memjax.checkpoint import PhaseCheckpoints


def epoch_order(key: jax.Array, num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A random order as [steps, batch] indices and weights; the last batch is padded with
    weight-0 copies of example 0, so every example is seen exactly once per epoch."""
    steps = -(-num_examples // batch_size)
    pad = steps * batch_size - num_examples
    order = jnp.concatenate([jax.random.permutation(key, num_examples),
                             jnp.zeros((pad,), jnp.int32)])
    weight = jnp.concatenate([jnp.ones((num_examples,)), jnp.zeros((pad,))])
    return order.reshape(steps, batch_size), weight.reshape(steps, batch_size)


def make_train_epoch(network: Network, tx: optax.GradientTransformation, *, batch_size: int,
                     shared_order: bool = False, lr_halving_epochs: int | None = None,
                     member_chunk: int | None = None, mesh=None,
                     compute_dtype: str = "float32") -> Callable:
    """Build `train_epoch(state, seed, x, y) -> (state, metrics)`, jitted, state donated.

    Members are split over `mesh` (None: every device) in groups of `member_chunk` (None:
    planned from device memory); see `ensemble.map_members`. compute_dtype `bfloat16`: mixed
    precision, the forward and backward pass in bf16 on bf16 copies of the float32 master
    weights, which receive the (float32) gradient and the update; the loss is float32.

    x: [N, H, W, C] uint8 (or float in [0, 1]), y: [N] int32, both on the device, shared by
    all members. metrics: {"train_loss": [M], "train_accuracy": [M], "diverged": [M] bool},
    averaged over the epoch's minibatches as they were trained (weighted by examples).

    A member whose minibatch loss or updated parameters (their global norm) are not finite
    is flagged in state.diverged and frozen: its variables and optimizer state stay as they
    were before that step, and every later update is masked, while the others train on.
    """

    def member_epoch(variables, opt_state, member_id, lr, wd, diverged, epoch, seed, x, y):
        root = jax.random.key(seed)
        member_key = jax.random.fold_in(root, member_id)
        order_key = jax.random.fold_in(
            jax.random.fold_in(root if shared_order else member_key, DATA), epoch)
        order, weight = epoch_order(order_key, y.shape[0], batch_size)
        if lr_halving_epochs:
            lr = lr * 0.5 ** (epoch // lr_halving_epochs)
        opt_state.hyperparams.update(learning_rate=lr, weight_decay=wd)
        dropout_key = jax.random.fold_in(jax.random.fold_in(member_key, DROPOUT), epoch)

        def step(carry, inputs):
            variables, opt_state, frozen = carry
            t, idx, w = inputs
            xb, yb = as_float(x[idx]), y[idx]

            def loss_fn(params):
                xc, pc = xb, params
                if compute_dtype != "float32":
                    xc = xb.astype(compute_dtype)
                    pc = jax.tree_util.tree_map(lambda p: p.astype(compute_dtype), params)
                logits, updates = network.apply_train(
                    {**variables, "params": pc}, xc, jax.random.fold_in(dropout_key, t))
                logits = logits.astype(jnp.float32)
                losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
                return jnp.sum(w * losses) / jnp.maximum(jnp.sum(w), 1.0), (updates, logits)

            (loss, (updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                variables["params"])
            deltas, new_opt_state = tx.update(grads, opt_state, variables["params"])
            params = optax.apply_updates(variables["params"], deltas)
            # Divergence isolation: two scalar checks and a select (fused into the update),
            # so one member's NaN never stops the others. The new parameters' norm is
            # non-finite when the update is, or when it pushes a parameter out of range.
            ok = ~frozen & jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(params))
            variables, opt_state = jax.tree.map(
                lambda new, old: jnp.where(ok, new, old),
                ({**variables, **updates, "params": params}, new_opt_state),
                (variables, opt_state))
            n = jnp.sum(w)
            correct = jnp.sum(w * (jnp.argmax(logits, -1) == yb))
            return (variables, opt_state, ~ok), (loss * n, correct)

        steps = order.shape[0]
        (variables, opt_state, diverged), (loss_sum, correct) = jax.lax.scan(
            step, (variables, opt_state, diverged), (jnp.arange(steps), order, weight))
        n = y.shape[0]
        return variables, opt_state, diverged, {"train_loss": loss_sum.sum() / n,
                                                "train_accuracy": correct.sum() / n,
                                                "diverged": diverged}

    @functools.partial(jax.jit, donate_argnums=0)
    def train_epoch(state: EnsembleState, seed, x, y):
        per_member = map_members(
            lambda v, o, i, lr, wd, d: member_epoch(v, o, i, lr, wd, d, state.epoch, seed, x, y),
            member_chunk, mesh=mesh)
        diverged = (jnp.zeros(state.member_ids.shape, bool) if state.diverged is None
                    else state.diverged)
        variables, opt_state, diverged, metrics = per_member(
            state.variables, state.opt_state, state.member_ids, state.learning_rate,
            state.weight_decay, diverged)
        return state.replace(variables=variables, opt_state=opt_state, diverged=diverged,
                             epoch=state.epoch + 1), metrics

    return train_epoch


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
    out = {"correct": unchunk(correct), "loss": unchunk(loss)}
    if jax.process_count() > 1:  # every host gets every member's results (one run dir)
        out = jax.lax.with_sharding_constraint(
            out, jax.sharding.NamedSharding(mesh or sharding.default_mesh(m),
                                            jax.sharding.PartitionSpec()))
    return out


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
