"""Networks: parameter counts and settings; per-member regularizers (models.Regularization,
ensemble.set_regularization) do what they should."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.config import DataConfig, ModelConfig
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, make_optimizer, set_regularization
from memjax.errors import MemjaxError
from memjax.models import Regularization, build_network
from memjax.train import make_train_epoch

EXAMPLE = jnp.zeros((1, 28, 28, 1))


@pytest.fixture(scope="module")
def data():
    d = load_dataset(DataConfig(train_size=64, validation_size=10))
    return d, jnp.asarray(d.train.x), jnp.asarray(d.train.y)


def _count(network, shape):
    variables = jax.eval_shape(network.init, jax.random.key(0), jnp.zeros((1,) + shape))
    return sum(l.size for l in jax.tree_util.tree_leaves(variables["params"]))


def test_paper_mlp_parameter_count():
    # 784*4096+4096 + 4096*4096+4096 + 4096*10+10
    assert _count(build_network(ModelConfig(), 10), (28, 28, 1)) == 20_037_642


def test_paper_cnn_parameter_count_and_output():
    # conv 5*5*3*200+200, conv 5*5*200*200+200, dense 7*7*200*384+384, 384*192+192, 192*10+10
    network = build_network(ModelConfig(kind="cnn"), 10)
    assert _count(network, (32, 32, 3)) == 4_854_834
    variables = network.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    assert network.apply(variables, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


def test_bad_model_settings():
    with pytest.raises(MemjaxError, match="unknown model"):
        build_network(ModelConfig(kind="resnet"), 10)
    with pytest.raises(MemjaxError, match="must be positive"):
        build_network(ModelConfig(hidden=(16, 0)), 10)


def _member(tree, m):
    return jax.tree_util.tree_map(lambda l: l[m], tree)


def _strengths(**values):
    base = {k: jnp.zeros(()) for k in ("dropout", "input_dropout", "input_noise", "hidden_noise")}
    return {"regularization": {**base, **{k: jnp.asarray(v, jnp.float32)
                                          for k, v in values.items()}}}


def _regularize(kind, x, **values):
    return Regularization().apply(_strengths(**values), x, kind, True,
                                  rngs={"dropout": jax.random.key(0)})


def test_dropout_rate_and_scaling():
    out = np.asarray(_regularize("hidden", jnp.ones((20000,)), dropout=0.3))
    assert abs(np.mean(out == 0) - 0.3) < 0.015
    np.testing.assert_allclose(out[out != 0], 1 / 0.7, rtol=1e-6)
    out = np.asarray(_regularize("input", jnp.ones((20000,)), input_dropout=0.6))
    assert abs(np.mean(out == 0) - 0.6) < 0.015


def test_gaussian_noise_std():
    out = np.asarray(_regularize("input", jnp.zeros((20000,)), input_noise=2.0))
    assert abs(out.std() - 2.0) < 0.05
    out = np.asarray(_regularize("hidden", jnp.zeros((20000,)), hidden_noise=0.1))
    assert abs(out.std() - 0.1) < 0.003
    # evaluation mode: no regularizer acts
    x = jnp.arange(5.0)
    np.testing.assert_array_equal(Regularization().apply(_strengths(dropout=0.9, hidden_noise=3.0),
                                                         x, "hidden", False), x)


def test_zero_strengths_equal_no_regularizers(data):
    d, x, y = data
    tx = make_optimizer()
    plain = build_network(ModelConfig(hidden=(8, 8)), 10)
    reg = build_network(ModelConfig(hidden=(8, 8)), 10, regularized=True)
    states = [init_ensemble(n, tx, EXAMPLE, seed=0, member_ids=np.arange(2), learning_rate=0.1)
              for n in (plain, reg)]
    states[1] = states[1].replace(variables=set_regularization(
        states[1].variables, dropout=0.0, input_dropout=0.0, input_noise=0.0, hidden_noise=0.0))
    out = []
    for network, state in zip((plain, reg), states):
        epoch = make_train_epoch(network, tx, batch_size=16)
        for _ in range(2):
            state, _ = epoch(state, 0, x, y)
        out.append(state.variables["params"])
    for a, b in zip(jax.tree_util.tree_leaves(out[0]), jax.tree_util.tree_leaves(out[1])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # same math; fusion may differ


def test_per_member_dropout_changes_only_its_member(data):
    d, x, y = data
    tx = make_optimizer()
    network = build_network(ModelConfig(hidden=(8,)), 10, regularized=True)
    state = init_ensemble(network, tx, EXAMPLE, seed=0, member_ids=np.array([0, 0]),
                          learning_rate=0.1)
    state = state.replace(variables=set_regularization(state.variables, dropout=[0.0, 0.5]))
    state, metrics = make_train_epoch(network, tx, batch_size=16)(state, 0, x, y)
    k = np.asarray(state.variables["params"]["Dense_0"]["kernel"])
    assert not np.allclose(k[0], k[1])
    # the dropout-0 member trained exactly as the same member of an unregularized network
    plain = build_network(ModelConfig(hidden=(8,)), 10)
    alone = init_ensemble(plain, tx, EXAMPLE, seed=0, member_ids=np.array([0]),
                          learning_rate=0.1)
    alone, _ = make_train_epoch(plain, tx, batch_size=16)(alone, 0, x, y)
    for u, v in zip(jax.tree_util.tree_leaves(state.variables["params"]),
                    jax.tree_util.tree_leaves(alone.variables["params"])):
        np.testing.assert_allclose(u[0], v[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(MemjaxError, match="must be in"):
        set_regularization(state.variables, dropout=1.0)


def test_weight_decay_shrinks_weights_by_lr_times_decay(data):
    """One SGD step from the same params and batch: the weight-decay member ends exactly
    lr * wd * params0 below the member without it."""
    d, x, y = data
    tx = make_optimizer()
    network = build_network(ModelConfig(hidden=(8,)), 10)
    state = init_ensemble(network, tx, EXAMPLE, seed=0, member_ids=np.array([4, 4]),
                          learning_rate=0.1, weight_decay=np.array([0.0, 0.5]))
    p0 = _member(state.variables["params"], 0)
    state, _ = make_train_epoch(network, tx, batch_size=64)(state, 0, x, y)  # one step
    for a, b, w0 in zip(jax.tree_util.tree_leaves(_member(state.variables["params"], 0)),
                        jax.tree_util.tree_leaves(_member(state.variables["params"], 1)),
                        jax.tree_util.tree_leaves(p0)):
        np.testing.assert_allclose(np.asarray(a) - np.asarray(b), 0.1 * 0.5 * np.asarray(w0),
                                   rtol=1e-4, atol=1e-6)
    norms = [sum(float(jnp.sum(l ** 2)) for l in jax.tree_util.tree_leaves(
        _member(state.variables["params"], m))) for m in (0, 1)]
    assert norms[1] < norms[0]
