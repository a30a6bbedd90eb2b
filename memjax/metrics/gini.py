"""The Gini coefficient: how unequally a non-negative quantity is spread over examples."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("axis",))
def gini(values: jax.Array, axis: int = -1) -> jax.Array:
    """Gini coefficient of non-negative `values` along `axis`.

        G = sum_i sum_j |v_i - v_j| / (2 n sum_i v_i)

    0 when all values are equal; (n - 1) / n when one value of n holds everything.
    An all-zero slice gives 0. values: any shape, e.g. [M, N] per-example sensitivities.
    Returns values.shape without `axis`, float32 (unitless, in [0, 1)).

    >>> float(gini(jnp.array([0.0, 0.0, 0.0, 4.0])))
    0.75
    """
    v = jnp.sort(jnp.moveaxis(jnp.asarray(values, jnp.float32), axis, -1), axis=-1)
    n = v.shape[-1]
    rank = jnp.arange(1, n + 1, dtype=jnp.float32)
    total = v.sum(-1)
    # The sorted form of the mean absolute difference: O(n log n) instead of O(n^2).
    g = 2.0 * (rank * v).sum(-1) / (n * jnp.where(total > 0, total, 1.0)) - (n + 1.0) / n
    return jnp.where(total > 0, g, 0.0)
