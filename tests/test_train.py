"""The ensemble trainer against independent references: members trained alone, plain
per-example evaluation, invariance to ensemble size and chunking, and members trained on
their own views (dataset-size masks, noised copies, adversarial points)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax import dynamics, keys
from memjax.config import DataConfig, ModelConfig
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, make_optimizer, map_members
from memjax.models import as_float, build_network
from memjax.evaluation import evaluate, member_accuracy
from memjax.order import epoch_order
from memjax.train import make_train_epoch
from memjax.views import MemberView, noise_masks, noise_source, size_masks

EXAMPLE = jnp.zeros((1, 28, 28, 1))


@pytest.fixture(scope="module")
def data():
    d = load_dataset(DataConfig(train_size=300, validation_size=50))
    return d, jnp.asarray(d.train.x), jnp.asarray(d.train.y)


@pytest.fixture(scope="module")
def data160():
    """The smaller set the per-member view tests train on."""
    d = load_dataset(DataConfig(train_size=160, validation_size=10))
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


_close = _leaves_close  # the name the per-member view tests below use


def _member(tree, m):
    return jax.tree_util.tree_map(lambda l: l[m], tree)


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
    start = jax.device_get(state.variables)  # (the epoch donates the state)
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
    x = jnp.asarray(np.repeat(d.train.x[:, 8:20, 8:20], 3, -1))  # (small, 3-channel images)
    y = jnp.asarray(d.train.y)
    for bn in (False, True):
        network = build_network(ModelConfig(kind="cnn", batchnorm=bn, conv_channels=8), 10)
        tx = make_optimizer(0.9)
        state = init_ensemble(network, tx, jnp.zeros((1, 12, 12, 3)), seed=0,
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
    start = jax.device_get(state.variables)  # (the epoch donates the state)
    trained, _ = make_train_epoch(network, tx, batch_size=32)(state, 3, x, y)
    order, weight = trainer_order(3, np.arange(2), num_examples=40, batch_size=32, epochs=1)
    assert (np.asarray(weight)[:, -1] == 0).any()  # the padded last batch

    def loss_fn(params, variables, xb, yb):
        logits, updates = network.module.apply({**variables, "params": params}, as_float(xb),
                                               train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), updates

    # (jitted: the batches' two sizes compile once each; eagerly, every operation would)
    grad_fn = jax.jit(jax.grad(loss_fn, has_aux=True))
    for m in range(2):
        variables = jax.tree_util.tree_map(lambda a: a[m], start)
        for idx, w in zip(np.asarray(order[m]), np.asarray(weight[m])):
            rows = idx[w > 0]
            grads, updates = grad_fn(variables["params"], variables, x[rows], y[rows])
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


def test_dataset_size_member_matches_reference_sgd_on_its_examples(data160):
    """Momentum and weight decay: the empty batches past a member's data must not move it."""
    d, x, y = data160
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


@pytest.mark.parametrize("kind", ["input", "label"])
def test_fully_noised_member_equals_training_on_the_noised_copy(data160, kind):
    d, x, y = data160
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


def test_adversarial_training_seam(data160):
    d, x, y = data160
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


def test_members_without_adversarial_weight_skip_the_search_and_train_as_alone(data160):
    """Members of weight 0 train as without any adversarial member (BatchNorm statistics
    included) whether their group searches for another member (one group of 3) or not
    (groups of 1, which skip the search: the compiled epoch branches); and with the host's
    `searching` (the Runner passes it) one group of 3 on one device runs the adversarial
    pass for its adversarial member only (no conditional; XLA counts less work), every
    member training as in the group that runs it for all three."""
    from memjax.sharding import member_mesh

    d, x, y = data160
    x, y = x[:64, 8:20, 8:20], y[:64]  # (small images: 4 programs compile and run)
    network = build_network(ModelConfig(kind="cnn", conv_channels=2, batchnorm=True), 10)
    tx = make_optimizer(0.9)
    fresh = lambda: init_ensemble(network, tx, x[:1], seed=3, member_ids=np.arange(3),
                                  learning_rate=0.05)
    view = MemberView(adversarial_weight=jnp.array([0.0, 0.5, 0.0]))
    flipped = lambda apply_fn, v, xb, yb, key: 1.0 - xb
    plain, _ = make_train_epoch(network, tx, batch_size=32, member_chunk=3)(fresh(), 3, x, y)
    trained = {}
    for chunk, searching in ((3, None), (1, None), (3, (False, True, False))):
        epoch = make_train_epoch(network, tx, batch_size=32, member_chunk=chunk,
                                 mesh=member_mesh(1) if searching else None,
                                 adversarial_examples=flipped)
        hlo = epoch.lower(fresh(), 3, x, y, view, searching=searching).as_text()
        branches = "stablehlo.case" in hlo or "stablehlo.if" in hlo
        if chunk == 1:
            assert branches
        if searching:
            assert not branches
            flops = lambda **kw: epoch.lower(fresh(), 3, x, y, view,
                                             **kw).cost_analysis()["flops"]
            assert flops(searching=searching) < flops()
        trained[chunk, searching], _ = epoch(fresh(), 3, x, y, view, searching=searching)
        for m in (0, 2):
            _close(_member(trained[chunk, searching].variables, m),
                   _member(plain.variables, m), rtol=1e-5, atol=1e-6)
        assert not np.allclose(
            _member(trained[chunk, searching].variables, 1)["params"]["Dense_2"]["kernel"],
            _member(plain.variables, 1)["params"]["Dense_2"]["kernel"])
    _close(_member(trained[3, (False, True, False)].variables, 1),
           _member(trained[3, None].variables, 1), rtol=1e-5, atol=1e-6)


def test_adversarial_training_trains_on_lass_points(data160):
    """w = 1 with LASS points (the runner's source) equals plain SGD on lass_search's points, searched with
    the step's ATTACK key from the parameters before the step (one step: batch = all)."""
    from memjax.metrics.lass import TRAINING_LASS, lass_adversarial_examples
    from memjax.keys import ATTACK, DATA
    from memjax.metrics import lass_search
    from memjax.order import epoch_order

    d, x, y = data160
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


def test_epoch_cut_to_the_largest_member_changes_nothing(data160):
    """max_examples ends the epoch after the largest member's examples: the same state,
    dynamics records included, as running every weight-0 batch."""
    d, x, y = data160
    network = build_network(ModelConfig(hidden=(8,)), 10)
    tx = make_optimizer(0.9)
    masks = jnp.asarray(size_masks(np.array([40, 70]), 160, data_seed=0))
    out = []
    for max_examples in (None, 70):
        state = init_ensemble(network, tx, EXAMPLE, seed=5, member_ids=np.array([0, 1]),
                              learning_rate=0.05)
        state = state.replace(dynamics=dynamics.empty(2, 160))
        epoch = make_train_epoch(network, tx, batch_size=32, max_examples=max_examples)
        for _ in range(2):
            state, metrics = epoch(state, 5, x, y, MemberView(example_mask=masks))
        out.append((jax.device_get(state.variables), jax.device_get(state.dynamics), metrics))
    jax.tree.map(np.testing.assert_array_equal, out[0][:2], out[1][:2])
    np.testing.assert_allclose(out[0][2]["train_loss"], out[1][2]["train_loss"], rtol=1e-6)
