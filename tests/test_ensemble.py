"""Width ensembles: a masked member trains exactly as the narrow network alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.config import DataConfig, ModelConfig
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, init_width_ensemble, make_optimizer, narrow_params
from memjax.errors import MemjaxError
from memjax.models import build_network
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
