"""The ensemble trainer against independent references: members trained alone, plain
per-example evaluation, and invariance to ensemble size and chunking."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax.config import DataConfig, ModelConfig
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, make_optimizer, map_members
from memjax.models import as_float, build_network
from memjax.evaluation import evaluate
from memjax.order import epoch_order
from memjax.train import make_train_epoch


@pytest.fixture(scope="module")
def data():
    d = load_dataset(DataConfig(train_size=300, validation_size=50))
    return d, jnp.asarray(d.train.x), jnp.asarray(d.train.y)


def _train(network, ids, data, *, epochs=2, lr=0.05, chunk=None, momentum=0.0, shared=False,
           halving=None):
    d, x, y = data
    tx = make_optimizer(momentum)
    state = init_ensemble(network, tx, jnp.zeros((1, 28, 28, 1)), seed=11,
                          member_ids=np.asarray(ids), learning_rate=lr)
    epoch = make_train_epoch(network, tx, batch_size=64, member_chunk=chunk,
                             shared_order=shared, lr_halving_epochs=halving)
    history = []
    for _ in range(epochs):
        state, metrics = epoch(state, 11, x, y)
        history.append(metrics)
    return state, history


def _leaves_close(a, b, **tol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


def test_member_trained_alone_matches_reference_sgd(data):
    """One member through the ensemble trainer equals hand-written SGD on the same order."""
    d, x, y = data
    network = build_network(ModelConfig(hidden=(16,)), 10)
    state, history = _train(network, [3], data, epochs=1, lr=0.1)
    # Independent reference: plain Python loop over minibatches, plain gradient descent.
    member_key = jax.random.fold_in(jax.random.key(11), 3)
    params = network.init(jax.random.fold_in(member_key, 0), jnp.zeros((1, 28, 28, 1)))["params"]
    order, weight = epoch_order(jax.random.fold_in(jax.random.fold_in(member_key, 1), 0), 300, 64)
    for idx, w in zip(np.asarray(order), np.asarray(weight)):
        idx = idx[w > 0]

        def loss(p):
            logits = network.apply({"params": p}, as_float(x[idx]))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, jax.grad(loss)(params))
    _leaves_close(jax.tree_util.tree_map(lambda l: l[0], state.variables["params"]), params,
                  rtol=2e-4, atol=2e-5)


def _reference_training(network, variables, x, y, *, member_id, epochs, lr, momentum=0.0,
                        halving=None, shared=False, seed=11, batch=64):
    """PAPER/DESIGN's trainer as a plain Python loop for one member: the order key is
    fold_in(fold_in(root or member key, DATA), epoch), the dropout key of step t
    fold_in(fold_in(fold_in(member key, DROPOUT), epoch), t); SGD with heavy-ball momentum
    (v <- momentum v + g, p <- p - lr v) and lr halved every `halving` epochs."""
    from memjax.keys import DATA, DROPOUT

    root = jax.random.key(seed)
    member_key = jax.random.fold_in(root, member_id)
    velocity = jax.tree_util.tree_map(jnp.zeros_like, variables["params"])
    for epoch in range(epochs):
        key = jax.random.fold_in(jax.random.fold_in(root if shared else member_key, DATA), epoch)
        order, weight = epoch_order(key, len(y), batch)
        rate = lr * 0.5 ** (epoch // halving) if halving else lr
        dropout = jax.random.fold_in(jax.random.fold_in(member_key, DROPOUT), epoch)
        for t, (idx, w) in enumerate(zip(np.asarray(order), np.asarray(weight))):
            idx = idx[w > 0]

            def loss(p):
                logits, _ = network.apply_train({**variables, "params": p}, as_float(x[idx]),
                                                jax.random.fold_in(dropout, t))
                return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

            g = jax.grad(loss)(variables["params"])
            velocity = jax.tree_util.tree_map(lambda v, g: momentum * v + g, velocity, g)
            params = jax.tree_util.tree_map(lambda p, v: p - rate * v, variables["params"], velocity)
            variables = {**variables, "params": params}
    return variables


@pytest.mark.parametrize("setting", ["momentum and halving", "shared order", "dropout"])
def test_trainer_follows_the_documented_schedule_keys_and_order(data, setting):
    """Against the plain loop above, over 3 epochs: the learning-rate schedule with
    momentum, a shared data order, and dropout masks that change every epoch and step."""
    from memjax.ensemble import set_regularization

    d, x, y = data
    kw = {"momentum and halving": dict(momentum=0.9, halving=1), "shared order": dict(shared=True),
          "dropout": {}}[setting]
    network = build_network(ModelConfig(hidden=(16,)), 10, regularized=setting == "dropout")
    tx = make_optimizer(kw.get("momentum", 0.0))
    state = init_ensemble(network, tx, jnp.zeros((1, 28, 28, 1)), seed=11,
                          member_ids=np.array([2, 5]), learning_rate=0.1)
    if setting == "dropout":
        state = state.replace(variables=set_regularization(state.variables, dropout=0.3))
    start = state.variables
    epoch = make_train_epoch(network, tx, batch_size=64, shared_order=kw.get("shared", False),
                             lr_halving_epochs=kw.get("halving"))
    for _ in range(3):
        state, _ = epoch(state, 11, x, y)
    for m, member_id in enumerate([2, 5]):
        reference = _reference_training(
            network, jax.tree_util.tree_map(lambda l: l[m], start), x, y, member_id=member_id,
            epochs=3, lr=0.1, **kw)
        _leaves_close(jax.tree_util.tree_map(lambda l: l[m], state.variables["params"]),
                      reference["params"], rtol=5e-4, atol=5e-5)


def test_ensemble_equals_members_trained_one_at_a_time(data):
    network = build_network(ModelConfig(hidden=(32, 32)), 10)
    together, hist = _train(network, [0, 1, 2, 3], data, momentum=0.9, halving=1)
    for i in range(4):
        alone, hist_alone = _train(network, [i], data, momentum=0.9, halving=1)
        _leaves_close(jax.tree_util.tree_map(lambda l: l[i], together.variables),
                      jax.tree_util.tree_map(lambda l: l[0], alone.variables),
                      rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(hist[-1]["train_loss"][i], hist_alone[-1]["train_loss"][0],
                                   rtol=1e-5)
    # members really differ: their own init and their own data order
    p = together.variables["params"]["Dense_0"]["kernel"]
    assert not np.allclose(p[0], p[1])


def test_member_result_independent_of_ensemble_size_and_chunking(data):
    network = build_network(ModelConfig(hidden=(32,)), 10)
    small, _ = _train(network, [5, 6], data)
    large, _ = _train(network, [0, 1, 2, 3, 4, 5, 6], data, chunk=3)
    _leaves_close(jax.tree_util.tree_map(lambda l: l[:2], small.variables),
                  jax.tree_util.tree_map(lambda l: l[5:7], large.variables), rtol=1e-4, atol=1e-5)


def test_training_learns(data):
    network = build_network(ModelConfig(hidden=(64,)), 10)
    state, history = _train(network, [0, 1], data, epochs=8, lr=0.1)
    assert (history[-1]["train_accuracy"] > history[0]["train_accuracy"] + 0.2).all()
    assert int(state.epoch) == 8


def test_epoch_order_covers_every_example_once():
    order, weight = epoch_order(jax.random.key(0), 300, 64)
    assert order.shape == (5, 64)
    seen = np.asarray(order)[np.asarray(weight) > 0]
    np.testing.assert_array_equal(np.sort(seen), np.arange(300))


def test_evaluate_matches_direct_apply(data):
    d, x, y = data
    network = build_network(ModelConfig(hidden=(16,)), 10)
    state, _ = _train(network, [0, 1, 2], data, epochs=1)
    out = evaluate(network.apply, state.variables, x, y, chunk=128, member_chunk=2)
    assert out["correct"].shape == (3, 300) and out["loss"].shape == (3, 300)
    for m in range(3):
        v = jax.tree_util.tree_map(lambda l: l[m], state.variables)
        logits = network.apply(v, as_float(x))
        np.testing.assert_array_equal(out["correct"][m], np.argmax(logits, -1) == np.asarray(y))
        np.testing.assert_allclose(
            out["loss"][m], optax.softmax_cross_entropy_with_integer_labels(logits, y),
            rtol=1e-5, atol=1e-6)


def test_map_members_chunks_equal_vmap():
    f = lambda a, b: (a * b).sum(-1)
    a, b = jnp.arange(35.0).reshape(7, 5), jnp.ones((7, 5))
    np.testing.assert_array_equal(map_members(f, 3)(a, b), jax.vmap(f)(a, b))


def test_cnn_trains_with_and_without_batchnorm():
    d = load_dataset(DataConfig(train_size=64))
    x = jnp.asarray(np.repeat(np.pad(d.train.x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, -1))
    y = jnp.asarray(d.train.y)
    for bn in (False, True):
        network = build_network(ModelConfig(kind="cnn", batchnorm=bn, conv_channels=8), 10)
        tx = make_optimizer(0.9)
        state = init_ensemble(network, tx, jnp.zeros((1, 32, 32, 3)), seed=0,
                              member_ids=np.arange(2), learning_rate=0.01)
        assert ("batch_stats" in state.variables) == bn
        epoch = make_train_epoch(network, tx, batch_size=32)
        state, m0 = epoch(state, 0, x, y)
        for _ in range(3):
            state, m = epoch(state, 0, x, y)
        assert np.isfinite(m["train_loss"]).all()
        assert (m["train_loss"] < m0["train_loss"]).all()


def test_batchnorm_statistics_count_only_the_weighted_rows():
    """The last batch is padded with zero-weight rows: BatchNorm's batch statistics (and so
    the loss, the gradient and the running averages) must be those of the real rows alone.
    Reference: each member's steps by hand on just its weighted rows."""
    from memjax.metrics import trainer_order

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, 40).astype(np.int32))
    network = build_network(ModelConfig(kind="cnn", batchnorm=True, conv_channels=4), 10)
    tx = make_optimizer()
    state = init_ensemble(network, tx, jnp.zeros((1, 12, 12, 3)), seed=3,
                          member_ids=np.arange(2), learning_rate=0.05)
    start = state.variables
    trained, _ = make_train_epoch(network, tx, batch_size=32)(state, 3, x, y)
    order, weight = trainer_order(3, np.arange(2), num_examples=40, batch_size=32, epochs=1)
    assert (np.asarray(weight)[:, -1] == 0).any()  # the padded last batch

    def loss_fn(params, variables, xb, yb):
        logits, updates = network.module.apply({**variables, "params": params}, as_float(xb),
                                               train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), updates

    for m in range(2):
        variables = jax.tree_util.tree_map(lambda a: a[m], start)
        for idx, w in zip(np.asarray(order[m]), np.asarray(weight[m])):
            rows = idx[w > 0]
            grads, updates = jax.grad(loss_fn, has_aux=True)(variables["params"], variables,
                                                             x[rows], y[rows])
            params = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, variables["params"], grads)
            variables = {**variables, **updates, "params": params}
        _leaves_close(jax.tree_util.tree_map(lambda a: a[m], trained.variables), variables,
                      rtol=2e-4, atol=2e-5)


def test_compiled_epoch_does_not_copy_the_weights_each_step():
    """The step is bandwidth-bound at the paper's sizes: XLA must update the weights in
    place, not copy the ones the backward pass reads (see train._after_every_gradient)."""
    import re

    network = build_network(ModelConfig(hidden=(64, 64)), 10)
    tx = make_optimizer()
    state = init_ensemble(network, tx, jnp.zeros((1, 28, 28, 1)), seed=0,
                          member_ids=np.arange(4), learning_rate=0.1)
    x, y = jnp.zeros((64, 28, 28, 1), jnp.uint8), jnp.zeros(64, jnp.int32)
    hlo = make_train_epoch(network, tx, batch_size=32).lower(state, 0, x, y).compile().as_text()
    for shape in ("4,784,64", "4,64,64", "4,64,10"):
        assert not re.findall(rf"f32\[{shape}\]\S* copy\(", hlo), shape
