"""Epoch orders restricted to a member's own examples."""
import jax
import jax.numpy as jnp
import numpy as np

from memjax.order import epoch_order


def test_epoch_order_with_example_mask_visits_own_examples_once():
    mask = jnp.zeros(100, bool).at[jnp.arange(3, 100, 4)].set(True)
    order, weight = epoch_order(jax.random.key(0), 100, 8, mask)
    seen = np.asarray(order)[np.asarray(weight) > 0]
    np.testing.assert_array_equal(np.sort(seen), np.arange(3, 100, 4))
    full, _ = epoch_order(jax.random.key(0), 100, 8, jnp.ones(100, bool))
    np.testing.assert_array_equal(full, epoch_order(jax.random.key(0), 100, 8)[0])


def test_max_examples_cuts_only_batches_nobody_trains_on():
    mask = jnp.zeros(100, bool).at[jnp.arange(0, 100, 3)].set(True)  # 34 examples
    full, full_w = epoch_order(jax.random.key(1), 100, 8, mask)
    cut, cut_w = epoch_order(jax.random.key(1), 100, 8, mask, max_examples=34)
    assert cut.shape == (5, 8) and full.shape == (13, 8)
    np.testing.assert_array_equal(cut, full[:5])
    np.testing.assert_array_equal(cut_w, full_w[:5])
    assert float(full_w[5:].sum()) == 0.0
