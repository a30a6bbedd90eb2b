"""The member axis sharded over 8 virtual CPU devices (conftest.py) gives the results of one
device, for member counts that do and do not divide the device count."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.config import DataConfig, ModelConfig
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, make_optimizer, map_members
from memjax.models import build_network
from memjax.sharding import member_mesh, padded_members, shard_members
from memjax.evaluation import evaluate
from memjax.train import make_train_epoch

pytestmark = pytest.mark.all_devices


@pytest.fixture(scope="module")
def data():
    d = load_dataset(DataConfig(train_size=256, validation_size=64))
    return jnp.asarray(d.train.x), jnp.asarray(d.train.y)


def _train(members, mesh, data, chunk=None, epochs=1, model=ModelConfig(hidden=(16,))):
    x, y = data
    network = build_network(model, 10)
    tx = make_optimizer(0.9)
    state = init_ensemble(network, tx, jnp.zeros((1,) + x.shape[1:]), seed=3,
                          member_ids=np.arange(members), learning_rate=0.05)
    epoch = make_train_epoch(network, tx, batch_size=64, member_chunk=chunk, mesh=mesh)
    for _ in range(epochs):
        state, metrics = epoch(state, 3, x, y)
    return network, state, metrics


def _close(a, b):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)


def test_eight_devices_need_eight():
    assert jax.device_count() == 8


@pytest.mark.parametrize("members,devices,chunk", [(11, 8, None), (6, 4, 1)])
def test_sharded_training_equals_one_device(data, members, devices, chunk):
    """11 members on 8 devices are padded to 16 (5 dummies); 6 on 4 devices in groups of
    one (lax.map on each device) are padded to 8."""
    _, one, m1 = _train(members, member_mesh(1), data)
    _, many, m8 = _train(members, member_mesh(devices), data, chunk=chunk, epochs=1)
    assert jax.tree_util.tree_leaves(many.variables)[0].shape[0] == members
    _close(one.variables, many.variables)
    _close(one.opt_state, many.opt_state)
    _close(m1, m8)


def test_sharded_resnet_training_equals_one_device():
    """ResNet-9's BatchNorm statistics (a collection of each member) are sharded and
    updated with its parameters: 3 members on 8 devices (5 dummies) as on one. 12 x 12
    images, as in tests/test_models_registry.py (why not 16 x 16 there)."""
    rng = np.random.default_rng(1)
    data = (jnp.asarray(rng.integers(0, 256, (48, 12, 12, 3), dtype=np.uint8)),
            jnp.asarray(rng.integers(0, 10, 48).astype(np.int32)))
    model = ModelConfig(kind="resnet9", width=4)
    _, one, m1 = _train(3, member_mesh(1), data, model=model)
    _, many, m8 = _train(3, member_mesh(8), data, model=model)
    assert set(many.variables) == {"params", "batch_stats"}
    assert len(jax.tree_util.tree_leaves(many.variables["batch_stats"])[0]
               .sharding.device_set) == 8
    _close(one.variables, many.variables)
    _close(m1, m8)


def test_members_are_spread_over_all_devices(data):
    _, state, _ = _train(8, member_mesh(8), data)
    kernel = state.variables["params"]["Dense_0"]["kernel"]
    assert len(kernel.sharding.device_set) == 8
    # each device holds one member's block, not a replica
    assert {s.data.shape[0] for s in kernel.addressable_shards} == {1}


def test_sharded_evaluation_equals_one_device(data):
    network, state, _ = _train(5, member_mesh(1), data)
    x, y = data
    one = evaluate(network.apply, state.variables, x, y, chunk=100, mesh=member_mesh(1))
    many = evaluate(network.apply, state.variables, x, y, chunk=100, mesh=member_mesh(8),
                    member_chunk=1)
    np.testing.assert_array_equal(one["correct"], many["correct"])
    np.testing.assert_allclose(one["loss"], many["loss"], rtol=1e-5, atol=1e-6)


def test_padding_and_placement():
    mesh = member_mesh(8)
    assert padded_members(100, mesh) == 104
    assert padded_members(100, mesh, chunk=5) == 120
    assert padded_members(8, mesh) == 8
    tree = {"w": np.ones((16, 3)), "step": np.zeros(())}
    placed = shard_members(tree, mesh, 16)
    assert {s.data.shape for s in placed["w"].addressable_shards} == {(2, 3)}
    assert placed["step"].sharding.is_fully_replicated


def test_a_count_the_devices_do_not_divide_must_be_padded_first():
    with pytest.raises(ValueError, match="pad them first"):
        shard_members({"w": np.ones((11, 3))}, member_mesh(8), 11)


def test_map_members_any_count_any_mesh():
    f = lambda a, b: jnp.tanh(a * b).sum(-1)
    a, b = jnp.arange(39.0).reshape(13, 3) / 10, jnp.ones((13, 3))
    for devices, chunk in [(8, None), (8, 1), (3, 2), (1, 4)]:
        out = map_members(f, chunk, mesh=member_mesh(devices))(a, b)
        np.testing.assert_allclose(out, jax.vmap(f)(a, b), rtol=1e-6)


def _results(path):
    with np.load(path / "results.npz", allow_pickle=True) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow
@pytest.mark.parametrize("study,extra", [
    ("consistency", ["--members", "11", "--set", "conditions=real,randY"]),  # 16 stored
    ("noise-curves", []),  # a sweep: noise masks, own-view accuracy, LASS per epoch
    ("sensitivity", ["--set", "conditions=real"]),  # the unrolled trajectory (map_members)
    ("memorization", ["--members", "11"]),  # subset masks, dynamics, influence; 16 stored
    # adversarial training: on one device only its members search (the static split)
    ("regularization", ["--set", "dropout=", "--set", "input_dropout=", "--set",
                        "input_noise=", "--set", "hidden_noise="]),
])
def test_study_on_eight_devices_equals_one_device(study, extra, tmp_path, monkeypatch):
    from memjax.cli import main

    assert main(["run", study, "--preset", "smoke", "--out", str(tmp_path / "8")] + extra) == 0
    monkeypatch.setenv("MEMJAX_DEVICES", "1")
    jax.clear_caches()  # programs traced for 8 devices must not be reused
    assert main(["run", study, "--preset", "smoke", "--out", str(tmp_path / "1")] + extra) == 0
    jax.clear_caches()
    eight, one = _results(tmp_path / "8"), _results(tmp_path / "1")
    assert eight.keys() == one.keys()
    for name in one:
        if one[name].dtype.kind == "f":
            np.testing.assert_allclose(eight[name], one[name], rtol=1e-5, atol=1e-6,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(eight[name], one[name], err_msg=name)
    if study != "sensitivity":  # (its unrolled trajectory is no runner phase)
        placement = json.loads((tmp_path / "8" / "manifest.json").read_text())["placement"]
        assert all(p["devices"] > 1 and p["padded_members"] % p["devices"] == 0
                   for p in placement.values())
        one_device = json.loads((tmp_path / "1" / "manifest.json").read_text())["placement"]
        assert all(p["devices"] == 1 for p in one_device.values())
