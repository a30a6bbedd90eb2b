"""Evaluation of every member on any examples: correctness, loss, predictions, and each
member's accuracy on its own view of a training set. Jitted, computed on the device, with
examples in chunks (`memjax.chunks`) and members in planned groups (`map_members`)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from memjax import sharding
from memjax.chunks import map_example_chunks
from memjax.ensemble import map_members
from memjax.models import ApplyFn, as_float, computing_in
from memjax.views import MemberView, NoiseSource


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk", "member_chunk", "mesh"))
def evaluate(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array, *, chunk: int = 2048,
             member_chunk: int | None = None, mesh=None) -> dict[str, jax.Array]:
    """Per-member, per-example correctness and loss, computed on the device.

    apply_fn(variables_of_one_member, x[B, ...]) -> logits [B, classes].
    variables: stacked [M, ...]. x: [N, H, W, C] uint8 or float in [0, 1]; y: [N] int.
    Returns {"correct": [M, N] bool, "loss": [M, N] float32 (cross-entropy, nats)}.
    Examples are processed `chunk` at a time, members in groups of `member_chunk` (None:
    planned) split over `mesh` (None: every device).
    """
    def on_chunk(xb, yb):
        def member(v):
            logits = apply_fn(v, as_float(xb))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            return jnp.argmax(logits, -1) == yb, loss

        return map_members(member, member_chunk, mesh=mesh)(variables)

    correct, loss = map_example_chunks(on_chunk, (x, y), chunk)
    # every host gets every member's results (one run dir)
    return sharding.everywhere({"correct": correct, "loss": loss}, correct.shape[0], mesh)


def evaluation_program(apply_fn: ApplyFn, train, mesh=None):
    """(variables, x, y) -> `evaluate`'s results, as a run evaluates: in the training's
    compute precision (train.compute_dtype), train.eval_chunk examples and
    train.member_chunk members at a time, on `mesh`. The Runner evaluates with it and
    memjax.cost counts it, so the plan counts the program that runs. train.eval_flip: each
    member's logits are those averaged over x and x flipped left-right (`flip_averaged`),
    before the loss and the correctness."""
    apply = computing_in(apply_fn, train.compute_dtype)
    if train.eval_flip:
        apply = functools.partial(flip_averaged, apply)
    return functools.partial(evaluate, apply, chunk=train.eval_chunk,
                             member_chunk=train.member_chunk, mesh=mesh)


def flip_averaged(apply_fn: ApplyFn, variables, x: jax.Array) -> jax.Array:
    """Flip test-time augmentation: (apply_fn(x) + apply_fn(x flipped left-right)) / 2 for
    x [B, H, W, C], float32; the loss is that of the averaged logits. Page's cifar10-fast
    (forward_tta([identity, flip_lr]): the mean of the logits, then the loss) does the
    same; ffcv's CIFAR example (lr_tta) sums the two outputs, whose argmax is the same."""
    return (apply_fn(variables, x).astype(jnp.float32)
            + apply_fn(variables, x[:, :, ::-1, :]).astype(jnp.float32)) / 2


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk", "member_chunk", "mesh"))
def predict(apply_fn: ApplyFn, variables, x: jax.Array, *, chunk: int = 2048,
            member_chunk: int | None = None, mesh=None) -> jax.Array:
    """Predicted classes [M, N] int32 of every member on x [N, H, W, C] (evaluation mode)."""
    out = map_example_chunks(lambda xb: map_members(
        lambda v: jnp.argmax(apply_fn(v, as_float(xb)), -1).astype(jnp.int32),
        member_chunk, mesh=mesh)(variables), (x,), chunk)
    return sharding.everywhere(out, out.shape[0], mesh)


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk", "member_chunk", "mesh"))
def probabilities(apply_fn: ApplyFn, variables, x: jax.Array, *, chunk: int = 2048,
                  member_chunk: int | None = None, mesh=None) -> jax.Array:
    """Softmax probabilities [M, N, classes] float32 of every member on x [N, H, W, C]
    (evaluation mode)."""
    out = map_example_chunks(lambda xb: map_members(
        lambda v: jax.nn.softmax(apply_fn(v, as_float(xb)).astype(jnp.float32), -1),
        member_chunk, mesh=mesh)(variables), (x,), chunk)
    return sharding.everywhere(out, out.shape[0], mesh)


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk", "member_chunk", "mesh"))
def predict_own(apply_fn: ApplyFn, variables, x: jax.Array, noised_x: jax.Array,
                noised: jax.Array, *, chunk: int = 2048, member_chunk: int | None = None,
                mesh=None) -> jax.Array:
    """Predicted classes [M, N] int32 of every member on its own inputs: noised_x [N, ...]
    where noised [M, N] is set, else x [N, ...]; one forward pass per member and example."""
    def on_chunk(xb, nb, noised_t):
        def member(v, m):
            shape = (-1,) + (1,) * (xb.ndim - 1)
            inputs = jnp.where(m.reshape(shape), as_float(nb), as_float(xb))
            return jnp.argmax(apply_fn(v, inputs), -1).astype(jnp.int32)

        return map_members(member, member_chunk, mesh=mesh)(variables, noised_t.T)

    out = map_example_chunks(on_chunk, (x, noised_x, noised.T), chunk)
    return sharding.everywhere(out, out.shape[0], mesh)


def member_accuracy(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array,
                    view: MemberView | None = None, noise: NoiseSource | None = None, *,
                    chunk: int = 2048, member_chunk: int | None = None,
                    mesh=None) -> dict[str, jax.Array]:
    """Each member's accuracy on its own view of a training set (its inputs, its labels, its
    examples). Returns {"correct": [M, N] bool, "accuracy": [M] float32 in [0, 1] over the
    member's examples}. One forward pass over each member's own inputs."""
    view = view or MemberView()
    kw = dict(chunk=chunk, member_chunk=member_chunk, mesh=mesh)
    pred = (predict(apply_fn, variables, x, **kw) if view.input_noise_mask is None else
            predict_own(apply_fn, variables, x, noise.x, view.input_noise_mask, **kw))
    labels = y[None, :]
    if view.label_noise_mask is not None:
        labels = jnp.where(view.label_noise_mask, noise.y[None, :], labels)
    correct = pred == labels
    mask = (jnp.ones_like(correct) if view.example_mask is None else view.example_mask)
    accuracy = jnp.sum(correct & mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1)
    return {"correct": correct, "accuracy": accuracy.astype(jnp.float32)}
