"""Training-dynamics records kept in the trainer's state against scores computed from the
per-epoch logits of a replayed run (memjax.metrics.scores), and their bookkeeping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import memjax.metrics as mm
from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.data import load_dataset
from memjax.results import RunDir
from memjax.members import Members
from memjax.runner import Runner
from memjax.sharding import member_mesh

MODEL = ModelConfig(hidden=(16,))
EPOCHS = 6


@pytest.fixture(scope="module")
def split():
    return load_dataset(DataConfig(train_size=64, validation_size=16)).train


def test_records_equal_scores_of_the_replayed_logits(split):
    """One full-batch step per epoch: the step's logits are the network's at the start of
    the epoch, so a replay that evaluates before every epoch sees the same logits."""
    train = TrainConfig(members=3, epochs=EPOCHS, batch_size=64, learning_rate=0.5,
                        record_dynamics=True)
    recorded = Runner(MODEL, train, split, 10, mesh=member_mesh(1))
    recorded.run(EPOCHS, desc="recorded")
    got = recorded.dynamics_scores()
    replay = Runner(MODEL, TrainConfig(**{**train.__dict__, "record_dynamics": False}), split,
                    10, mesh=member_mesh(1))
    logits = []
    for _ in range(EPOCHS):
        logits.append(jax.vmap(replay.apply, (0, None))(replay.variables,
                                                        jnp.asarray(split.x) / 255.0))
        replay.epoch()
    logits = jnp.stack(logits)  # [E, M, N, C]
    y = jnp.asarray(split.y)
    correct = jnp.argmax(logits, -1) == y
    prob = jax.nn.softmax(logits)[..., jnp.arange(len(y)), y]
    np.testing.assert_array_equal(got["presentations"], EPOCHS)
    events = mm.forgetting_events(correct)
    np.testing.assert_array_equal(got["forgetting_events"], events.events)
    np.testing.assert_array_equal(got["never_learned"], events.never_learned)
    np.testing.assert_array_equal(got["first_learned_epoch"], mm.first_learned_epoch(correct))
    np.testing.assert_array_equal(got["learned_for_good_epoch"],
                                  mm.learned_for_good_epoch(correct))
    np.testing.assert_allclose(got["aum"], mm.aum(mm.margin(logits, y)), rtol=1e-4, atol=1e-4)
    maps = mm.cartography(prob, correct)
    for name in ("confidence", "variability", "correctness"):
        np.testing.assert_allclose(got[name], maps[name], rtol=1e-4, atol=1e-4, err_msg=name)
    assert got["forgetting_events"].sum() > 0 and (got["first_learned_epoch"] > 1).any()


def test_records_count_each_members_own_presentations_and_survive_resume(split, tmp_path):
    """Minibatches with padding and example masks: every example of a member's subset is
    presented once per epoch, others never; a resumed phase continues the records."""
    train = TrainConfig(members=2, epochs=3, batch_size=24, learning_rate=0.1,
                        record_dynamics=True)
    mask = np.zeros((2, 64), bool)
    mask[0, :40], mask[1, 10:] = True, True
    members = Members(np.arange(2), example_mask=mask)
    whole = RunDir(tmp_path / "whole")
    whole.start("test", {})
    runner = Runner(MODEL, train, split, 10, members)
    runner.run(3, desc="phase", run_dir=whole)
    got = runner.dynamics_scores()
    np.testing.assert_array_equal(got["presentations"], 3 * mask)
    assert np.isnan(got["aum"][~mask]).all() and np.isfinite(got["aum"][mask]).all()
    saved = np.load(tmp_path / "whole" / "dynamics-phase.npz")
    np.testing.assert_array_equal(saved["forgetting_events"], got["forgetting_events"])
    assert saved["aum_mean"].shape == (64,)
    part = RunDir(tmp_path / "part")
    part.start("test", {})
    Runner(MODEL, train, split, 10, members).run(2, desc="phase", run_dir=part)
    resumed = RunDir(tmp_path / "part", resume=True)
    resumed.start("test", {})
    again = Runner(MODEL, train, split, 10, members)
    again.run(3, desc="phase", run_dir=resumed)
    for name, value in again.dynamics_scores().items():
        np.testing.assert_array_equal(value, got[name], err_msg=name)
