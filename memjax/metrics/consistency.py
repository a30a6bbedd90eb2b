"""Consistency across members (E1): per-example misclassification rates and the binomial
reference that independent, equally hard examples would give."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@jax.jit
def misclassification_rate(correct: jax.Array) -> jax.Array:
    """Fraction of members that misclassify each example.

    correct: [M, N] bool. Returns [N] float32 in [0, 1].
    """
    return 1.0 - jnp.mean(correct.astype(jnp.float32), axis=0)


@functools.partial(jax.jit, static_argnames=("members", "num_examples"))
def binomial_reference(key: jax.Array, mean_error: jax.Array, *, members: int,
                       num_examples: int) -> jax.Array:
    """Sorted draws of Binomial(members, mean_error) / members, one per example.

    What the per-example misclassification rates would look like if every example were
    misclassified independently with the same probability `mean_error`.
    Returns [num_examples] float32, ascending.
    """
    counts = jax.random.binomial(key, members, mean_error, shape=(num_examples,))
    return jnp.sort(counts / members).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("members", "num_classes"))
def class_binomial_reference(key: jax.Array, rate: jax.Array, labels: jax.Array, *,
                             members: int, num_classes: int) -> jax.Array:
    """Sorted draws of Binomial(members, p_c) / members, where p_c is the mean
    misclassification rate of the examples of example i's class c.

    The spread the label prior alone explains: on noise inputs the members learn the label
    frequencies and nothing example-specific, so rates follow this reference, not the
    global binomial one. rate: [N] (from `misclassification_rate`), labels: [N] int.
    Returns [N] float32, ascending.
    """
    totals = jax.ops.segment_sum(rate, labels, num_segments=num_classes)
    counts = jax.ops.segment_sum(jnp.ones_like(rate), labels, num_segments=num_classes)
    p = (totals / jnp.maximum(counts, 1.0))[labels]
    draws = jax.random.binomial(key, members, p, shape=rate.shape)
    return jnp.sort(draws / members).astype(jnp.float32)
