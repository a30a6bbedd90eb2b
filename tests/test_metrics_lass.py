"""LASS on a linear classifier whose exact L_inf distance to the decision boundary is known
(|w.x + b| / ||w||_1), and the critical sample ratio."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.config import ModelConfig
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.metrics import PAPER_LASS, critical_sample_ratio, lass, lass_search
from memjax.models import build_network

D = 16


def linear(variables, x):
    """Two classes: logit difference w.x + b."""
    score = x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]
    return jnp.stack([jnp.zeros_like(score), score], -1)


@pytest.fixture(scope="module")
def problem():
    """Two members; examples placed at chosen L_inf distances from each member's boundary."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, D)).astype(np.float32)
    b = np.array([0.1, -0.2], np.float32)
    base = rng.uniform(-1, 1, size=(12, D)).astype(np.float32)
    # distances in units of the radius: 0.4 and 0.7 are inside it, 1.3 and 2 outside
    factors = np.array([0.4, 0.7, 1.3, 2.0, 0.4, 0.7, 1.3, 2.0, 0.4, 1.3, 0.7, 2.0], np.float32)
    sides = np.where(np.arange(12) % 2 == 0, 1.0, -1.0)
    radius = 0.05
    xs = []
    for m in range(2):
        # move each base point along w until its score is side * factor * radius * ||w||_1
        score = base @ w[m] + b[m]
        target = sides * factors * radius * np.abs(w[m]).sum()
        xs.append(base + ((target - score) / (w[m] @ w[m]))[:, None] * w[m])
    return {"w": w, "b": b}, np.stack(xs).reshape(2, 12, 4, 4, 1), factors, radius


def _search(variables, x, radius, **kw):
    args = dict(radius=radius, step_size=radius / 4, noise_scale=radius / 8,
                max_iterations=30, clip=None)
    args.update(kw)
    return lass_search(linear, variables, x, jax.random.key(1), **args)


def test_critical_exactly_when_boundary_is_within_radius(problem):
    variables, xs, factors, radius = problem
    for m in range(2):
        v = jax.tree_util.tree_map(lambda l: l[m], variables)
        distance = np.abs(xs[m].reshape(12, -1) @ v["w"] + v["b"]) / np.abs(v["w"]).sum()
        np.testing.assert_allclose(distance, factors * radius, rtol=1e-4)
        found = jax.jit(_search, static_argnames=("max_iterations",))(v, xs[m], radius)
        np.testing.assert_array_equal(found.critical, factors < 1)
        # a found point is inside the box and really changes the prediction
        points = np.asarray(found.points)
        assert np.abs(points - xs[m]).max() <= radius + 1e-6
        before = np.argmax(linear(v, xs[m]), -1)
        after = np.argmax(linear(v, points), -1)
        np.testing.assert_array_equal(after != before, factors < 1)
        # sign steps of radius/4 need at least factor*4 steps: 2 for 0.4, 3 for 0.7
        its = np.asarray(found.iterations)
        assert (its[factors == 0.4] >= 2).all() and (its[factors == 0.7] >= 3).all()
        assert (its[factors > 1] == 30).all()


def test_plain_pgd_and_zero_radius(problem):
    variables, xs, factors, radius = problem
    v = jax.tree_util.tree_map(lambda l: l[0], variables)
    pgd = _search(v, xs[0], radius, noise_scale=0.0)
    np.testing.assert_array_equal(pgd.critical, factors < 1)
    # without noise, sign steps reach the boundary at exactly ceil(factor * 4) iterations
    np.testing.assert_array_equal(np.asarray(pgd.iterations)[factors < 1],
                                  np.ceil(factors[factors < 1] * 4 - 1e-6).astype(int))
    none = _search(v, xs[0], 0.0)
    assert not np.asarray(none.critical).any()
    np.testing.assert_allclose(none.points, xs[0])


def test_early_stop_when_every_example_is_decided(problem):
    variables, xs, factors, radius = problem
    v = jax.tree_util.tree_map(lambda l: l[0], variables)
    inside = factors < 1
    found = _search(v, xs[0][inside], radius, max_iterations=1000)
    assert found.critical.all()
    assert int(found.iterations.max()) < 20  # stopped long before 1000


def test_ensemble_lass_member_keys_chunks_and_csr(problem):
    variables, xs, factors, radius = problem
    x = xs[0]
    args = dict(radius=radius, step_size=radius / 4, noise_scale=radius / 8,
                max_iterations=30, clip=None)
    key = jax.random.key(7)
    whole = lass(linear, variables, x, key, **args)
    chunked = lass(linear, variables, x, key, member_chunk=1, chunk=5, **args)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
    assert whole.critical.shape == (2, 12) and whole.points.shape == (2, 12, 4, 4, 1)
    # member 1 alone (its own id) gives the same search as inside the ensemble
    alone = lass(linear, jax.tree_util.tree_map(lambda l: l[1:], variables), x, key,
                 member_ids=jnp.array([1]), **args)
    np.testing.assert_array_equal(alone.points[0], whole.points[1])
    np.testing.assert_array_equal(whole.critical[0], factors < 1)
    csr = critical_sample_ratio(whole.critical)
    np.testing.assert_allclose(csr[0], np.mean(factors < 1))
    zero = lass(linear, variables, x, key, **{**args, "radius": 0.0})
    np.testing.assert_array_equal(critical_sample_ratio(zero.critical), [0.0, 0.0])


def test_deterministic_and_clipped_on_a_network():
    network = build_network(ModelConfig(hidden=(16,)), 10)
    state = init_ensemble(network, make_optimizer(), jnp.zeros((1, 6, 6, 1)), seed=0,
                          member_ids=np.arange(3), learning_rate=0.1)
    x = np.random.default_rng(0).integers(0, 256, (20, 6, 6, 1), dtype=np.uint8)
    big = dict(PAPER_LASS, radius=0.2, step_size=0.05, noise_scale=0.02, max_iterations=20)
    a = lass(network.apply, state.variables, x, jax.random.key(3), **big)
    b = lass(network.apply, state.variables, x, jax.random.key(3), **big)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    c = lass(network.apply, state.variables, x, jax.random.key(4), **big)
    assert not np.array_equal(a.points, c.points)
    xf = x / 255.0
    assert float(a.points.min()) >= 0.0 and float(a.points.max()) <= 1.0
    assert np.abs(np.asarray(a.points) - xf).max() <= 0.2 + 1e-6
    assert 0 < float(critical_sample_ratio(a.critical).mean()) < 1


def _reference_lass(apply, x, key, radius, step_size, noise_scale, iterations):
    """The search as PAPER.md E5 states it, one iteration at a time on the host: the
    gradient at the current point, a noisy sign step clipped to the box, then a separate
    forward pass that checks the prediction. Independent of lass_search's fused loop."""
    x = np.asarray(x, np.float32) / 255.0
    n = x.shape[0]
    predicted = np.argmax(apply(x), -1)
    low, high = np.maximum(x - radius, 0.0), np.minimum(x + radius, 1.0)

    def ce(p, label):
        logits = apply(p)
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), label[:, None], 1))

    points, critical = x.copy(), np.zeros(n, bool)
    its = np.zeros(n, np.int32)
    for i in range(iterations):
        if critical.all():
            break
        grad = np.asarray(jax.grad(ce)(points, predicted))
        noise = np.stack([np.asarray(jax.random.normal(
            jax.random.fold_in(jax.random.fold_in(key, e), i), x.shape[1:])) for e in range(n)])
        proposal = np.clip(points + step_size * np.sign(grad) + noise_scale * noise, low, high)
        flipped = np.argmax(apply(proposal), -1) != predicted
        active = ~critical
        points[active] = proposal[active]
        its[active] = i + 1
        critical |= active & flipped
    return critical, points, its


def test_lass_search_matches_the_step_by_step_reference():
    network = build_network(ModelConfig(hidden=(32, 32)), 10)
    state = init_ensemble(network, make_optimizer(), jnp.zeros((1, 6, 6, 1)), seed=0,
                          member_ids=np.arange(1), learning_rate=0.1)
    v = jax.tree_util.tree_map(lambda l: l[0], state.variables)
    x = np.random.default_rng(1).integers(0, 256, (24, 6, 6, 1), dtype=np.uint8)
    args = dict(radius=0.03, step_size=0.01, noise_scale=0.005)
    key = jax.random.key(5)
    found = jax.jit(lambda v, x: lass_search(network.apply, v, x, key, max_iterations=12,
                                             **args))(v, x)
    critical, points, its = _reference_lass(lambda p: network.apply(v, p), x, key,
                                            iterations=12, **args)
    assert 0 < critical.sum() < len(critical)  # some flip, some never do: both paths tested
    np.testing.assert_array_equal(found.critical, critical)
    np.testing.assert_array_equal(found.iterations, its)
    np.testing.assert_allclose(found.points, points, atol=1e-6)


def test_bf16_search_decides_like_float32(problem):
    """Examples at 0.4-0.7 and 1.3-2 radii from the boundary: far enough that bf16 forward
    and backward passes must decide every one as float32 does."""
    variables, xs, factors, radius = problem
    args = dict(radius=radius, step_size=radius / 4, noise_scale=radius / 8,
                max_iterations=30, clip=None)
    found = lass(linear, variables, xs[0], jax.random.key(7), compute_dtype="bfloat16", **args)
    np.testing.assert_array_equal(found.critical[0], factors < 1)
    assert found.points.dtype == jnp.float32
    assert np.abs(np.asarray(found.points[0]) - xs[0]).max() <= radius + 1e-6


def test_inputs_outside_the_clip_range_stay_within_the_radius():
    """Unclipped Gaussian inputs (randX) have pixels outside [0, 1]: each point stays within
    radius of x, and inside [0, 1] where x is."""
    network = build_network(ModelConfig(hidden=(16,)), 10)
    state = init_ensemble(network, make_optimizer(), jnp.zeros((1, 6, 6, 1)), seed=0,
                          member_ids=np.arange(2), learning_rate=0.1)
    x = np.random.default_rng(0).normal(0.5, 0.6, (30, 6, 6, 1)).astype(np.float32)
    assert (x < 0).any() and (x > 1).any()
    r = 0.05
    found = lass(network.apply, state.variables, x, jax.random.key(0), radius=r,
                 step_size=0.02, noise_scale=0.01, max_iterations=20)
    points = np.asarray(found.points)
    assert np.abs(points - x).max() <= r + 1e-6
    inside = (x >= 0) & (x <= 1)
    assert (points[:, inside] >= -1e-7).all() and (points[:, inside] <= 1 + 1e-7).all()
    assert (points != x).any()  # the search moved


def _authors_find(apply_fn, variables, X, key, a, b, r, iter_max, bs, threshold=20):
    """A line-by-line port of lass.find in the authors' lass_tf.py ("Code from Devansh
    Arpit", xingjunm/dimensionality-driven-learning): batches of bs, every point moved at
    every iteration (critical or not), no clip, stop after an iteration that adds fewer than
    `threshold` critical samples. Its np.random.randn noise is replaced by the draws memjax
    makes for example n at iteration i, so that both searches see the same noise."""
    n = X.shape[0]
    predict = lambda x: np.asarray(apply_fn(variables, jnp.asarray(x)))
    # (the Keras model's output is the softmax)
    Y_pred = np.concatenate([np.asarray(jax.nn.softmax(predict(X[k:k + bs])))
                             for k in range(0, n, bs)])
    Y_pred = (Y_pred // np.max(Y_pred, axis=1)[:, None]).astype(np.float32)
    Y_pred_vec = np.argmax(Y_pred, axis=1)

    def grad_fn(x, y):  # K.gradients(K.mean(categorical_crossentropy), x)
        loss = lambda x: -jnp.mean(jnp.sum(y * jax.nn.log_softmax(apply_fn(variables, x)), 1))
        return np.asarray(jax.grad(loss)(jnp.asarray(x)))

    keys = [jax.random.fold_in(key, i) for i in range(n)]
    X_adv = 1. * X
    adv_ind = np.zeros(n, bool)
    adv_num_old, i, converged = 0, 0, False
    while i < iter_max and not converged:
        noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, i), X.shape[1:]))
                          for k in keys])
        i += 1
        pred_adv = []
        for k in range(0, n, bs):
            s = slice(k, k + bs)
            X_adv[s] += a * np.sign(grad_fn(X_adv[s], Y_pred[s])) + b * noise[s]
            diff = X_adv[s] - X[s]
            ind = np.abs(diff) > r
            X_adv[s][ind] = X[s][ind] + r * np.sign(diff[ind])
            pred_adv.extend(np.argmax(predict(X_adv[s]), axis=1))
        adv_ind = adv_ind + (Y_pred_vec != np.asarray(pred_adv))
        adv_num_new = np.sum(adv_ind)
        if adv_num_new - adv_num_old < threshold:
            converged = True
        adv_num_old = adv_num_new
    return adv_ind, i


@pytest.mark.parametrize("noise_scale", [0.0, 0.004])
def test_authors_protocol_matches_a_port_of_their_loop(noise_scale):
    """PROTOCOLS["authors"] (no clip, stop below 20 new critical samples per iteration) finds
    the same critical samples as the port, and stops at the same iteration."""
    from memjax.data import load_dataset
    from memjax.config import DataConfig
    from memjax.metrics import PROTOCOLS

    network = build_network(ModelConfig(hidden=(32,)), 10)
    state = init_ensemble(network, make_optimizer(), np.zeros((1, 28, 28, 1)), seed=1,
                          member_ids=np.array([0]), learning_rate=0.1)
    variables = jax.tree.map(lambda v: v[0], state.variables)
    x = load_dataset(DataConfig(validation_size=300)).validation.x.astype(np.float32) / 255
    key = jax.random.key(4)
    settings = dict(radius=0.02, step_size=0.004, noise_scale=noise_scale, max_iterations=40)
    ours = lass_search(network.apply, variables, x, key, **settings, **PROTOCOLS["authors"])
    theirs, iterations = _authors_find(network.apply, variables, x.copy(), key,
                                       a=settings["step_size"], b=noise_scale, r=0.02,
                                       iter_max=40, bs=100)
    assert 20 <= theirs.sum() < 300 and 1 < iterations < 40  # the rule, not the limit, ended it
    np.testing.assert_array_equal(np.asarray(ours.critical), theirs)
    assert int(ours.iterations.max()) == iterations


def test_validation_search_draws_or_takes_the_first(problem):
    """authors: `examples` distinct inputs drawn afresh per key, one search over all of them
    (chunk ignored); exhaustive: the first `examples`, in chunks. Each equals `lass` on the
    inputs it searched."""
    from memjax.metrics import PROTOCOLS, validation_search

    variables, xs, _, radius = problem
    x = xs[0]  # 12 inputs
    settings = dict(radius=radius, step_size=radius / 4, noise_scale=0.0, max_iterations=8)
    member = jax.tree.map(lambda v: v[:1], variables)
    first = validation_search(linear, member, x, jax.random.key(0), protocol="exhaustive",
                              examples=5, chunk=2, **settings)
    np.testing.assert_array_equal(first.critical, lass(
        linear, member, x[:5], jax.random.key(0), chunk=2, **settings).critical)
    draws = [validation_search(linear, member, x, jax.random.key(k), protocol="authors",
                               examples=6, chunk=2, **settings) for k in range(3)]
    chosen = [np.asarray(jax.random.choice(jax.random.fold_in(jax.random.key(k), 2 ** 31 - 1),
                                           12, (6,), replace=False)) for k in range(3)]
    assert all(len(set(c)) == 6 for c in chosen) and len({tuple(c) for c in chosen}) > 1
    for k, (d, c) in enumerate(zip(draws, chosen)):
        np.testing.assert_array_equal(d.critical, lass(
            linear, member, x[c], jax.random.key(k), **settings, **PROTOCOLS["authors"]).critical)
    with pytest.raises(ValueError, match="unknown LASS protocol"):
        validation_search(linear, member, x, jax.random.key(0), protocol="x", examples=2,
                          **settings)


def test_authors_adversarial_points_are_not_clipped():
    from memjax.metrics.lass import TRAINING_LASS, lass_adversarial_examples

    variables = {"w": -jnp.ones((D,)), "b": jnp.float32(-1.0)}  # ascent pushes pixels down
    x = jnp.zeros((4, 4, 4, 1))  # every pixel at the bottom of the range
    key = jax.random.key(0)
    clipped = lass_adversarial_examples(linear, variables, x, None, key)
    free = lass_adversarial_examples(linear, variables, x, None, key, protocol="authors")
    r = TRAINING_LASS["radius"]
    assert float(clipped.min()) >= 0.0 and float(free.min()) < 0.0
    assert float(jnp.abs(free - x).max()) <= r + 1e-7


def test_authors_scale_is_the_range_of_their_preprocessed_images():
    """The authors' callback divides alpha, beta, r by 255 / (max - min) of x / 255 (grey)
    or x / 255 minus the per-pixel training mean (colour): hand-computed cases."""
    from memjax.metrics import authors_scale

    grey = np.array([[10, 200], [30, 40]], np.uint8).reshape(2, 1, 2, 1)
    assert authors_scale(grey, grey) == pytest.approx((200 - 10) / 255)
    train = np.zeros((2, 1, 2, 3), np.uint8)
    train[1, 0, 0] = 255  # per-pixel mean: 127.5 at pixel (0, 0) of every channel, else 0
    images = np.zeros((1, 1, 2, 3), np.uint8)
    images[0, 0, 1] = 255  # x / 255 - mean: -0.5 at pixel (0, 0), 1.0 at pixel (0, 1)
    assert authors_scale(train, images) == pytest.approx(1.5)


def test_authors_scale_on_the_real_data_sets():
    """MNIST is unchanged; CIFAR-10's test images span 1.158 after the authors' per-pixel
    mean subtraction (../shared/data, which CI has beside the checkout)."""
    from pathlib import Path

    from memjax.metrics import authors_scale

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data / "cifar10.npz").exists():
        pytest.skip("../shared/data is not beside this checkout")
    cifar, mnist = np.load(data / "cifar10.npz"), np.load(data / "mnist.npz")
    assert authors_scale(cifar["x_train"], cifar["x_test"]) == pytest.approx(1.1579, abs=1e-4)
    assert authors_scale(mnist["x_train"][..., None], mnist["x_test"][..., None]) == 1.0


def test_validation_search_scale_multiplies_radius_and_steps(problem):
    from memjax.metrics import validation_search

    variables, xs, factors, radius = problem
    member = jax.tree.map(lambda v: v[:1], variables)
    settings = dict(radius=radius / 2, step_size=radius / 8, noise_scale=radius / 16,
                    max_iterations=30, protocol="authors", examples=None)
    scaled = validation_search(linear, member, xs[0], jax.random.key(3), scale=2.0, **settings)
    doubled = validation_search(linear, member, xs[0], jax.random.key(3), **{
        **settings, "radius": radius, "step_size": radius / 4, "noise_scale": radius / 8})
    np.testing.assert_array_equal(scaled.critical, doubled.critical)
    np.testing.assert_allclose(scaled.points, doubled.points, rtol=1e-6)
    # at half the radius only the examples within it of the boundary can flip
    half = validation_search(linear, member, xs[0], jax.random.key(3), **settings)
    assert not np.asarray(half.critical)[0, factors > 0.5].any()
