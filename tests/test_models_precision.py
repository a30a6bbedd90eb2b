"""Mixed precision (bf16 compute, float32 master weights): a small run's validation accuracy
stays within 3 percentage points of the float32 run's."""
import jax
import jax.numpy as jnp
import numpy as np

from memjax.config import DataConfig, ModelConfig
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.models import build_network
from memjax.evaluation import evaluate
from memjax.train import make_train_epoch

TOLERANCE = 0.03  # absolute difference of mean validation accuracy


def _run(dtype, network, d):
    tx = make_optimizer(0.9)
    state = init_ensemble(network, tx, jnp.zeros((1, 28, 28, 1)), seed=0,
                          member_ids=np.arange(2), learning_rate=0.02)
    epoch = make_train_epoch(network, tx, batch_size=64, compute_dtype=dtype)
    x, y = jnp.asarray(d.train.x), jnp.asarray(d.train.y)
    for _ in range(3):
        state, _ = epoch(state, 0, x, y)
    correct = evaluate(network.apply, state.variables, jnp.asarray(d.validation.x),
                       jnp.asarray(d.validation.y))["correct"]
    return state, float(np.mean(correct))


def test_bf16_accuracy_within_tolerance_of_fp32():
    d = load_dataset(DataConfig(train_size=1536, validation_size=512))
    network = build_network(ModelConfig(hidden=(64,)), 10)
    full, acc32 = _run("float32", network, d)
    mixed, acc16 = _run("bfloat16", network, d)
    assert acc32 > 0.7  # the run learned something worth comparing
    assert abs(acc16 - acc32) <= TOLERANCE, (acc16, acc32)
    # master weights stay float32, and bf16 compute really ran (different trajectory)
    for leaf in jax.tree_util.tree_leaves(mixed.variables):
        assert leaf.dtype == jnp.float32
    k32 = np.asarray(full.variables["params"]["Dense_0"]["kernel"])
    k16 = np.asarray(mixed.variables["params"]["Dense_0"]["kernel"])
    assert not np.allclose(k32, k16, atol=1e-6)
    np.testing.assert_allclose(k16, k32, atol=0.05)


def test_loss_sensitivity_in_bf16_stays_close_to_fp32():
    """compute_dtype="bfloat16" for the metrics: loss sensitivity within a few percent of
    float32 (LASS in bf16: tests/test_metrics_lass.py)."""
    import pytest

    from memjax.metrics import loss_sensitivity

    network = build_network(ModelConfig(hidden=(64, 64)), 10)
    state = init_ensemble(network, make_optimizer(), jnp.zeros((1, 28, 28, 1)), seed=0,
                          member_ids=np.arange(2), learning_rate=0.1)
    d = load_dataset(DataConfig(train_size=256, validation_size=16))
    x, y = jnp.asarray(d.train.x), jnp.asarray(d.train.y)
    s32 = np.asarray(loss_sensitivity(network.apply, state.variables, x, y))
    s16 = np.asarray(loss_sensitivity(network.apply, state.variables, x, y,
                                      compute_dtype="bfloat16"))
    assert s16.dtype == np.float32 and not np.array_equal(s16, s32)
    rel = np.abs(s16 - s32) / s32
    # bf16 keeps ~3 significant digits: most examples agree to a few percent, a few
    # (near-saturated softmax) to ~10 %
    assert np.quantile(rel, 0.95) < 0.05 and rel.max() < 0.25, (np.quantile(rel, 0.95), rel.max())
    with pytest.raises(ValueError, match="compute_dtype"):
        loss_sensitivity(network.apply, state.variables, x, y, compute_dtype="float16")
