"""Per-member sweeps: width masks, dataset-size masks, noise masks, adversarial seam."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax.config import DataConfig, ModelConfig
from memjax.data import load_dataset
from memjax import keys
from memjax.ensemble import init_ensemble, init_width_ensemble, make_optimizer, narrow_params
from memjax.errors import MemjaxError
from memjax.evaluation import member_accuracy
from memjax.views import MemberView, NoiseSource, noise_masks, noise_source, size_masks
from memjax.models import as_float, build_network
from memjax.order import epoch_order
from memjax.train import make_train_epoch

EXAMPLE = jnp.zeros((1, 28, 28, 1))


@pytest.fixture(scope="module")
def data():
    d = load_dataset(DataConfig(train_size=160, validation_size=10))
    return d, jnp.asarray(d.train.x), jnp.asarray(d.train.y)


def _close(a, b, **tol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


def _member(tree, m):
    return jax.tree_util.tree_map(lambda l: l[m], tree)


def test_masked_member_trains_exactly_as_the_narrow_network(data):
    d, x, y = data
    model = ModelConfig(hidden=(16, 16))
    tx = make_optimizer(0.9)
    network, state = init_width_ensemble(model, 10, tx, EXAMPLE, seed=3, member_ids=[0, 1, 2],
                                         widths=[4, 16, 8], learning_rate=0.05,
                                         weight_decay=1e-3)
    epoch = make_train_epoch(network, tx, batch_size=32)
    for _ in range(2):
        state, metrics = epoch(state, 3, x, y)
    for m, width in ((0, 4), (2, 8)):
        narrow = build_network(ModelConfig(hidden=(width, width)), 10)
        alone = init_ensemble(narrow, tx, EXAMPLE, seed=3, member_ids=np.array([m]),
                              learning_rate=0.05, weight_decay=1e-3)
        # The same key gives the narrow network's own init (lecun fan-in of the narrow layer).
        alone_epoch = make_train_epoch(narrow, tx, batch_size=32)
        for _ in range(2):
            alone, alone_metrics = alone_epoch(alone, 3, x, y)
        big = _member(state.variables["params"], m)
        _close(narrow_params(big, width, model.hidden), _member(alone.variables["params"], 0),
               rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["train_loss"][m], alone_metrics["train_loss"][0],
                                   rtol=1e-5)
        # unused units never move off zero
        assert np.all(np.asarray(big["Dense_1"]["kernel"])[width:, :] == 0)
        assert np.all(np.asarray(big["Dense_0"]["kernel"])[:, width:] == 0)


def test_width_masks_reject_widths_beyond_the_model():
    with pytest.raises(MemjaxError, match="widths must be in"):
        init_width_ensemble(ModelConfig(hidden=(8, 8)), 10, make_optimizer(), EXAMPLE, seed=0,
                            member_ids=[0], widths=[16], learning_rate=0.1)


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
    from memjax.views import _NOISE_ORDER_STREAM

    first = np.random.default_rng([2, _NOISE_ORDER_STREAM]).permutation(1000)
    expected = np.zeros((6, 1000), bool)
    for m, p in enumerate(levels):
        expected[m, first[:round(p * 1000)]] = True
    np.testing.assert_array_equal(noise_masks(levels, 1000, 2, np.ones((6, 1000), bool)),
                                  expected)
    np.testing.assert_array_equal(noise_masks(levels, 1000, 2), expected)


def test_epoch_order_with_example_mask_visits_own_examples_once():
    mask = jnp.zeros(100, bool).at[jnp.arange(3, 100, 4)].set(True)
    order, weight = epoch_order(jax.random.key(0), 100, 8, mask)
    seen = np.asarray(order)[np.asarray(weight) > 0]
    np.testing.assert_array_equal(np.sort(seen), np.arange(3, 100, 4))
    full, _ = epoch_order(jax.random.key(0), 100, 8, jnp.ones(100, bool))
    np.testing.assert_array_equal(full, epoch_order(jax.random.key(0), 100, 8)[0])


def test_dataset_size_member_matches_reference_sgd_on_its_examples(data):
    """Momentum and weight decay: the empty batches past a member's data must not move it."""
    d, x, y = data
    network = build_network(ModelConfig(hidden=(8,)), 10)
    tx = make_optimizer(0.9)
    state = init_ensemble(network, tx, EXAMPLE, seed=5, member_ids=np.array([0, 1]),
                          learning_rate=0.05, weight_decay=0.01)
    params0 = _member(state.variables["params"], 0)
    masks = jnp.asarray(size_masks(np.array([40, 160]), 160, data_seed=0))
    epoch = make_train_epoch(network, tx, batch_size=32)
    state, metrics = epoch(state, 5, x, y, MemberView(example_mask=masks))
    # Independent reference: hand-written momentum SGD over the member's own batches only.
    order, weight = epoch_order(keys.order_key(5, 0, 0), 160, 32, masks[0])
    params, velocity, correct = params0, jax.tree_util.tree_map(jnp.zeros_like, params0), 0
    for idx, w in zip(np.asarray(order), np.asarray(weight)):
        idx = idx[w > 0]
        if len(idx) == 0:
            continue

        def loss(p):
            logits = network.apply({"params": p}, as_float(x[idx]))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean(), logits

        (_, logits), g = jax.value_and_grad(loss, has_aux=True)(params)
        correct += int(np.sum(np.argmax(logits, -1) == np.asarray(y[idx])))
        g = jax.tree_util.tree_map(lambda g, p: g + 0.01 * p, g, params)
        velocity = jax.tree_util.tree_map(lambda v, g: 0.9 * v + g, velocity, g)
        params = jax.tree_util.tree_map(lambda p, v: p - 0.05 * v, params, velocity)
    _close(_member(state.variables["params"], 0), params, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(metrics["train_accuracy"][0], correct / 40, rtol=1e-6)


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


def test_member_accuracy_is_over_own_examples_and_labels(data):
    d, x, y = data
    network = build_network(ModelConfig(hidden=(8,)), 10)
    state = init_ensemble(network, make_optimizer(), EXAMPLE, seed=0,
                          member_ids=np.arange(2), learning_rate=0.1)
    own = np.asarray(size_masks(np.array([40, 160]), 160, data_seed=0))
    noise = noise_source(d.train, 10, data_seed=0)
    labels = np.zeros((2, 160), bool)
    labels[0, :80] = True
    out = member_accuracy(network.apply, state.variables, x, y,
                          MemberView(example_mask=own, label_noise_mask=labels),
                          NoiseSource(y=jnp.asarray(noise.y)))
    for m in range(2):
        pred = np.argmax(network.apply(_member(state.variables, m), as_float(x)), -1)
        target = np.where(labels[m], noise.y, np.asarray(y))
        np.testing.assert_allclose(out["accuracy"][m], np.mean((pred == target)[own[m]]),
                                   rtol=1e-6)


def test_noise_masks_nested_and_deterministic():
    m = noise_masks(np.array([0.0, 0.2, 0.6, 1.0]), 50, data_seed=2)
    assert m.sum(1).tolist() == [0, 10, 30, 50]
    assert np.all(m[1] <= m[2])
    np.testing.assert_array_equal(m, noise_masks(np.array([0.0, 0.2, 0.6, 1.0]), 50, 2))


@pytest.mark.parametrize("kind", ["input", "label"])
def test_fully_noised_member_equals_training_on_the_noised_copy(data, kind):
    d, x, y = data
    noise = noise_source(d.train, 10, data_seed=0)
    network = build_network(ModelConfig(hidden=(8,)), 10)
    tx = make_optimizer()
    fresh = lambda: init_ensemble(network, tx, EXAMPLE, seed=1, member_ids=np.array([0, 1]),
                                  learning_rate=0.1)
    masks = jnp.asarray(noise_masks(np.array([1.0, 0.0]), 160, 0))
    view = (MemberView(input_noise_mask=masks) if kind == "input"
            else MemberView(label_noise_mask=masks))
    device_noise = jax.device_put(noise)
    epoch = make_train_epoch(network, tx, batch_size=32)
    mixed, metrics = epoch(fresh(), 1, x, y, view, device_noise)
    noisy_x = jnp.asarray(noise.x) if kind == "input" else x
    noisy_y = jnp.asarray(noise.y) if kind == "label" else y
    on_noise, _ = epoch(fresh(), 1, noisy_x, noisy_y)
    on_clean, _ = epoch(fresh(), 1, x, y)
    _close(_member(mixed.variables, 0), _member(on_noise.variables, 0), rtol=1e-5, atol=1e-6)
    _close(_member(mixed.variables, 1), _member(on_clean.variables, 1), rtol=1e-5, atol=1e-6)
    acc = member_accuracy(network.apply, mixed.variables, x, y, view, device_noise)["accuracy"]
    pred_noise = np.argmax(network.apply(_member(mixed.variables, 0), as_float(noisy_x)), -1)
    np.testing.assert_allclose(acc[0], np.mean(pred_noise == np.asarray(noisy_y)), rtol=1e-6)


def test_adversarial_training_seam(data):
    d, x, y = data
    network = build_network(ModelConfig(hidden=(8,)), 10)
    tx = make_optimizer()
    fresh = lambda: init_ensemble(network, tx, EXAMPLE, seed=2, member_ids=np.array([0, 1]),
                                  learning_rate=0.1)
    weights = MemberView(adversarial_weight=jnp.array([1.0, 0.0]))
    # A stand-in source: w = 1 trains only on its points, w = 0 only on the clean ones.
    flipped = lambda apply_fn, v, xb, yb, key: 1.0 - xb
    epoch = make_train_epoch(network, tx, batch_size=32, adversarial_examples=flipped)
    adv, _ = epoch(fresh(), 2, x, y, weights)
    plain = make_train_epoch(network, tx, batch_size=32)
    on_flipped, _ = plain(fresh(), 2, 1.0 - as_float(x), y)
    on_clean, _ = plain(fresh(), 2, x, y)
    _close(_member(adv.variables, 0), _member(on_flipped.variables, 0), rtol=1e-5, atol=1e-6)
    _close(_member(adv.variables, 1), _member(on_clean.variables, 1), rtol=1e-5, atol=1e-6)


def test_width_buckets_group_by_cost():
    from memjax.experiments.common import width_buckets

    widths = np.array([16, 512, 64, 4096, 128, 2048])
    buckets = width_buckets(widths, (128, 1024))
    assert [(w, rows.tolist()) for w, rows in buckets] == [(128, [0, 2, 4]), (512, [1]),
                                                           (4096, [3, 5])]


def test_adversarial_training_trains_on_lass_points(data):
    """w = 1 with LASS points (the runner's source) equals plain SGD on lass_search's points, searched with
    the step's ATTACK key from the parameters before the step (one step: batch = all)."""
    from memjax.metrics.lass import TRAINING_LASS, lass_adversarial_examples
    from memjax.keys import ATTACK, DATA
    from memjax.metrics import lass_search
    from memjax.order import epoch_order

    d, x, y = data
    x, y = x[:32], y[:32]
    network = build_network(ModelConfig(hidden=(8,)), 10)
    tx = make_optimizer()
    state = init_ensemble(network, tx, EXAMPLE, seed=4, member_ids=np.array([0]),
                          learning_rate=0.5)
    before = _member(state.variables, 0)
    epoch = make_train_epoch(network, tx, batch_size=32,
                             adversarial_examples=lass_adversarial_examples)
    trained, _ = epoch(state, 4, x, y, MemberView(adversarial_weight=jnp.array([1.0])))
    member_key = jax.random.fold_in(jax.random.key(4), 0)
    order, _ = epoch_order(jax.random.fold_in(jax.random.fold_in(member_key, DATA), 0), 32, 32)
    xb, yb = as_float(x[order[0]]), y[order[0]]
    attack = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(member_key, ATTACK), 0), 0)
    search_key, _ = jax.random.split(attack)
    points = lass_search(network.apply, before, xb, search_key, **TRAINING_LASS).points
    assert float(jnp.abs(points - xb).max()) <= TRAINING_LASS["radius"] + 1e-6

    def loss(p):
        logits = network.apply({**before, "params": p}, points)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    expected = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, before["params"],
                                      jax.grad(loss)(before["params"]))
    _close(_member(trained.variables, 0)["params"], expected, rtol=1e-5, atol=1e-6)
