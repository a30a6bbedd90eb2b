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
    recorded.run(EPOCHS, phase="recorded")
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
    runner.run(3, phase="phase", run_dir=whole)
    got = runner.dynamics_scores()
    np.testing.assert_array_equal(got["presentations"], 3 * mask)
    assert np.isnan(got["aum"][~mask]).all() and np.isfinite(got["aum"][mask]).all()
    saved = np.load(tmp_path / "whole" / "dynamics-phase.npz")
    np.testing.assert_array_equal(saved["forgetting_events"], got["forgetting_events"])
    assert saved["aum_mean"].shape == (64,)
    # the rows join back to the data set's examples, as every per-example export does
    np.testing.assert_array_equal(saved["index"], split.index)
    np.testing.assert_array_equal(saved["label"], split.y)
    np.testing.assert_array_equal(saved["image_sha1"], split.image_sha1())
    assert str(saved["order"]) == "position in the split"  # (a Runner built without `of`)
    part = RunDir(tmp_path / "part")
    part.start("test", {})
    Runner(MODEL, train, split, 10, members).run(2, phase="phase", run_dir=part)
    resumed = RunDir(tmp_path / "part", resume=True)
    resumed.start("test", {})
    again = Runner(MODEL, train, split, 10, members)
    again.run(3, phase="phase", run_dir=resumed)
    for name, value in again.dynamics_scores().items():
        np.testing.assert_array_equal(value, got[name], err_msg=name)


def _presentations(epochs, n, seed):
    """One member's presentations: per epoch a permutation of n examples plus one padding
    row repeating an index, some rows not counted; logits of two classes put p(y | x)
    near 0.999 (examples < n // 2, jitter 1e-4) or spread over (0.05, 0.95)."""
    rng = np.random.default_rng(seed)
    confident = np.arange(n) < n // 2
    p = np.where(confident, 0.999 + 1e-4 * rng.standard_normal((epochs, n)),
                 rng.uniform(0.05, 0.95, (epochs, n)))
    labels = rng.integers(0, 2, n)
    z = np.log(p / (1 - p))  # logit of the label minus the other one
    logits = np.zeros((epochs, n, 2), np.float32)
    logits[:, np.arange(n), labels] = z
    for e in range(epochs):
        order = np.append(rng.permutation(n), 0)
        counted = np.append(rng.random(n) < 0.8, False)
        yield e, order, counted, logits[e, order], labels[order]


def test_in_step_records_against_float64_two_pass_and_aum_after_the_first_epoch():
    """Welford's running mean and M2 in float32 against allenai/cartography's np.std
    (float64, two passes) of the same float32 p(y | x): within 1e-5 on confident examples
    (sums of p and p^2 are off by up to 7e-4 there) and on ordinary ones. AUM is the mean
    margin over the counted presentations after epoch 0 (asappresearch/aum's runner), or
    over all of them with include_first_epoch."""
    from memjax import dynamics
    n, epochs = 16, 20
    step = jax.jit(dynamics.update)
    for include_first in (False, True):
        records = jax.tree.map(lambda a: a[0], dynamics.empty(1, n, include_first))
        probs, margins = [[] for _ in range(n)], [[] for _ in range(n)]
        for e, order, counted, logits, labels in _presentations(epochs, n, seed=3):
            records = step(records, order, counted, logits, labels, e)
            p = np.asarray(jax.nn.softmax(logits))[np.arange(len(order)), labels]
            for row in np.flatnonzero(counted):
                probs[order[row]].append(np.float64(p[row]))
                if e > 0 or include_first:
                    margins[order[row]].append(float(logits[row, labels[row]])
                                               - float(logits[row, 1 - labels[row]]))
        got = dynamics.scores(jax.tree.map(lambda a: a[None], records))
        np.testing.assert_array_equal(got["presentations"][0], [len(q) for q in probs])
        np.testing.assert_allclose(got["variability"][0], [np.std(q) for q in probs],
                                   rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["confidence"][0], [np.mean(q) for q in probs],
                                   rtol=0, atol=1e-6)
        np.testing.assert_allclose(got["aum"][0], [np.mean(q) for q in margins],
                                   rtol=1e-5, atol=1e-5)
    assert Runner(MODEL, TrainConfig(members=1, batch_size=8, record_dynamics=True,
                                     aum_include_first_epoch=True),
                  load_dataset(DataConfig(train_size=16, validation_size=8)).train,
                  10).state.dynamics.include_first_epoch


def test_member_means_leave_out_the_members_that_never_learned():
    """-1 (never learned / not learned for good) is no epoch: one member that learned at
    epoch 9 and one that never did give 9, not 4; the fraction that did not is its own
    array. Members not presented the example count in neither."""
    from memjax import dynamics
    first = np.array([[9, -1, 3, 2], [-1, -1, -1, 4], [5, -1, -1, 6]])
    good = np.array([[9, -1, -1, 2], [-1, -1, -1, 5], [7, -1, -1, 6]])
    presentations = np.array([[10, 10, 10, 10], [10, 10, 0, 10], [0, 10, 10, 10]])
    got = dynamics.member_means({"presentations": presentations,
                                 "first_learned_epoch": first, "never_learned": first < 0,
                                 "learned_for_good_epoch": good,
                                 "not_learned_for_good": good < 0})
    np.testing.assert_array_equal(got["first_learned_epoch_mean"], [9, np.nan, 3, 4])
    np.testing.assert_array_equal(got["never_learned_mean"], [0.5, 1, 0.5, 0])
    np.testing.assert_array_equal(got["learned_for_good_epoch_mean"], [9, np.nan, np.nan, 13 / 3])
    np.testing.assert_array_equal(got["not_learned_for_good_mean"], [0.5, 1, 1, 0])


def test_a_sweeps_dynamics_say_what_each_member_is(tmp_path):
    """capacity's phase mixes members of several noise kinds and levels: its dynamics file
    names each member's noise, and its rows are the data set's examples in its order."""
    from memjax.cli import main

    out = tmp_path / "run"
    assert main(["run", "capacity", "--preset", "smoke", "--record", "dynamics", "--set",
                 "noise_levels=0.5", "--set", "widths=8", "--set", "bucket_limits=8",
                 "--out", str(out)]) == 0
    saved = np.load(next(out.glob("dynamics-*.npz")))
    members = len(saved["member_ids"])
    assert saved["member_input_noise"].shape == saved["member_label_noise"].shape == (members,)
    assert set(saved["member_label_noise"]) == {0.0, 0.5}  # real/randX and randY members
    data = load_dataset(DataConfig(train_size=len(saved["index"])))
    assert str(saved["order"]) == data.order["train"]
    np.testing.assert_array_equal(saved["image_sha1"], data.train.image_sha1())
