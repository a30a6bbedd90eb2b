"""Per-member accuracy over each member's own examples and (noised) labels."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.config import DataConfig, ModelConfig
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.evaluation import member_accuracy
from memjax.models import as_float, build_network
from memjax.views import MemberView, NoiseSource, noise_source, size_masks

EXAMPLE = jnp.zeros((1, 28, 28, 1))


@pytest.fixture(scope="module")
def data():
    d = load_dataset(DataConfig(train_size=160, validation_size=10))
    return d, jnp.asarray(d.train.x), jnp.asarray(d.train.y)


def _member(tree, m):
    return jax.tree_util.tree_map(lambda l: l[m], tree)


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


def test_member_accuracy_predicts_each_member_on_its_own_inputs(data):
    """With randX members, each member is predicted once per example, on the noised input
    where its mask says and the clean one elsewhere, over several example chunks."""
    d, x, y = data
    network = build_network(ModelConfig(hidden=(8,)), 10)
    state = init_ensemble(network, make_optimizer(), EXAMPLE, seed=1,
                          member_ids=np.arange(3), learning_rate=0.1)
    noise = noise_source(d.train, 10, data_seed=0)
    rng = np.random.default_rng(0)
    inputs = rng.random((3, 160)) < np.array([[0.0], [0.5], [1.0]])
    out = member_accuracy(network.apply, state.variables, x, y,
                          MemberView(input_noise_mask=inputs),
                          NoiseSource(x=jnp.asarray(noise.x)), chunk=64)
    for m in range(3):
        seen = np.where(inputs[m][:, None, None, None], as_float(jnp.asarray(noise.x)),
                        as_float(x))
        pred = np.argmax(network.apply(_member(state.variables, m), seen), -1)
        np.testing.assert_array_equal(out["correct"][m], pred == np.asarray(y))
