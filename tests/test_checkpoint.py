"""Checkpoints, resume and divergence isolation against uninterrupted runs and members
trained alone."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.checkpoint import PhaseCheckpoints
from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.errors import MemjaxError
from memjax.models import build_network
from memjax.results import RunDir
from memjax.members import Members
from memjax.runner import Runner
from memjax.train import make_train_epoch


def fit(state, epoch, seed, x, y, epochs, checkpoints=None):
    """The runner's loop reduced to what checkpoints see: train, save at the interval and
    after the last epoch."""
    for i in range(epochs):
        state, _ = epoch(state, seed, x, y)
        if checkpoints is not None:
            checkpoints.save(state, last=i == epochs - 1)
    return state


@pytest.fixture(scope="module")
def setup():
    d = load_dataset(DataConfig(train_size=200, validation_size=20))
    network = build_network(ModelConfig(hidden=(8,)), 10)
    tx = make_optimizer(momentum=0.9)  # momentum: the optimizer state must round-trip too
    epoch = make_train_epoch(network, tx, batch_size=64)
    return d, network, tx, epoch, jnp.asarray(d.train.x), jnp.asarray(d.train.y)


def _fresh(setup, lr=0.05, members=3):
    d, network, tx, *_ = setup
    return init_ensemble(network, tx, jnp.zeros((1, 28, 28, 1)), seed=5,
                         member_ids=np.arange(members), learning_rate=lr)


def _assert_identical(a, b):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_resumed_fit_is_bit_identical_to_uninterrupted(setup, tmp_path):
    _, _, _, epoch, x, y = setup
    clean = fit(_fresh(setup), epoch, 5, x, y, 4)
    # A run that checkpoints every 2 epochs, trains a third epoch, then dies unsaved.
    with PhaseCheckpoints(tmp_path / "phase", every=2) as ckpt:
        state = fit(_fresh(setup), epoch, 5, x, y, 2, checkpoints=ckpt)
        state, _ = epoch(state, 5, x, y)
    # Resume in a "new process": fresh state as the template, restore, train what is left.
    with PhaseCheckpoints(tmp_path / "phase", every=2) as ckpt:
        state, host = ckpt.restore(_fresh(setup))
        assert int(state.epoch) == 2
        state = fit(state, epoch, 5, x, y, 4 - int(state.epoch), checkpoints=ckpt)
    _assert_identical(state, clean)


def test_corrupt_latest_checkpoint_resumes_from_previous(setup, tmp_path, capsys):
    _, _, _, epoch, x, y = setup
    with PhaseCheckpoints(tmp_path / "phase", host_state=lambda: {"n": 7}) as ckpt:
        state = fit(_fresh(setup), epoch, 5, x, y, 1, checkpoints=ckpt)
        first = jax.device_get(state)
        fit(state, epoch, 5, x, y, 1, checkpoints=ckpt)
    for f in (tmp_path / "phase" / "2" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with PhaseCheckpoints(tmp_path / "phase") as ckpt:
        restored, host = ckpt.restore(_fresh(setup))
    err = capsys.readouterr().err
    assert "checkpoint" in err and "unreadable" in err and "resuming from epoch 1" in err
    assert int(restored.epoch) == 1 and host == {"n": 7}
    _assert_identical(restored, first)
    assert not (tmp_path / "phase" / "2").exists()
    assert (tmp_path / "phase" / "2.unreadable" / "state").is_dir()  # kept, out of the way


def test_checkpoint_whose_contents_changed_is_rejected(setup, tmp_path, capsys):
    _, _, _, epoch, x, y = setup
    with PhaseCheckpoints(tmp_path / "phase") as ckpt:
        state = fit(_fresh(setup), epoch, 5, x, y, 1, checkpoints=ckpt)
        fit(state, epoch, 5, x, y, 1, checkpoints=ckpt)
    # Silent damage: the data still reads, but it is not what was saved (simulated by
    # changing the stored checksum, which must then disagree with the contents).
    host = tmp_path / "phase" / "2" / "host" / "metadata"
    saved = json.loads(host.read_text())
    host.write_text(json.dumps({**saved, "_fingerprint": saved["_fingerprint"] ^ 1}))
    with PhaseCheckpoints(tmp_path / "phase") as ckpt:
        restored, _ = ckpt.restore(_fresh(setup))
    assert "do not match their checksum" in capsys.readouterr().err
    assert int(restored.epoch) == 1


def test_changed_host_records_are_damage(setup, tmp_path, capsys):
    _, _, _, epoch, x, y = setup
    with PhaseCheckpoints(tmp_path / "phase", host_state=lambda: {"lines": 3}) as ckpt:
        state = fit(_fresh(setup), epoch, 5, x, y, 1, checkpoints=ckpt)
        fit(state, epoch, 5, x, y, 1, checkpoints=ckpt)
    host = tmp_path / "phase" / "2" / "host" / "metadata"
    host.write_text(json.dumps({**json.loads(host.read_text()), "lines": 4}))
    with PhaseCheckpoints(tmp_path / "phase") as ckpt:
        restored, records = ckpt.restore(_fresh(setup))
    assert "do not match their checksum" in capsys.readouterr().err
    assert int(restored.epoch) == 1 and records == {"lines": 3}


def test_checkpoints_of_another_model_are_kept_and_refused(setup, tmp_path):
    """A state of other shapes (the model changed, or memjax did, between the kill and
    --resume) is not damage: nothing is deleted and the error says what to do."""
    _, _, tx, epoch, x, y = setup
    with PhaseCheckpoints(tmp_path / "phase") as ckpt:
        state = fit(_fresh(setup), epoch, 5, x, y, 1, checkpoints=ckpt)
        fit(state, epoch, 5, x, y, 1, checkpoints=ckpt)
    wider = init_ensemble(build_network(ModelConfig(hidden=(16,)), 10), tx,
                          jnp.zeros((1, 28, 28, 1)), seed=5, member_ids=np.arange(3),
                          learning_rate=0.05)
    with PhaseCheckpoints(tmp_path / "phase") as ckpt:
        with pytest.raises(MemjaxError, match="they are kept.*--overwrite") as refused:
            ckpt.restore(wider)
    # read from the checkpoint's metadata, before orbax reads (and fails on) its arrays
    assert "Dense_0/bias is (3, 8) float32 in the checkpoint, (3, 16) float32 in this run" \
        in str(refused.value)
    assert sorted(p.name for p in (tmp_path / "phase").iterdir()) == ["1", "2"]


def test_fingerprint_sees_every_bit():
    from memjax.checkpoint import fingerprint

    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([True, False]),
            "c": jnp.array([jnp.nan, 1.0], jnp.bfloat16)}
    base = int(fingerprint(tree))
    assert int(fingerprint(jax.tree.map(jnp.copy, tree))) == base
    flipped = tree["a"].at[1, 2].set(jnp.nextafter(5.0, 6.0))
    assert int(fingerprint({**tree, "a": flipped})) != base
    assert int(fingerprint({**tree, "b": jnp.array([False, True])})) != base


def test_diverging_member_is_frozen_and_others_train_as_if_alone(setup):
    _, network, tx, epoch, x, y = setup
    lr = np.array([0.05, 1e30, 0.05], np.float32)
    init = jax.device_get(_fresh(setup, lr=lr))
    first = fit(_fresh(setup, lr=lr), epoch, 5, x, y, 1)
    assert np.asarray(first.diverged).tolist() == [False, True, False]
    frozen = jax.device_get(jax.tree.map(lambda a: a[1], first.variables["params"]))
    state = fit(first, epoch, 5, x, y, 1)
    assert np.asarray(state.diverged).tolist() == [False, True, False]
    # The diverged member moved once (its first loss was finite) and then never again.
    params = jax.tree.map(lambda a: np.asarray(a)[1], state.variables["params"])
    _assert_identical(params, frozen)
    assert not np.array_equal(frozen["Dense_0"]["kernel"],
                              init.variables["params"]["Dense_0"]["kernel"][1])
    # The healthy members are exactly what they would be without the bad one beside them.
    alone = init_ensemble(network, tx, jnp.zeros((1, 28, 28, 1)), seed=5,
                          member_ids=np.array([0, 2]), learning_rate=0.05)
    alone = fit(alone, epoch, 5, x, y, 2)
    _assert_identical(jax.tree.map(lambda a: np.asarray(a)[[0, 2]], state.variables),
                      alone.variables)


def test_divergence_reported_in_summary_and_manifest(tmp_path):
    d = load_dataset(DataConfig(train_size=128, validation_size=16))
    run_dir = RunDir(tmp_path / "run")
    run_dir.start("test", {})
    runner = Runner(ModelConfig(hidden=(8,)), TrainConfig(members=3, batch_size=64), d.train, 10,
                    Members(np.arange(3), learning_rate=np.array([0.05, 0.05, 1e30])))
    runner.run(1, phase="real", desc="real (1/3)", run_dir=run_dir)
    assert np.asarray(runner.state.diverged).tolist() == [False, False, True]
    run_dir.write_json("summary.json", {"real": {"mean_error": 0.5}})
    run_dir.finish()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert manifest["diverged_members"] == {"real": [2]}
    assert summary["diverged_members"] == {"real": [2]} and summary["real"]["mean_error"] == 0.5
    assert manifest["status"] == "finished"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_metrics_not_duplicated_on_resume(tmp_path):
    run_dir = RunDir(tmp_path)
    run_dir.start("test", {"a": 1})
    for i in range(3):
        run_dir.log_metrics({"i": i})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"i": 3, "tor')  # killed mid-write
    resumed = RunDir(tmp_path, resume=True)
    resumed.start("test", {"a": 1})
    resumed.restore_progress({"metrics_records": 1})  # a checkpoint taken after record 0
    for i in range(1, 5):
        resumed.log_metrics({"i": i})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["i"] for line in lines] == [0, 1, 2, 3, 4]
    assert len(json.loads((tmp_path / "manifest.json").read_text())["resumed"]) == 1


def test_overflow_on_the_last_step_is_flagged(setup):
    """An update that overflows on an epoch's last step has no next loss to reveal it; the
    end-of-epoch check of the parameters must."""
    d, network, _, _, _, _ = setup
    tx = make_optimizer()
    x, y = jnp.asarray(d.train.x[:64]), jnp.asarray(d.train.y[:64])
    state = init_ensemble(network, tx, jnp.zeros((1, 28, 28, 1)), seed=5,
                          member_ids=np.arange(2), learning_rate=np.array([0.1, 3e38]),
                          weight_decay=10.0)
    epoch = make_train_epoch(network, tx, batch_size=64)  # one step per epoch
    state, metrics = epoch(state, 0, x, y)
    assert np.asarray(state.diverged).tolist() == [False, True]
    assert np.asarray(metrics["diverged"]).tolist() == [False, True]


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _run_phases(clock, save_clock, phases):
    """Simulated phases (lists of epoch seconds) checkpointed by `save_clock`: the epochs
    at which each saved, and the most work a kill at any moment would lose."""
    saves, worst, redo = [], 0.0, 0.0  # redo: finished phases' unsaved seconds
    for phase, epochs in enumerate(phases):
        since = clock.t
        for e, seconds in enumerate(epochs):
            clock.t += seconds
            worst = max(worst, redo + clock.t - since)  # a kill just before the save
            assert save_clock.unsaved() == pytest.approx(redo + clock.t - since)
            if save_clock.due(last=e == len(epochs) - 1):
                save_clock.saved()
                saves.append((phase, e + 1))
                since = clock.t
        redo += clock.t - since
        save_clock.phase_ended()
    return saves, worst


def test_save_clock_bounds_the_lost_work_and_skips_short_phases():
    from memjax.checkpoint import SaveClock

    # three one-epoch phases of 5 s (the paper's consistency): nothing is written
    clock = _Clock()
    saves, worst = _run_phases(clock, SaveClock(10, now=clock), [[5.0]] * 3)
    assert saves == [] and worst == 15.0
    # one long phase of 1000 one-minute epochs: a checkpoint every 10 minutes, and the last
    clock = _Clock()
    saves, worst = _run_phases(clock, SaveClock(10, now=clock), [[60.0] * 1000])
    assert [e for _, e in saves] == list(range(10, 1001, 10)) and worst == 600.0
    # many phases of 4 min: never more than 10 min (and an epoch) to redo, and few saves
    for epochs in ([240.0], [60.0] * 4, [7.0] * 35):
        clock = _Clock()
        saves, worst = _run_phases(clock, SaveClock(10, now=clock), [epochs] * 30)
        assert worst <= 600.0 + max(epochs), (epochs, worst)
        assert 10 <= len(saves) <= 30, (epochs, len(saves))


def test_a_run_checkpointed_by_time_writes_nothing_for_short_phases(tmp_path):
    from memjax.cli import main

    out = tmp_path / "run"
    assert main(["run", "consistency", "--preset", "smoke", "--out", str(out),
                 "--keep-checkpoints"]) == 0
    phases = sorted((out / "checkpoints").iterdir())
    assert len(phases) == 3 and not any(any(p.iterdir()) for p in phases)
