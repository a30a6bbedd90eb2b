"""On-device augmentation (memjax.augment): its draws' statistics, each augmented image
against numpy on the padded source, its keys (seed, member, epoch, step), and a member
trained with it alone, in an ensemble and by a hand-written loop."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax import keys
from memjax.augment import Augmentation, augment, draws, input_fill
from memjax.config import DataConfig, ModelConfig, TrainConfig, override
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.errors import MemjaxError
from memjax.models import as_float, build_network
from memjax.order import epoch_order
from memjax.train import make_train_epoch

ALL = Augmentation(crop=2, flip=True, cutout=3)


def _chi_square(counts):
    counts = np.asarray(counts, np.float64).ravel()
    expected = counts.sum() / counts.size
    return ((counts - expected) ** 2 / expected).sum()


def test_draws_are_uniform_and_independent_per_example():
    n, h, w = 20000, 8, 9
    drawn = draws(jax.random.key(3), n, h, w, ALL)
    offset, flip, corner = (np.asarray(drawn[k]) for k in ("offset", "flip", "corner"))
    # flips: a fair coin per example (4 standard deviations)
    assert abs(flip.mean() - 0.5) < 4 * np.sqrt(0.25 / n)
    # crop offsets uniform over 0..2p in each axis and jointly (25 cells, 24 dof: the
    # chi-square's 1e-5 quantile is about 61)
    assert offset.min() == 0 and offset.max() == 4
    for axis in range(2):
        assert _chi_square(np.bincount(offset[:, axis], minlength=5)) < 30  # 4 dof
    assert _chi_square(np.bincount(offset[:, 0] * 5 + offset[:, 1], minlength=25)) < 61
    # cutout corners uniform over 0..H-s and 0..W-s: the square inside the image whole
    assert corner[:, 0].min() == 0 and corner[:, 0].max() == h - 3
    assert corner[:, 1].min() == 0 and corner[:, 1].max() == w - 3
    assert _chi_square(np.bincount(corner[:, 0], minlength=h - 2)) < 35  # 5 dof
    assert _chi_square(np.bincount(corner[:, 1], minlength=w - 2)) < 38  # 6 dof
    # the three draws are independent of one another
    both = np.bincount(offset[:, 0] * 2 + flip, minlength=10)
    assert _chi_square(both) < 50  # 9 dof, a uniform joint law
    # turning one augmentation off leaves the others' draws as they were
    alone = draws(jax.random.key(3), n, h, w, Augmentation(crop=2))
    np.testing.assert_array_equal(alone["offset"], offset)
    assert set(alone) == {"offset"}


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_each_image_is_the_padded_source_at_its_offset_flipped_and_cut(mode):
    """Exact against numpy: np.pad (reflect, as Page; or the fill, as ffcv's
    RandomTranslate), the H x W window at the drawn offset, flipped when drawn, the s x s
    square at the drawn corner set to the per-channel fill."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 7, 8, 3)).astype(np.float32)
    fill = (0.25, 0.5, 0.75)
    aug = Augmentation(crop=3, crop_mode=mode, flip=True, cutout=4)
    key = jax.random.key(9)
    out = np.asarray(jax.jit(lambda x, k: augment(x, k, aug, fill))(x, key))
    drawn = jax.device_get(draws(key, 6, 7, 8, aug))
    assert drawn["flip"].any() and not drawn["flip"].all()
    for i in range(6):
        if mode == "reflect":
            padded = np.pad(x[i], ((3, 3), (3, 3), (0, 0)), mode="reflect")
        else:
            padded = np.broadcast_to(np.asarray(fill, np.float32), (13, 14, 3)).copy()
            padded[3:10, 3:11] = x[i]
        oy, ox = drawn["offset"][i]
        want = padded[oy:oy + 7, ox:ox + 8]
        if drawn["flip"][i]:
            want = want[:, ::-1]
        want = want.copy()
        cy, cx = drawn["corner"][i]
        want[cy:cy + 4, cx:cx + 4] = fill
        np.testing.assert_array_equal(out[i], want)


def test_cutout_area_and_fill():
    x = jnp.ones((500, 10, 10, 2))
    out = np.asarray(augment(x, jax.random.key(1), Augmentation(cutout=4), (-1.0,)))
    cut = out == -1.0
    assert cut.sum((1, 2, 3)).tolist() == [4 * 4 * 2] * 500   # inside the image whole
    assert set(np.unique(out)) == {-1.0, 1.0}
    # without an input mean, the fill is 0
    assert input_fill(object()) == ()
    out = np.asarray(augment(x, jax.random.key(1), Augmentation(cutout=4)))
    assert (out == 0).sum() == 500 * 32
    # every example gets its own square (500 examples, 49 possible corners)
    corners = np.asarray(draws(jax.random.key(1), 500, 10, 10, Augmentation(cutout=4))["corner"])
    assert len({tuple(c) for c in corners}) > 40


def test_one_draw_per_seed_member_epoch_and_step():
    """The trainer's key: fold_in(epoch_stream(seed, member, AUGMENT, epoch), step). The
    same (seed, member, epoch, step) draws the same; any other member, epoch, step or seed
    draws otherwise; the stream is none of the member's other streams."""
    def drawn(seed, member, epoch, step, purpose=keys.AUGMENT):
        key = jax.random.fold_in(keys.epoch_stream(seed, member, purpose, epoch), step)
        d = draws(key, 64, 28, 28, ALL)
        return np.concatenate([d["offset"].ravel(), d["flip"].ravel(), d["corner"].ravel()])

    base = drawn(0, 3, 2, 5)
    np.testing.assert_array_equal(base, drawn(0, 3, 2, 5))
    for other in (drawn(0, 4, 2, 5), drawn(0, 3, 1, 5), drawn(0, 3, 2, 6), drawn(1, 3, 2, 5),
                  drawn(0, 3, 2, 5, keys.DROPOUT), drawn(0, 3, 2, 5, keys.ATTACK)):
        assert not np.array_equal(base, other)
    assert keys.AUGMENT not in (keys.INIT, keys.DATA, keys.DROPOUT, keys.ATTACK, keys.NOISE)


def test_settings_and_their_errors():
    train = override(override(override(TrainConfig(), "augment_flip", "true"),
                              "augment_crop", "4"), "augment_cutout", "8")
    assert Augmentation.of(train) == Augmentation(crop=4, flip=True, cutout=8)
    assert Augmentation.of(TrainConfig()) is None
    train.check()
    for field, value in (("augment_crop", -1), ("augment_cutout", -2),
                         ("augment_crop_mode", "zeros")):
        with pytest.raises(MemjaxError, match=field):
            TrainConfig(**{field: value}).check()
    with pytest.raises(MemjaxError, match="reflect padding 28"):
        augment(jnp.zeros((1, 28, 28, 1)), jax.random.key(0), Augmentation(crop=28))
    with pytest.raises(MemjaxError, match="cutout 29"):
        augment(jnp.zeros((1, 28, 28, 1)), jax.random.key(0), Augmentation(cutout=29))
    with pytest.raises(MemjaxError, match="channels"):
        augment(jnp.zeros((1, 8, 8, 3)), jax.random.key(0), Augmentation(cutout=2), (0.1, 0.2))


# ---- in the trainer ------------------------------------------------------------------

@pytest.fixture(scope="module")
def data():
    d = load_dataset(DataConfig(train_size=160, validation_size=10))
    return jnp.asarray(d.train.x), jnp.asarray(d.train.y)


def _train(network, ids, data, augmentation, *, epochs=2, momentum=0.9):
    x, y = data
    tx = make_optimizer(momentum)
    state = init_ensemble(network, tx, jnp.zeros((1, 28, 28, 1)), seed=7,
                          member_ids=np.asarray(ids), learning_rate=0.05)
    epoch = make_train_epoch(network, tx, batch_size=32, augmentation=augmentation)
    for _ in range(epochs):
        state, metrics = epoch(state, 7, x, y)
    return state, metrics


def _close(a, b, **tol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


def test_member_with_augmentation_follows_the_documented_keys(data):
    """One member against a plain loop: its order, then augment(member_batch, fold_in(
    epoch_stream(seed, member, AUGMENT, epoch), step)), then plain SGD."""
    x, y = data
    network = build_network(ModelConfig(hidden=(16,)), 10)
    state, _ = _train(network, [4], data, ALL, momentum=0.0)
    params = network.init(keys.init_key(7, 4), jnp.zeros((1, 28, 28, 1)))["params"]
    for epoch in range(2):
        order, weight = epoch_order(keys.order_key(7, 4, epoch), 160, 32)
        stream = keys.epoch_stream(7, 4, keys.AUGMENT, epoch)
        for t, (idx, w) in enumerate(zip(np.asarray(order), np.asarray(weight))):
            xb = augment(as_float(x[idx]), jax.random.fold_in(stream, t), ALL)
            xb, yb = xb[w > 0], y[idx][w > 0]

            def loss(p):
                logits = network.apply({"params": p}, xb)
                return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

            params = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params,
                                            jax.grad(loss)(params))
    _close(jax.tree_util.tree_map(lambda l: l[0], state.variables["params"]), params,
           rtol=5e-4, atol=5e-5)
    # and augmentation changed the training
    plain, _ = _train(network, [4], data, None, momentum=0.0)
    assert not np.allclose(plain.variables["params"]["Dense_0"]["kernel"],
                           state.variables["params"]["Dense_0"]["kernel"])


def test_member_alone_equals_the_member_in_an_ensemble(data):
    network = build_network(ModelConfig(hidden=(16, 16)), 10)
    together, metrics = _train(network, [0, 1, 2], data, ALL)
    for i in range(3):
        alone, alone_metrics = _train(network, [i], data, ALL)
        _close(jax.tree_util.tree_map(lambda l: l[i], together.variables),
               jax.tree_util.tree_map(lambda l: l[0], alone.variables), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(metrics["train_loss"][i], alone_metrics["train_loss"][0],
                                   rtol=1e-5)
