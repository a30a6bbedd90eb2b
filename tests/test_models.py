import jax
import jax.numpy as jnp
import pytest

from memjax.config import ModelConfig
from memjax.errors import MemjaxError
from memjax.models import build_network


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
