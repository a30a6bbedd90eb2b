"""Ensembles: members stacked on a leading axis, their initialization (each member from its
own key, `memjax.keys`; a width sweep as a masked max-width MLP), per-member regularizer
strengths, and `map_members`, the chunked and sharded vmap every per-member computation
goes through.

- Width: a max-width MLP whose hidden units are masked per member (`hidden_masks`); each
  member is initialized exactly as the narrow network of its width would be with the same
  key, zero-padded (`init_width_ensemble`), so it trains exactly as that narrow network.
- Regularizer strengths: `set_regularization` writes them into the variables.

Cost: a vmapped member costs what the largest member costs (max width, max dataset size:
smaller members run zero-weight steps that change nothing). Members of very different cost
belong in separate ensembles ("buckets"): e.g. widths 16-256 in one, 512-4096 each alone;
results do not depend on the grouping, since member i's keys depend only on its id.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax import keys
from memjax.config import ModelConfig
from memjax.errors import MemjaxError
from memjax.models import REGULARIZERS, Network, Variables, build_network


@flax.struct.dataclass
class EnsembleState:
    """Everything that changes during training, with a leading member axis [M, ...].

    learning_rate, weight_decay: [M] base hyperparameters per member.
    epoch: scalar int32, the number of epochs completed.
    diverged: [M] bool, members whose minibatch loss became non-finite; their state is
      frozen from that step on (see train.make_train_epoch) while the others train on.
    dynamics: per-example training records [M, N] (memjax.dynamics), or None (not kept).
    """

    variables: Variables
    opt_state: Any
    member_ids: jax.Array
    learning_rate: jax.Array
    weight_decay: jax.Array
    epoch: jax.Array
    diverged: jax.Array | None = None
    dynamics: Any = None

    @property
    def member_count(self) -> int:
        return int(self.member_ids.shape[0])


def _sgd(learning_rate, weight_decay, momentum, nesterov=False):
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))


def make_optimizer(momentum: float = 0.0, nesterov: bool = False
                   ) -> optax.GradientTransformation:
    """SGD (with optional momentum and weight decay) whose learning rate and weight decay
    are arrays in the optimizer state, so each member can have its own.

    Weight decay is L2 regularization added to the gradient before momentum: g + wd * p,
    then the momentum trace t = momentum * t + (g + wd * p), then p -= lr * t (heavy ball)
    or p -= lr * ((g + wd * p) + momentum * t) (nesterov). That is PyTorch's SGD(momentum,
    weight_decay, nesterov), which ffcv's CIFAR example trains with (without nesterov).
    Page's cifar10-fast (nesterov) folds the learning rate into the trace as each gradient
    arrives (v = momentum * v - lr * g'; p += -lr * g' + momentum * v): the same updates
    at a constant rate, slightly different ones while a schedule moves it. His SGD takes
    the summed loss, lr / batch and weight decay 5e-4 x batch, which is learning_rate = lr
    and weight_decay = 5e-4 here (the mean loss)."""
    return optax.inject_hyperparams(_sgd, static_args=("momentum", "nesterov"))(
        learning_rate=0.0, weight_decay=0.0, momentum=momentum, nesterov=nesterov)


def init_ensemble(network: Network, tx: optax.GradientTransformation, example_x: jax.Array, *,
                  seed: int, member_ids: np.ndarray, learning_rate: float | np.ndarray,
                  weight_decay: float | np.ndarray = 0.0) -> EnsembleState:
    """Initialize members `member_ids` [M], each from fold_in(fold_in(key(seed), id), INIT).

    example_x: [batch, H, W, C] float, used for shapes only.
    """
    ids = jnp.asarray(member_ids, jnp.int32)

    @jax.jit
    def init(ids):
        variables = jax.vmap(lambda i: network.init(keys.init_key(seed, i), example_x))(ids)
        return variables, jax.vmap(tx.init)(variables["params"])

    variables, opt_state = init(ids)
    m = ids.shape[0]
    return EnsembleState(
        variables=variables, opt_state=opt_state, member_ids=ids,
        learning_rate=jnp.broadcast_to(jnp.asarray(learning_rate, jnp.float32), (m,)),
        weight_decay=jnp.broadcast_to(jnp.asarray(weight_decay, jnp.float32), (m,)),
        epoch=jnp.zeros((), jnp.int32), diverged=jnp.zeros((m,), bool))


# ---- widths ---------------------------------------------------------------------------

def _widths_per_layer(widths: np.ndarray, hidden: tuple[int, ...]) -> np.ndarray:
    widths = np.asarray(widths, np.int64)
    if widths.ndim == 1:
        widths = np.repeat(widths[:, None], len(hidden), axis=1)
    if widths.ndim != 2 or widths.shape[1] != len(hidden):
        raise MemjaxError(f"widths must be [members] or [members, {len(hidden)}]")
    if widths.min() <= 0 or (widths > np.asarray(hidden)[None]).any():
        raise MemjaxError(f"widths must be in 1..{max(hidden)} (the model's width), "
                          f"got {sorted(set(widths.ravel().tolist()))}")
    return widths


def hidden_masks(widths: np.ndarray, hidden: tuple[int, ...]) -> dict[str, jax.Array]:
    """{"hidden_i": [M, hidden[i]] float32}: 1 for the first widths[m] units of layer i.

    widths: [M] (every hidden layer of member m that wide) or [M, layers]."""
    widths = _widths_per_layer(widths, hidden)
    return {f"hidden_{i}": jnp.asarray(np.arange(w)[None, :] < widths[:, i:i + 1], jnp.float32)
            for i, w in enumerate(hidden)}


def init_width_ensemble(model: ModelConfig, num_classes: int, tx: optax.GradientTransformation,
                        example_x: jax.Array, *, seed: int, member_ids: np.ndarray,
                        widths: np.ndarray, learning_rate: float | np.ndarray,
                        weight_decay: float | np.ndarray = 0.0,
                        regularized: bool = False) -> tuple[Network, EnsembleState]:
    """A max-width (model.hidden) masked MLP ensemble where member m is the narrow MLP of
    widths[m], initialized as that narrow network would be from the same key (its fan-in
    scaling included) and zero-padded; unused units stay exactly zero during training.

    One init per distinct width (not per member). Returns the network and the state.
    """
    if model.kind != "mlp":
        raise MemjaxError("width sweeps need model.kind=mlp")
    hidden = tuple(model.hidden)
    per_layer = _widths_per_layer(widths, hidden)
    ids = np.asarray(member_ids)
    network = build_network(model, num_classes, masked=True, regularized=regularized)
    state = init_ensemble(network, tx, example_x, seed=seed, member_ids=ids,
                          learning_rate=learning_rate, weight_decay=weight_decay)
    params = state.variables["params"]
    for width in sorted(set(map(tuple, per_layer.tolist()))):
        rows = np.flatnonzero((per_layer == np.asarray(width)).all(axis=1))
        narrow = build_network(dataclasses.replace(model, hidden=width), num_classes)
        small = jax.jit(jax.vmap(lambda i: narrow.init(keys.init_key(seed, i), example_x)[
            "params"]))(jnp.asarray(ids[rows], jnp.int32))
        params = jax.tree_util.tree_map(functools.partial(_place, rows), params, small)
    variables = {**state.variables, "params": params, "masks": hidden_masks(per_layer, hidden)}
    return network, state.replace(variables=variables,
                                  opt_state=jax.jit(jax.vmap(tx.init))(params))


def _place(rows: np.ndarray, big: jax.Array, small: jax.Array) -> jax.Array:
    pad = [(0, 0)] + [(0, b - s) for b, s in zip(big.shape[1:], small.shape[1:])]
    return big.at[rows].set(jnp.pad(small, pad))


def narrow_params(params, width: tuple[int, ...] | int, hidden: tuple[int, ...]):
    """One member's max-width MLP params cut to the narrow network of `width` (for checks)."""
    widths = (width,) * len(hidden) if isinstance(width, int) else tuple(width)
    sizes = [None] + list(widths) + [None]
    out = {}
    for i in range(len(hidden) + 1):
        layer = params[f"Dense_{i}"]
        k = layer["kernel"]
        k = k[: sizes[i] or k.shape[0], : sizes[i + 1] or k.shape[1]]
        out[f"Dense_{i}"] = {"kernel": k, "bias": layer["bias"][: sizes[i + 1] or k.shape[1]]}
    return out


# ---- regularizers ---------------------------------------------------------------------

def set_regularization(variables, **strengths) -> dict:
    """Variables with per-member regularizer strengths set: each keyword one of
    dropout, input_dropout (drop probabilities in [0, 1)), input_noise, hidden_noise (std,
    >= 0), as a scalar or [M] array. The network must be built with regularized=True."""
    if "regularization" not in variables:
        raise MemjaxError("the network was built without regularizers (regularized=True)")
    current = dict(variables["regularization"]["strengths"])
    m = jax.tree_util.tree_leaves(variables["params"])[0].shape[0]
    for name, value in strengths.items():
        if name not in REGULARIZERS:
            raise MemjaxError(f"unknown regularizer {name!r}; known: {', '.join(REGULARIZERS)}")
        value = np.broadcast_to(np.asarray(value, np.float32), (m,))
        if name.endswith("dropout") and (value.min() < 0 or value.max() >= 1):
            raise MemjaxError(f"{name} rate must be in [0, 1), got {value.tolist()}")
        if value.min() < 0:
            raise MemjaxError(f"{name} must be non-negative, got {value.tolist()}")
        current[name] = jnp.asarray(value)
    return {**variables, "regularization": {"strengths": current}}



# ---- members over devices and groups ------------------------------------------------

def member_plan(fn: Callable, stacked: tuple, chunk: int | None = None, *, mesh=None,
                at_most: int | None = None) -> dict:
    """How `map_members(fn, chunk, mesh=mesh, at_most=at_most)` places stacked arguments
    [M, ...]: {"devices", "members_per_device", "member_chunk" (members per vmap group),
    "groups" (per device), "padded_members" (M rounded up to devices x chunk x groups)}."""
    from memjax import memory, sharding

    m = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    mesh = sharding.default_mesh(m) if mesh is None else mesh
    d = mesh.shape[sharding.AXIS]
    c = chunk or memory.plan_member_chunk(fn, stacked, devices=d, at_most=at_most)
    c = min(c, -(-m // d))
    total = sharding.padded_members(m, mesh, c)
    return {"devices": d, "members_per_device": -(-m // d), "member_chunk": c,
            "groups": total // (d * c), "padded_members": total}


def map_members(fn: Callable, chunk: int | None = None, *, mesh=None,
                light: tuple[Callable, Callable] | None = None,
                needs: tuple[bool, ...] | None = None, at_most: int | None = None) -> Callable:
    """Lift a per-member function to stacked arguments [M, ...]: members split over the
    devices of `mesh` (axis `members`; None: every device, at most one per member), and on
    each device vmap inside groups of `chunk` members, lax.map across groups.

    chunk None: planned from the device's memory and one member's size (memjax.memory): one
    vmap over a device's members when they fit; at_most (with chunk None): no more than
    that many (a planned convolution form's chunk, memjax.memory.ConvPlan), as memory
    allows. Every positional argument must carry the member axis; close over shared data.
    The member count is padded to a multiple of the devices (memjax.runner stores it so),
    then each device's block to a multiple of the chunk, by repeating the last member,
    whose extra results are dropped; so member i's result does not depend on M, the chunk
    or the device count, and no member moves between devices.

    light: (needed, light_fn), where light_fn gives the same results as fn for members
    that do not need fn's extra work (members without adversarial weight: no search).
    needed(*group) -> scalar bool says whether a group (stacked args) has a member that
    needs fn; a group that has none runs light_fn. It saves the work on one device; on
    several, vmap over the devices turns the choice into a select that computes both.
    needs (with light): which members need fn, known when tracing ([M] bools). On one
    device the members are then split: those that need fn run it, the others light_fn,
    each set grouped as above, and the results are put back in member order; so no member
    runs fn for another in its group.
    """
    from memjax import sharding

    def vmapped(*group):
        if light is None:
            return jax.vmap(fn)(*group)
        needed, light_fn = light
        return jax.lax.cond(needed(*group), jax.vmap(fn), jax.vmap(light_fn), *group)

    def run(*stacked):
        m = jax.tree_util.tree_leaves(stacked)[0].shape[0]
        mesh_ = sharding.default_mesh(m) if mesh is None else mesh
        if (light is not None and needs is not None and mesh_.shape[sharding.AXIS] == 1
                and 0 < sum(needs) < m):
            return _split(fn, light[1], np.asarray(needs, bool), chunk, mesh_, stacked,
                          at_most)
        placed = member_plan(fn, stacked, chunk, mesh=mesh_, at_most=at_most)
        if placed["devices"] == 1 and placed["member_chunk"] >= m:
            return vmapped(*stacked)
        return _on_groups(vmapped, stacked, placed, mesh_)

    return run


def _on_groups(vmapped: Callable, stacked: tuple, placed: dict, mesh):
    """map_members as `placed` (member_plan) says: each device's members (padded so that
    every member stays on the device that holds it) in groups, vmapped within a group and
    lax.map across groups; the results of the real members, in order."""
    from memjax import sharding

    m = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    d, c, groups = placed["devices"], placed["member_chunk"], placed["groups"]
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.AXIS))
    local = -(-m // d)

    def group(leaf):
        leaf = pad_members(leaf, d * local).reshape((d, local) + leaf.shape[1:])
        if groups * c > local:
            leaf = jnp.concatenate(
                [leaf, jnp.repeat(leaf[:, -1:], groups * c - local, axis=1)], axis=1)
        # [devices, groups, chunk, ...]
        leaf = leaf.reshape((d, groups, c) + leaf.shape[2:])
        return jax.lax.with_sharding_constraint(leaf, spec) if d > 1 else leaf

    def on_device(args):
        if groups == 1:
            return jax.tree_util.tree_map(lambda l: l[None], vmapped(*[
                jax.tree_util.tree_map(lambda l: l[0], a) for a in args]))
        return jax.lax.map(lambda g: vmapped(*g), args)

    grouped = jax.tree_util.tree_map(group, stacked)
    if d == 1:  # (no vmap over one device, which would make `light`'s choice a select)
        out = jax.tree_util.tree_map(lambda l: l[None], on_device(
            jax.tree_util.tree_map(lambda l: l[0], grouped)))
    else:
        out = jax.lax.with_sharding_constraint(jax.vmap(on_device)(grouped), spec)
    return jax.tree_util.tree_map(
        lambda l: l.reshape((d, groups * c) + l.shape[3:])[:, :local].reshape(
            (d * local,) + l.shape[3:])[:m], out)


def _split(fn: Callable, light_fn: Callable, needs: np.ndarray, chunk: int | None, mesh,
           stacked: tuple, at_most: int | None = None):
    """map_members on one device with the members that need fn apart from the others."""
    heavy, rest = np.flatnonzero(needs), np.flatnonzero(~needs)
    take = lambda idx: jax.tree_util.tree_map(lambda leaf: leaf[idx], stacked)
    out = (map_members(fn, chunk, mesh=mesh, at_most=at_most)(*take(heavy)),
           map_members(light_fn, chunk, mesh=mesh, at_most=at_most)(*take(rest)))
    order = np.argsort(np.concatenate([heavy, rest]))
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b])[order], *out)


def pad_members(leaf, total: int):
    """leaf [M, ...] padded to [total, ...] by repeating its last member (numpy or jax)."""
    m = leaf.shape[0]
    if total == m:
        return leaf
    xp = jnp if isinstance(leaf, jax.Array) else np
    return xp.concatenate([leaf, xp.repeat(leaf[-1:], total - m, axis=0)])
