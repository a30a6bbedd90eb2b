"""Each member's data order for an epoch (shared by the trainer and the unrolled metrics)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


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
