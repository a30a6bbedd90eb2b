"""Each member's data order for an epoch (shared by the trainer and the unrolled metrics)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def epoch_order(key: jax.Array, num_examples: int, batch_size: int,
                example_mask: jax.Array | None = None,
                max_examples: int | None = None) -> tuple[jax.Array, jax.Array]:
    """A random order as [steps, batch] indices and weights; the last batch is padded with
    weight-0 copies of example 0, so every example is seen exactly once per epoch.

    example_mask: [N] bool, the member's own examples (dataset-size sweeps, subsets): they
    come first, in random order, and the rest get weight 0 (a whole weight-0 batch is no
    step). max_examples (static): no member's mask holds more, so the epoch stops after
    ceil(max_examples / batch_size) steps; the batches it cuts were weight 0 for every
    member, so the order of every example that is trained on is the same as without it.
    """
    used = num_examples if max_examples is None else min(max_examples, num_examples)
    steps = -(-used // batch_size)
    total = steps * batch_size
    order = jax.random.permutation(key, num_examples)
    weight = jnp.ones((num_examples,))
    if example_mask is not None:
        order = order[jnp.argsort(~example_mask[order], stable=True)]
        weight = (jnp.arange(num_examples) < jnp.sum(example_mask)).astype(weight.dtype)
    pad = max(total - num_examples, 0)
    order = jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)])[:total]
    weight = jnp.concatenate([weight, jnp.zeros((pad,))])[:total]
    return order.reshape(steps, batch_size), weight.reshape(steps, batch_size)
