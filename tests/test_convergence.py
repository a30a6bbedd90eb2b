"""Time to convergence: first epochs and censoring (memjax.convergence), and the runner's
freezing of converged members against a member trained without it."""
import numpy as np

from memjax import convergence
from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.data import load_dataset
from memjax.members import Members
from memjax.runner import Runner
from memjax.sharding import member_mesh


def test_first_epochs_and_censoring_analytic():
    acc = np.array([[0.5, 0.9, 0.2], [1.0, 0.95, 0.3], [0.9, 1.0, 0.4]])  # epochs x members
    first = np.full(3, convergence.NOT_CONVERGED)
    for e, a in enumerate(acc, start=1):
        first = convergence.first_epochs(first, a, e, 1.0)
    # member 0 reached 100 % at epoch 2 and keeps that epoch though it dropped at epoch 3
    assert first.tolist() == [2, 3, -1]
    out = convergence.epochs_to_converge(first, cap=3)
    assert out["censored"].tolist() == [False, False, True]
    assert np.isnan(out["epochs"][2]) and out["epochs"][:2].tolist() == [2.0, 3.0]
    first = convergence.first_epochs(first, np.array([0.0, 0.0, 0.96]), 4, 0.95)
    assert first.tolist() == [2, 3, 4]  # threshold configurable


def test_converged_members_are_frozen_and_slow_ones_censored():
    """Member 0 fits 32 digits and is frozen from then on: its parameters at the end are
    those of a run stopped at its first epoch; member 1 (lr 1e-6) is censored."""
    data = load_dataset(DataConfig(train_size=32, validation_size=16)).train
    train = TrainConfig(members=2, epochs=40, batch_size=16, momentum=0.9)
    members = Members(np.arange(2), learning_rate=np.array([0.05, 1e-6]))
    runner = Runner(ModelConfig(hidden=(64,)), train, data, 10, members, mesh=member_mesh(1))
    history = runner.run(40, phase="converge", converge_at=1.0)
    first = int(history["first_epoch"][-1][0])
    assert first > 0, "member 0 should fit 32 examples"
    assert history["first_epoch"][-1][1] == convergence.NOT_CONVERGED
    assert len(history["first_epoch"]) == 40  # member 1 never converged: all epochs ran
    stopped = Runner(ModelConfig(hidden=(64,)), train, data, 10, members, mesh=member_mesh(1))
    stopped.run(first, phase="until-member-0-converged")
    np.testing.assert_array_equal(
        np.asarray(runner.member_state().variables["params"]["Dense_0"]["kernel"][0]),
        np.asarray(stopped.member_state().variables["params"]["Dense_0"]["kernel"][0]))
    assert history["train_accuracy"][-1][0] == 1.0
    out = convergence.epochs_to_converge(history["first_epoch"][-1], cap=40)
    assert out["censored"].tolist() == [False, True]


def test_a_smaller_program_only_where_it_holds_the_active_members_and_pays():
    from memjax.convergence import program_size

    # halves while the active members fit and the devices split it evenly
    assert program_size(16, 3, 1, None, 1.0, 5.0) == 4
    assert program_size(16, 3, 4, None, 1.0, 5.0) == 4
    assert program_size(16, 3, 8, None, 1.0, 5.0) == 8
    assert program_size(16, 9, 1, None, 1.0, 5.0) == 16
    assert program_size(12, 1, 1, None, 1.0, 5.0) == 1  # 12 -> 6 -> 3 -> 1
    assert program_size(12, 1, 2, None, 1.0, 5.0) == 6  # (3 members do not split over 2)
    # inside a run: 16 -> 4 saves 3/4 of each later epoch against one compile
    assert program_size(16, 3, 1, 8, 1.0, 5.0) == 4  # 7 x 0.75 s = 5.25 s > 5 s
    assert program_size(16, 3, 1, 7, 1.0, 5.0) == 16  # 6 x 0.75 s = 4.5 s
    assert program_size(16, 3, 1, 1, 100.0, 0.0) == 16  # nothing left to save
