"""Instantaneous input gradients and loss sensitivity against per-example jax.grad and
central finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax.config import ModelConfig
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.metrics import input_gradients, loss_sensitivity
from memjax.models import build_network


@pytest.fixture(scope="module")
def setup():
    network = build_network(ModelConfig(hidden=(12, 8)), 4)
    state = init_ensemble(network, make_optimizer(), jnp.zeros((1, 5, 5, 1)), seed=3,
                          member_ids=np.arange(3), learning_rate=0.1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (11, 5, 5, 1), dtype=np.uint8)
    y = rng.integers(0, 4, 11).astype(np.int32)
    return network, state.variables, x, y


def _member(variables, m):
    return jax.tree_util.tree_map(lambda l: l[m], variables)


def test_input_gradients_match_per_example_grad(setup):
    network, variables, x, y = setup
    g = input_gradients(network.apply, variables, x, y, chunk=4, member_chunk=2)
    assert g.shape == (3, 11, 5, 5, 1)
    xf = jnp.asarray(x, jnp.float32) / 255.0
    for m in range(3):
        v = _member(variables, m)

        def one(xi, yi):
            logits = network.apply(v, xi[None])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

        reference = jax.vmap(jax.grad(one))(xf, jnp.asarray(y))
        np.testing.assert_allclose(g[m], reference, rtol=1e-5, atol=1e-6)


def test_input_gradients_match_central_differences(setup):
    network, variables, x, y = setup
    xf = np.asarray(x, np.float64) / 255.0
    g = np.asarray(input_gradients(network.apply, variables, xf.astype(np.float32), y))
    v = _member(variables, 1)
    with jax.enable_x64():
        v64 = jax.tree_util.tree_map(lambda l: jnp.asarray(l, jnp.float64), v)

        def loss(xi, yi):
            return optax.softmax_cross_entropy_with_integer_labels(
                network.apply(v64, jnp.asarray(xi[None])), jnp.asarray([yi]))[0]

        eps = 1e-5
        for i, pixel in [(0, (2, 2, 0)), (4, (1, 3, 0)), (10, (4, 0, 0))]:
            up, down = xf[i].copy(), xf[i].copy()
            up[pixel] += eps
            down[pixel] -= eps
            fd = (loss(up, y[i]) - loss(down, y[i])) / (2 * eps)
            np.testing.assert_allclose(g[1, i][pixel], fd, rtol=1e-3, atol=1e-6)


def test_loss_sensitivity_norms_and_chunking(setup):
    network, variables, x, y = setup
    g = np.asarray(input_gradients(network.apply, variables, x, y))
    flat = g.reshape(3, 11, -1)
    for ord, reference in [(1, np.abs(flat).sum(-1)), (2, np.sqrt((flat ** 2).sum(-1))),
                           (np.inf, np.abs(flat).max(-1))]:
        s = loss_sensitivity(network.apply, variables, x, y, ord=ord, chunk=3, member_chunk=2)
        assert s.shape == (3, 11)
        np.testing.assert_allclose(s, reference, rtol=1e-5, atol=1e-7)


def test_examples_are_independent(setup):
    """An example's gradient does not depend on the others in its chunk."""
    network, variables, x, y = setup
    full = loss_sensitivity(network.apply, variables, x, y)
    alone = loss_sensitivity(network.apply, variables, x[5:6], y[5:6])
    np.testing.assert_allclose(full[:, 5:6], alone, rtol=1e-5)
