"""Ensembles: members stacked on a leading axis, stateless per-member keys, chunked vmap.

Key handling: member key = fold_in(root, member_id), so member i's randomness never depends
on how many members run beside it; one stream per purpose = fold_in(member_key, PURPOSE);
inside a scan, fold_in(stream, step). Streams that belong to no member (a LASS search over
the whole ensemble, a reference draw) come from `study_key`, under a root that no member id
reaches.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax.models import Network, Variables

INIT, DATA, DROPOUT, ATTACK, NOISE = range(5)
_STUDY = 2 ** 32 - 1  # fold_in(root, _STUDY): above every member id


def study_key(seed: int, purpose: int) -> jax.Array:
    """A typed key for a study-level stream (purpose: ATTACK, NOISE, ...) that no member's
    key or stream can equal: fold_in(fold_in(key(seed), 2^32 - 1), purpose)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _STUDY), purpose)


def member_keys(root: jax.Array, member_ids: jax.Array) -> jax.Array:
    """[M] typed keys: fold_in(root, member_id) for each id in member_ids [M]."""
    return jax.vmap(lambda i: jax.random.fold_in(root, i))(member_ids)


@flax.struct.dataclass
class EnsembleState:
    """Everything that changes during training, with a leading member axis [M, ...].

    learning_rate, weight_decay: [M] base hyperparameters per member.
    epoch: scalar int32, the number of epochs completed.
    diverged: [M] bool, members whose minibatch loss became non-finite; their state is
      frozen from that step on (see train.make_train_epoch) while the others train on.
    """

    variables: Variables
    opt_state: Any
    member_ids: jax.Array
    learning_rate: jax.Array
    weight_decay: jax.Array
    epoch: jax.Array
    diverged: jax.Array | None = None

    @property
    def members(self) -> int:
        return int(self.member_ids.shape[0])


def _sgd(learning_rate, weight_decay, momentum):
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum or None))


def make_optimizer(momentum: float = 0.0) -> optax.GradientTransformation:
    """SGD (with optional momentum and weight decay) whose learning rate and weight decay
    are arrays in the optimizer state, so each member can have its own."""
    return optax.inject_hyperparams(_sgd, static_args=("momentum",))(
        learning_rate=0.0, weight_decay=0.0, momentum=momentum)


def init_ensemble(network: Network, tx: optax.GradientTransformation, example_x: jax.Array, *,
                  seed: int, member_ids: np.ndarray, learning_rate: float | np.ndarray,
                  weight_decay: float | np.ndarray = 0.0) -> EnsembleState:
    """Initialize members `member_ids` [M], each from fold_in(fold_in(key(seed), id), INIT).

    example_x: [batch, H, W, C] float, used for shapes only.
    """
    ids = jnp.asarray(member_ids, jnp.int32)
    keys = member_keys(jax.random.key(seed), ids)

    @jax.jit
    def init(keys):
        variables = jax.vmap(lambda k: network.init(jax.random.fold_in(k, INIT), example_x))(keys)
        return variables, jax.vmap(tx.init)(variables["params"])

    variables, opt_state = init(keys)
    m = ids.shape[0]
    return EnsembleState(
        variables=variables, opt_state=opt_state, member_ids=ids,
        learning_rate=jnp.broadcast_to(jnp.asarray(learning_rate, jnp.float32), (m,)),
        weight_decay=jnp.broadcast_to(jnp.asarray(weight_decay, jnp.float32), (m,)),
        epoch=jnp.zeros((), jnp.int32), diverged=jnp.zeros((m,), bool))


def map_members(fn: Callable, chunk: int | None = None, *, mesh=None) -> Callable:
    """Lift a per-member function to stacked arguments [M, ...]: members split over the
    devices of `mesh` (axis `members`; None: every device, at most one per member), and on each device vmap inside
    groups of `chunk` members, lax.map across groups.

    chunk None: planned from the device's memory and one member's size (memjax.plan): one
    vmap over a device's members when they fit. Every positional argument must carry the
    member axis; close over shared data. The member count is padded (to a multiple of
    devices x chunk) by repeating the last member, whose extra results are dropped, so
    member i's result does not depend on M, the chunk or the device count.
    """
    from memjax import plan, sharding

    def run(*stacked):
        m = jax.tree_util.tree_leaves(stacked)[0].shape[0]
        mesh_ = sharding.default_mesh(m) if mesh is None else mesh
        d = mesh_.shape[sharding.AXIS]
        c = chunk or plan.plan_member_chunk(fn, stacked, devices=d)
        c = min(c, -(-m // d))
        if d == 1 and c >= m:
            return jax.vmap(fn)(*stacked)
        total = sharding.padded_members(m, mesh_, c)
        groups = total // (d * c)
        spec = jax.sharding.NamedSharding(mesh_, jax.sharding.PartitionSpec(sharding.AXIS))

        def group(leaf):
            if total > m:
                leaf = jnp.concatenate([leaf, jnp.repeat(leaf[-1:], total - m, axis=0)])
            # [devices, groups, chunk, ...]: each device's members stay on that device.
            leaf = leaf.reshape((d, groups, c) + leaf.shape[1:])
            return jax.lax.with_sharding_constraint(leaf, spec) if d > 1 else leaf

        def on_device(args):
            if groups == 1:
                return jax.tree_util.tree_map(lambda l: l[None], jax.vmap(fn)(*[
                    jax.tree_util.tree_map(lambda l: l[0], a) for a in args]))
            return jax.lax.map(lambda g: jax.vmap(fn)(*g), args)

        out = jax.vmap(on_device)(jax.tree_util.tree_map(group, stacked))
        if d > 1:
            out = jax.lax.with_sharding_constraint(out, spec)
        return jax.tree_util.tree_map(lambda l: l.reshape((total,) + l.shape[3:])[:m], out)

    return run
