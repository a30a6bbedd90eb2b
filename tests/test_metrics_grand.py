"""GraNd (memjax.metrics.grand) against a plain loop: jax.grad of one example's loss at a
time for one member, flattened with ravel_pytree, on a small MLP and a small CNN with
BatchNorm; chunking over examples and members does not change it."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from memjax.config import ModelConfig
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.metrics import grand
from memjax.models import build_network


def _member(variables, m):
    return jax.tree_util.tree_map(lambda leaf: leaf[m], variables)


def loop_grand(network, variables, x, y):
    """[M, N]: ||d CE / d params|| of each member, one example at a time (evaluation-mode
    apply; only params differentiated, every other collection as given)."""

    @jax.jit
    def grad_one(v, xi, yi):
        fixed = {k: c for k, c in v.items() if k != "params"}

        def loss(p):
            logits = network.apply({**fixed, "params": p}, xi[None])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]
        return jax.grad(loss)(v["params"])

    xf = np.asarray(x, np.float32) / 255.0
    members = jax.tree_util.tree_leaves(variables)[0].shape[0]
    out = np.zeros((members, len(y)))
    for m in range(members):
        v = _member(variables, m)
        for i in range(len(y)):
            flat, _ = ravel_pytree(grad_one(v, xf[i], y[i]))
            out[m, i] = np.linalg.norm(np.asarray(flat, np.float64))
    return out


def _data(n, shape, classes, seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
            rng.integers(0, classes, n).astype(np.int32))


@pytest.fixture(scope="module")
def mlp():
    network = build_network(ModelConfig(hidden=(12, 8)), 4)
    state = init_ensemble(network, make_optimizer(), jnp.zeros((1, 5, 5, 1)), seed=3,
                          member_ids=np.arange(3), learning_rate=0.1)
    return (network, state.variables) + _data(11, (5, 5, 1), 4, seed=0)


@pytest.fixture(scope="module")
def cnn():
    """A small paper CNN with BatchNorm whose running statistics are far from their
    initial (0, 1), so evaluation mode differs from normalizing with the batch's."""
    network = build_network(ModelConfig(kind="cnn", conv_channels=4, batchnorm=True), 3)
    state = init_ensemble(network, make_optimizer(), jnp.zeros((1, 8, 8, 3)), seed=1,
                          member_ids=np.arange(2), learning_rate=0.1)
    rng = np.random.default_rng(1)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, a: (rng.uniform(0.3, 3.0, a.shape) if "var" in jax.tree_util.keystr(path)
                         else rng.normal(0.0, 0.5, a.shape)).astype(np.float32),
        state.variables["batch_stats"])
    variables = {**state.variables, "batch_stats": stats}
    return (network, variables) + _data(7, (8, 8, 3), 3, seed=2)


def test_grand_matches_per_example_loop_mlp(mlp):
    network, variables, x, y = mlp
    s = np.asarray(grand(network.apply, variables, x, y, chunk=4, member_chunk=2))
    assert s.shape == (3, 11) and s.dtype == np.float32
    np.testing.assert_allclose(s, loop_grand(network, variables, x, y), rtol=1e-5)


def test_grand_matches_per_example_loop_cnn_batchnorm_eval_mode(cnn):
    """Only params differentiated (batch_stats held), normalized by the running statistics."""
    network, variables, x, y = cnn
    s = np.asarray(grand(network.apply, variables, x, y, chunk=3))
    assert s.shape == (2, 7)
    np.testing.assert_allclose(s, loop_grand(network, variables, x, y), rtol=1e-5)
    # the running statistics matter: with the initial ones the scores are others
    initial = {**variables,
               "batch_stats": jax.tree_util.tree_map(jnp.zeros_like, variables["batch_stats"])}
    assert not np.allclose(grand(network.apply, initial, x, y, chunk=3), s, rtol=1e-2)


@pytest.mark.parametrize("devices", [1, 2])
def test_grand_of_cnn_members_sharded_as_the_runner_holds_them(cnn, devices):
    """Variables placed on a members mesh (as memjax.runner keeps them; the el2n study
    scores them so), on one device and on two: once a NotImplementedError from jax's
    batching of the first convolution's per-example kernel gradient."""
    from memjax.sharding import member_mesh, shard_members

    network, variables, x, y = cnn
    placed = shard_members(variables, member_mesh(devices), 2)
    s = np.asarray(grand(network.apply, placed, jnp.asarray(x), jnp.asarray(y), chunk=3))
    np.testing.assert_allclose(s, loop_grand(network, variables, x, y), rtol=1e-5)


def test_chunks_and_member_chunks_do_not_change_grand(mlp):
    """(The CNN's chunked scores equal the loop's above.)"""
    network, variables, x, y = mlp
    whole = np.asarray(grand(network.apply, variables, x, y))
    for chunk, member_chunk in [(3, 1), (5, None), (11, 2)]:  # 3, 5: last chunks padded
        np.testing.assert_allclose(
            grand(network.apply, variables, x, y, chunk=chunk, member_chunk=member_chunk),
            whole, rtol=1e-5, err_msg=f"chunk={chunk} member_chunk={member_chunk}")


def test_other_collections_held_and_regularizers_off():
    """Width masks and regularizer strengths are variables, not parameters: not
    differentiated, and dropout / noise are off in evaluation mode."""
    network = build_network(ModelConfig(hidden=(10, 6)), 3, masked=True, regularized=True)
    state = init_ensemble(network, make_optimizer(), jnp.zeros((1, 4, 4, 1)), seed=0,
                          member_ids=np.arange(2), learning_rate=0.1)
    v = state.variables
    masks = jax.tree_util.tree_map(lambda a: a.at[:, ::3].set(0.0), v["masks"])
    strengths = jax.tree_util.tree_map(lambda a: jnp.full_like(a, 0.3), v["regularization"])
    variables = {**v, "masks": masks, "regularization": strengths}
    x, y = _data(6, (4, 4, 1), 3, seed=4)
    s = np.asarray(grand(network.apply, variables, x, y, chunk=4))
    np.testing.assert_allclose(s, loop_grand(network, variables, x, y), rtol=1e-5)


def test_bfloat16_close_to_float32(mlp):
    network, variables, x, y = mlp
    f32 = np.asarray(grand(network.apply, variables, x, y))
    bf16 = np.asarray(grand(network.apply, variables, x, y, compute_dtype="bfloat16"))
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, f32, rtol=5e-2)
