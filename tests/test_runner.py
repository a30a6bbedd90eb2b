"""The one training path: placement with dummy members, measurements, convergence and
checkpoints of memjax.runner, against one device and against the trainer used directly."""
import json

import jax
import numpy as np
import pytest

from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.data import load_dataset
from memjax.results import RunDir
from memjax.members import Members
from memjax.runner import Runner
from memjax.sharding import member_mesh
from memjax.views import size_masks

MODEL = ModelConfig(hidden=(16,))
TRAIN = TrainConfig(members=11, epochs=2, batch_size=64, learning_rate=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(train_size=256, validation_size=64))


def _measure(runner, epoch):
    val = runner.evaluate(runner.x[:64], runner.y[:64])["correct"].mean(1)
    return {"own": runner.own_accuracy(), "val": val, "padded_sum": runner.variables[
        "params"]["Dense_0"]["bias"].sum(-1)}


@pytest.fixture(scope="module")
def eleven(data):
    """11 members on 8 devices (5 dummies) and on one device, with label noise, input noise
    and training sets of 64 to 192 of the 256 examples (own accuracy on a smaller copy)."""
    members = Members(np.arange(11), label_noise=np.linspace(0, 1, 11),
                      input_noise=np.linspace(1, 0, 11),
                      example_mask=size_masks(np.linspace(64, 192, 11).astype(int), 256, 0))
    out = {}
    for devices in (8, 1):
        runner = Runner(MODEL, TRAIN, data.train, 10, members, mesh=member_mesh(devices))
        out[devices] = runner, runner.run(TRAIN.epochs, phase="eleven", measure=_measure)
    return out


def test_dummy_members_are_stored_once_and_never_shown(eleven):
    runner, history = eleven[8]
    kernel = runner.state.variables["params"]["Dense_0"]["kernel"]
    assert kernel.shape[0] == 16 and len(kernel.sharding.device_set) == 8
    assert {s.data.shape[0] for s in kernel.addressable_shards} == {2}
    assert runner.member_state().variables["params"]["Dense_0"]["kernel"].shape[0] == 11
    assert {k: v.shape for k, v in history.items()} == {
        k: (2, 11) for k in ("train_loss", "train_accuracy", "own", "val", "padded_sum")}
    assert runner.placement() == {"devices": 8, "members_per_device": 2, "member_chunk": 2,
                                  "groups": 1, "padded_members": 16, "members": 11,
                                  "dummy_members": 5}


def test_eight_devices_give_one_devices_results(eleven):
    (r8, h8), (r1, h1) = eleven[8], eleven[1]
    assert r1.padded == 11
    for name in h1:
        np.testing.assert_allclose(h8[name], h1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for u, v in zip(jax.tree_util.tree_leaves(r8.member_state()),
                    jax.tree_util.tree_leaves(r1.member_state())):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)


def test_evaluate_some_members_on_eight_devices(eleven):
    """Runner.evaluate(member_rows=...) gives those members' rows of the whole evaluation, the
    members gathered from the 8 devices that hold them."""
    runner = eleven[8][0]
    x, y = runner.x[:64], runner.y[:64]
    every = runner.evaluate(x, y)
    some = runner.evaluate(x, y, member_rows=np.array([9, 2, 10]))
    for k in ("correct", "loss"):
        assert some[k].shape == (3, 64)
        np.testing.assert_allclose(some[k], np.asarray(every[k])[[9, 2, 10]], rtol=1e-6)


def test_convergence_stops_members_and_the_phase(data):
    """converge_at: each member's first epoch at the threshold is recorded, its learning
    rate set to 0 (it stops moving), and the phase ends once every member has converged."""
    train = TrainConfig(members=3, epochs=30, batch_size=32, learning_rate=0.1)
    runner = Runner(ModelConfig(hidden=(64,)), train, data.train.take(64), 10,
                    Members(np.arange(3), widths=np.array([2, 64, 64])), mesh=member_mesh(1))
    history = runner.run(30, phase="converge", converge_at=1.0)
    first = history["first_epoch"][-1]
    assert first[1] > 0 and first[2] > 0 and first[0] == -1  # 2 units cannot fit 64 digits
    assert len(history["train_accuracy"]) == 30  # member 0 never converged: no early stop
    converged = history["first_epoch"] > 0
    assert np.all(history["train_accuracy"][converged] == 1.0)
    # once converged, a member's accuracy never changes again (it no longer trains)
    for m in (1, 2):
        e = first[m] - 1
        assert np.all(history["train_accuracy"][e:, m] == history["train_accuracy"][e, m])
    np.testing.assert_allclose(np.asarray(runner.state.learning_rate), [0.1, 0.0, 0.0])


def test_converged_members_leave_the_computation(data):
    """Once 3 of 4 members have converged the epoch trains the last one alone, which
    trains exactly as it would beside them, and the converged ones no longer move."""
    train = TrainConfig(members=4, epochs=30, batch_size=32, learning_rate=0.1)
    members = Members(np.arange(4), widths=np.array([64, 64, 64, 2]))
    runner = Runner(ModelConfig(hidden=(64,)), train, data.train.take(64), 10, members,
                    mesh=member_mesh(1))
    history = runner.run(30, phase="converge", converge_at=1.0)
    first = history["first_epoch"][-1]
    assert (first[:3] > 0).all() and first[3] == -1 and first[:3].max() < 30
    assert np.isnan(history["train_loss"][-1][:3]).all()
    alone = Runner(ModelConfig(hidden=(64,)), train, data.train.take(64), 10,
                   Members(np.array([3]), widths=np.array([2])), mesh=member_mesh(1))
    alone.run(31, phase="alone")
    # inside `run` a smaller program is compiled only when the epochs left pay for it (here
    # they do not); an epoch outside it takes the smallest that holds the active members
    converged = [np.asarray(leaf) for leaf in
                 jax.tree_util.tree_leaves(runner.member_state().variables)]
    runner.epoch()
    assert runner.training_members == 1
    for u, v, w in zip(jax.tree_util.tree_leaves(runner.member_state().variables),
                       jax.tree_util.tree_leaves(alone.member_state().variables), converged):
        np.testing.assert_allclose(np.asarray(u)[3], np.asarray(v)[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(u)[:3], np.asarray(w)[:3])


def test_checkpointed_history_resumes_and_placement_is_recorded(data, tmp_path, capsys):
    train = TrainConfig(members=3, epochs=3, batch_size=64, learning_rate=0.05)
    run_dir = RunDir(tmp_path / "run", keep_checkpoints=True)
    run_dir.start("test", {})
    whole = Runner(MODEL, train, data.train, 10).run(3, phase="p", run_dir=run_dir,
                                                      measure=_measure)
    run_dir.finish()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["placement"]["p"][
        "members"] == 3
    # a second run that stops after 2 epochs (checkpointed each epoch: by time, so short a
    # phase would write none), then is resumed to 3
    part = RunDir(tmp_path / "part", checkpoint_every=1)
    part.start("test", {})
    Runner(MODEL, train, data.train, 10).run(2, phase="p", run_dir=part, measure=_measure)
    resumed = RunDir(tmp_path / "part", resume=True, checkpoint_every=1)
    resumed.start("test", {})
    history = Runner(MODEL, train, data.train, 10).run(3, phase="p", run_dir=resumed,
                                                        measure=_measure)
    assert "resumed from the checkpoint of epoch 2" in capsys.readouterr().err
    for name in whole:
        np.testing.assert_array_equal(history[name], whole[name], err_msg=name)
