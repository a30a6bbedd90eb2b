"""Per-member views: dataset-size masks, noise masks and the batches they mix."""
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.errors import MemjaxError
from memjax.views import MemberView, NoiseSource, noise_masks, size_masks


def test_size_masks_are_nested_and_sized():
    masks = size_masks(np.array([10, 50, 100]), 100, data_seed=1)
    assert masks.sum(1).tolist() == [10, 50, 100]
    assert np.all(masks[0] <= masks[1]) and np.all(masks[1] <= masks[2])
    with pytest.raises(MemjaxError):
        size_masks(np.array([101]), 100, 0)


def test_noise_fractions_are_of_each_members_own_examples():
    """With dataset-size masks, a member at noise p has exactly round(p * n) of its own n
    examples noised (not p of all N, which gives p only on average), nested in p."""
    sizes = np.array([250, 250, 250, 500, 500, 1000])
    levels = np.array([0.2, 0.4, 0.8, 0.2, 0.4, 0.4])
    own = size_masks(sizes, 1000, data_seed=2)
    masks = noise_masks(levels, 1000, 2, own)
    assert not (masks & ~own).any()
    assert masks.sum(1).tolist() == np.rint(levels * sizes).astype(int).tolist()
    assert (masks[0] <= masks[1]).all() and (masks[1] <= masks[2]).all()
    assert (masks[3] <= masks[4]).all()
    # with every example its own (or no masks), the first round(p N) examples of the data
    # seed's order: the sets runs without size masks have always used
    # (stream 4 of the data seed: the noise order of memjax.keys.HOST_STREAMS, pinned so
    # that earlier runs' noise sets stay the same)
    first = np.random.default_rng([2, 4]).permutation(1000)
    expected = np.zeros((6, 1000), bool)
    for m, p in enumerate(levels):
        expected[m, first[:round(p * 1000)]] = True
    np.testing.assert_array_equal(noise_masks(levels, 1000, 2, np.ones((6, 1000), bool)),
                                  expected)
    np.testing.assert_array_equal(noise_masks(levels, 1000, 2), expected)


def test_member_batch_mixes_noise_per_example_index():
    """Masks are indexed by example (idx), not by position in the batch."""
    from memjax.views import member_batch

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 2, 2, 1), dtype=np.uint8)
    y = rng.integers(0, 10, 20).astype(np.int32)
    noise = NoiseSource(rng.uniform(size=(20, 2, 2, 1)).astype(np.float16),
                        rng.integers(0, 10, 20).astype(np.int32))
    inputs, labels = rng.uniform(size=20) < 0.5, rng.uniform(size=20) < 0.5
    idx = np.array([7, 3, 19, 0, 12, 5])
    xb, yb = member_batch(jnp.asarray(x), jnp.asarray(y), noise,
                          MemberView(input_noise_mask=inputs, label_noise_mask=labels),
                          jnp.asarray(idx))
    want_x = np.where(inputs[idx, None, None, None], noise.x[idx].astype(np.float32),
                      x[idx] / 255.0)
    np.testing.assert_allclose(xb, want_x, rtol=1e-6)
    np.testing.assert_array_equal(yb, np.where(labels[idx], noise.y[idx], y[idx]))


def test_noise_masks_nested_and_deterministic():
    m = noise_masks(np.array([0.0, 0.2, 0.6, 1.0]), 50, data_seed=2)
    assert m.sum(1).tolist() == [0, 10, 30, 50]
    assert np.all(m[1] <= m[2])
    np.testing.assert_array_equal(m, noise_masks(np.array([0.0, 0.2, 0.6, 1.0]), 50, 2))


def test_host_streams_are_the_data_seeds_numpy_streams_as_before():
    """Every host-side draw comes from memjax.keys.host_rng, with the stream numbers the
    data has always used (so noise sets, size masks and tracked examples stay the same)."""
    from memjax.keys import HOST_STREAMS, host_rng

    assert HOST_STREAMS == {"tracked examples": 0, "randY": 1, "randX": 2, "dataset size": 3,
                            "noise order": 4}
    assert len(set(HOST_STREAMS.values())) == len(HOST_STREAMS)
    for name, stream in HOST_STREAMS.items():
        np.testing.assert_array_equal(host_rng(7, name).permutation(50),
                                      np.random.default_rng([7, stream]).permutation(50))
