"""Instantaneous loss sensitivity (PAPER.md E2): per-example input gradients dl_i/dx_i and
their norms, for every member of an ensemble.

Examples are independent (evaluation mode: no BatchNorm statistics, no dropout), so the
gradient of the *summed* loss with respect to the batch holds every per-example gradient:
one backward pass per chunk instead of a vmap over examples.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from memjax.ensemble import map_members
from memjax.chunks import map_example_chunks
from memjax.models import ApplyFn, as_float, computing_in
from memjax.sharding import everywhere

NORMS = {1: "L1", 2: "L2", float("inf"): "Linf"}


def per_example_norm(g: jax.Array, ord: float = 1) -> jax.Array:
    """Norm of each example's gradient g: [..., N, H, W, C] -> [..., N] over the pixel axes."""
    if ord not in NORMS:
        raise ValueError(f"ord must be 1, 2 or inf, got {ord!r}")
    axes = tuple(range(g.ndim - 3, g.ndim))
    if ord == 1:
        return jnp.abs(g).sum(axes)
    if ord == 2:
        return jnp.sqrt(jnp.square(g).sum(axes))
    return jnp.abs(g).max(axes)


def _member_input_gradients(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array) -> jax.Array:
    def summed_loss(xf):
        logits = apply_fn(variables, xf)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

    return jax.grad(summed_loss)(as_float(x))


def _over_ensemble(reduce: Callable, apply_fn, variables, x, y, chunk, member_chunk,
                   compute_dtype):
    apply_fn = computing_in(apply_fn, compute_dtype)

    def on_chunk(xb, yb):
        return map_members(lambda v: reduce(_member_input_gradients(apply_fn, v, xb, yb)),
                           member_chunk)(variables)

    m = jax.tree_util.tree_leaves(variables)[0].shape[0]
    return everywhere(map_example_chunks(on_chunk, (x, y), chunk), m)


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk", "member_chunk",
                                             "compute_dtype"))
def input_gradients(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array, *,
                    chunk: int | None = None, member_chunk: int | None = None,
                    compute_dtype: str | None = None) -> jax.Array:
    """Per-example input gradients of the cross-entropy loss, for every member.

    g[m, i] = d CE(f_m(x_i), y_i) / d x_i, in nats per unit pixel ([0, 1] pixel scale).

    apply_fn(variables_of_one_member, x[B, H, W, C]) -> logits [B, classes] (`Network.apply`).
    variables: stacked [M, ...]. x: [N, H, W, C] uint8 (scaled by 1/255) or float in [0, 1];
    y: [N] int. chunk: examples per backward pass (None: all); member_chunk: members per
    vmap group (None: all); compute_dtype "bfloat16": forward and backward passes in bf16
    (None: float32). Returns [M, N, H, W, C] float32.

    >>> import memjax.metrics as mm
    >>> g = mm.input_gradients(network.apply, state.variables, x, y, chunk=1024)  # doctest: +SKIP
    """
    return _over_ensemble(lambda g: g, apply_fn, variables, x, y, chunk, member_chunk,
                          compute_dtype)


@functools.partial(jax.jit, static_argnames=("apply_fn", "ord", "chunk", "member_chunk",
                                             "compute_dtype"))
def loss_sensitivity(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array, *,
                     ord: float = 1, chunk: int | None = None,
                     member_chunk: int | None = None,
                     compute_dtype: str | None = None) -> jax.Array:
    """Instantaneous loss sensitivity ||d CE(f_m(x_i), y_i) / d x_i||_ord for every member
    and example (PAPER.md E2, first definition).

    Same arguments as `input_gradients`; ord: 1 (default, the paper's), 2 or jnp.inf.
    The norm is taken inside each chunk, so the [M, N, H, W, C] gradients are never held
    at once. Returns [M, N] float32 (nats per unit pixel).
    """
    return _over_ensemble(lambda g: per_example_norm(g, ord), apply_fn, variables, x, y,
                          chunk, member_chunk, compute_dtype)
