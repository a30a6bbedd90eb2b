"""The paper's loss sensitivity (PAPER.md E2): g_x^t = ||dL_t/dx||_1, the gradient of the
step-t training loss with respect to every training input x, through the whole unrolled SGD
trajectory theta_0 -> theta_t: x acts on L_t through every step that trained on it. By
default (the paper's definition) that is all: L_t is evaluated with x held fixed, so an
example's own term in L_t adds nothing; `direct=True` adds that direct term.

One forward pass records the losses L_t at the chosen steps; reverse mode through the
lax.scan then gives dL_t/dx for all inputs at once, one backward sweep per chosen step
(vectorized over `cotangent_chunk` steps at a time). The SGD steps are rematerialized
(jax.checkpoint), so memory holds one parameter copy per step, not the activations.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from memjax import keys
from memjax.chunks import map_example_chunks
from memjax.ensemble import map_members
from memjax.metrics.sensitivity import per_example_norm
from memjax.models import ApplyFn, as_float
from memjax.order import epoch_order
from memjax.sharding import everywhere

LOSS_ON = ("batch", "full")


class UnrolledSensitivity(NamedTuple):
    """per_step: [M, K, N] g_x^t at the chosen steps `steps` [K].
    mean: [M, N] g-bar_x, the mean of per_step over the chosen steps.
    per_class: [M, C, C] g-bar_{i,j}: mean over chosen steps and over the training inputs x
      of class j of ||dL_t^(i)/dx||, where L_t^(i) is the class-i part of L_t (the loss terms
      of examples labelled i); None unless asked for.
    losses: [M, K] L_t at the chosen steps (nats). params: [M, ...] the parameters after the
      last step (the trajectory's end, to check against the trainer)."""

    per_step: jax.Array
    mean: jax.Array
    per_class: jax.Array | None
    steps: jax.Array
    losses: jax.Array
    params: dict


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size", "epochs",
                                             "shared_order"))
def trainer_order(seed: int, member_ids: jax.Array, *, num_examples: int, batch_size: int,
                  epochs: int, shared_order: bool = False) -> tuple[jax.Array, jax.Array]:
    """The minibatch order the trainer (`memjax.train`, keys from `memjax.keys`) gives each member over `epochs`
    epochs, as (order [M, T, B] int32, weight [M, T, B] float32), T = epochs x
    ceil(num_examples / batch_size): pass it to `unrolled_loss_sensitivity` to follow the
    trainer's own trajectory. member_ids: [M] int."""
    def member(member_id):
        order, weight = jax.vmap(lambda e: epoch_order(
            keys.order_key(seed, member_id, e, shared_order), num_examples, batch_size))(
            jnp.arange(epochs))
        return order.reshape(-1, batch_size), weight.reshape(-1, batch_size)

    return jax.vmap(member)(jnp.asarray(member_ids))


def _one_member(apply_fn, variables, order, weight, lr, x, y, *, every, loss_on, direct, ord,
                num_classes, cotangent_chunk):
    # Without the direct term g_x^0 is 0 (nothing has trained yet): the grid starts at `every`.
    skip = 0 if direct else every
    head = (order[:skip], weight[:skip])
    order, weight = order[skip:], weight[skip:]
    steps, batch = order.shape
    k = -(-steps // every)
    pad = k * every - steps
    # Zero-weight padding steps are exact no-ops (zero loss, zero gradient).
    order = jnp.concatenate([order, jnp.zeros((pad, batch), order.dtype)]).reshape(k, every, batch)
    weight = jnp.concatenate([weight, jnp.zeros((pad, batch), weight.dtype)]).reshape(k, every, batch)
    classes = num_classes or 1

    def class_terms(params, xs, idx, w):
        """Weighted mean loss of the examples idx, split by class: [classes]."""
        logits = apply_fn({**variables, "params": params}, xs[idx])
        terms = optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]) * w
        by_class = (jax.ops.segment_sum(terms, y[idx], num_segments=classes)
                    if num_classes else terms.sum()[None])
        return by_class / jnp.maximum(w.sum(), 1.0)

    def losses(xs):
        seen = xs if direct else jax.lax.stop_gradient(xs)  # the inputs L_t is evaluated on

        @jax.checkpoint
        def sgd_step(params, inputs):
            idx, w = inputs
            grads = jax.grad(lambda p: class_terms(p, xs, idx, w).sum())(params)
            return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), None

        @jax.checkpoint
        def segment(params, inputs):
            idx, w = inputs  # [every, batch]: L_t at theta_t, then `every` SGD steps
            if loss_on == "batch":
                loss = class_terms(params, seen, idx[0], w[0])
            else:
                loss = class_terms(params, seen, jnp.arange(y.shape[0]), jnp.ones(y.shape[0]))
            params, _ = jax.lax.scan(sgd_step, params, (idx, w))
            return params, loss

        params, _ = jax.lax.scan(sgd_step, variables["params"], head)
        params, loss = jax.lax.scan(segment, params, (order, weight))
        return loss, params  # [K, classes]

    loss, vjp, params = jax.vjp(losses, as_float(x), has_aux=True)
    per_step, per_class = _cotangent_norms(vjp, y, k, num_classes, ord, cotangent_chunk)
    return per_step, per_class, loss.sum(-1), params


def _cotangent_norms(vjp, y, k: int, num_classes: int | None, ord, cotangent_chunk: int):
    """Per chosen step the norm of dL_t/dx for every input ([k, N]) and, with num_classes,
    the per-class matrix [C (loss class i), C (input class j)]: one backward sweep per
    cotangent, `cotangent_chunk` of them vectorized at a time."""
    classes = num_classes or 1
    # Cotangents: per chosen step, the total loss, then (per class) each class term.
    eye = jnp.eye(k, dtype=jnp.float32)
    cots = [eye[:, :, None] * jnp.ones((classes,))]
    if num_classes:
        cots.append((eye[:, None, :, None] * jnp.eye(classes)[None, :, None, :]).reshape(
            k * classes, k, classes))
    cots = jnp.concatenate(cots)
    norms = map_example_chunks(jax.vmap(lambda ct: per_example_norm(vjp(ct)[0], ord)), (cots,),
                               min(cotangent_chunk, cots.shape[0]), member_axis=False)
    per_step = norms[:k]  # [k, N]
    per_class = None
    if num_classes:
        by_loss_class = norms[k:].reshape(k, classes, -1).mean(0)  # [C(loss i), N]
        counts = jax.ops.segment_sum(jnp.ones(y.shape[0]), y, num_segments=classes)
        per_class = jax.ops.segment_sum(by_loss_class.T, y, num_segments=classes).T / \
            jnp.maximum(counts, 1.0)  # [i, j]
    return per_step, per_class


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "every", "loss_on", "direct", "ord", "num_classes", "cotangent_chunk",
    "member_chunk"))
def unrolled_loss_sensitivity(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array,
                              order: jax.Array, weight: jax.Array | None = None, *,
                              learning_rate: float | jax.Array, every: int = 1,
                              loss_on: str = "full", direct: bool = False, ord: float = 1,
                              num_classes: int | None = None, cotangent_chunk: int = 16,
                              member_chunk: int | None = None) -> UnrolledSensitivity:
    """Loss sensitivity through the unrolled SGD trajectory, for every member.

    Each member m trains from variables[m] by plain SGD (no momentum or weight decay) on
    minibatches order[m, s] (weights weight[m, s]): theta_{s+1} = theta_s - lr * grad of the
    weighted mean cross-entropy of batch s, exactly as `memjax.train.make_train_epoch` does.
    At the chosen steps t = every, 2 * every, ... (< T), L_t is the training loss at
    theta_t: on all N examples (loss_on="full", the default) or on batch t only
    (loss_on="batch": the loss SGD takes at step t), and
        g_x^t = || dL_t / dx ||_ord   for every training input x,
    the derivative taken through theta_t's dependence on x along the trajectory (PAPER.md
    E2: x acts on L_t only as an earlier training example). direct=True also counts x's
    own term in L_t (the instantaneous dl(x)/dx, weighted as in L_t); the chosen steps then
    start at t = 0, where that term is all there is.

    apply_fn: `Network.apply` of a model without mutable state or dropout (the paper's MLP).
    variables: stacked [M, ...]; only variables["params"] are trained.
    x: [N, H, W, C] uint8 or float in [0, 1] (gradients per unit pixel on that scale);
    y: [N] int labels. order: [M, T, B] int32 example indices; weight: [M, T, B] float
    (None: ones). learning_rate: scalar or [M].
    num_classes: set to also return the per-class matrix (PAPER.md's g-bar_{i,j}); it
    costs num_classes more backward sweeps. cotangent_chunk: chosen steps differentiated
    together (memory: cotangent_chunk x N x H x W x C floats per member).
    Returns an UnrolledSensitivity ([M, K, N] per step, [M, N] mean, ...), K = the number of
    chosen steps: ceil((T - every) / every), or ceil(T / every) with direct=True.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    first = 0 if direct else every
    if order.shape[1] <= first:
        raise ValueError(f"no chosen step: the trajectory has {order.shape[1]} steps and "
                         f"the first chosen step is t = every = {every}")
    m = order.shape[0]
    weight = jnp.ones(order.shape, jnp.float32) if weight is None else weight
    lr = jnp.broadcast_to(jnp.asarray(learning_rate, jnp.float32), (m,))
    fn = functools.partial(_one_member, apply_fn, x=x, y=y, every=every, loss_on=loss_on,
                           direct=direct, ord=ord, num_classes=num_classes,
                           cotangent_chunk=cotangent_chunk)
    per_step, per_class, losses, params = map_members(
        lambda v, o, w, l: fn(v, o, w, l), member_chunk)(variables, order, weight, lr)
    steps = jnp.arange(first, order.shape[1], every)
    per_step, per_class, losses, params = everywhere((per_step, per_class, losses, params), m)
    return UnrolledSensitivity(per_step, per_step.mean(1), per_class, steps, losses, params)
