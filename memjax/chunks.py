"""Processing examples in chunks: pad to a multiple of the chunk, lax.map, unpad."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def map_example_chunks(fn: Callable, arrays: tuple, chunk: int | None, *,
                       member_axis: bool = True):
    """Apply fn(*chunk_arrays) -> pytree of [M, c, ...] (member_axis) or [c, ...] to
    consecutive chunks of `c` examples of `arrays` (each [N, ...]) and stitch the results
    back to [M, N, ...] / [N, ...]. The last chunk is padded by repeating the last example,
    whose results are dropped. chunk None: all examples at once."""
    n = arrays[0].shape[0]
    if chunk is None or chunk >= n:
        return fn(*arrays)
    chunks = -(-n // chunk)
    pad = chunks * chunk - n

    def split(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
        return a.reshape((chunks, chunk) + a.shape[1:])

    out = jax.lax.map(lambda args: fn(*args), tuple(split(a) for a in arrays))

    def join(leaf):
        if member_axis:  # [chunks, M, c, ...] -> [M, N, ...]
            leaf = jnp.moveaxis(leaf, 0, 1)
            return leaf.reshape((leaf.shape[0], chunks * chunk) + leaf.shape[3:])[:, :n]
        return leaf.reshape((chunks * chunk,) + leaf.shape[2:])[:n]

    return jax.tree_util.tree_map(join, out)
