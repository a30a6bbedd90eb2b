"""Declared phases and their measurements: schedules, what a phase's outcome holds, a
user's own measurement, the errors of a bad declaration, and what a run records."""
import dataclasses

import jax
import numpy as np
import pytest

from memjax import cost
from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.data import load_dataset
from memjax.errors import MemjaxError
from memjax.evaluation import member_accuracy
from memjax.measurements import (REGISTRY, AtTheEnd, Convergence, CriticalSamples, Dynamics,
                                 Evaluation, Measurement, OwnAccuracy, register)
from memjax.members import Members
from memjax.phase import Data, Phase
from memjax.runner import Runner

DATA = DataConfig(train_size=192, validation_size=64)
MODEL = ModelConfig(hidden=(16,))
TRAIN = TrainConfig(members=3, epochs=3, batch_size=64, learning_rate=0.1)


def test_schedule_every_n_epochs_and_after_the_last():
    four = OwnAccuracy(every=4)
    assert [e for e in range(1, 11) if four.due(e, 10)] == [4, 8, 10]
    assert four.runs(10) == 3 and OwnAccuracy().runs(10) == 10
    assert OwnAccuracy(every=100).runs(100) == 1
    at_end = Evaluation("c", every=None)
    assert not any(at_end.due(e, 5) for e in range(1, 6)) and at_end.runs(5) == 1


def test_the_builtin_measurements_are_registered_by_name():
    assert {"evaluation", "own_accuracy", "critical_samples", "convergence",
            "dynamics"} <= set(REGISTRY)
    with pytest.raises(ValueError, match="registered already"):
        register("evaluation")(Evaluation)


@pytest.mark.parametrize("make, message", [
    (lambda: Phase("a b", MODEL, TRAIN, Data(DATA)), "phase id 'a b'"),
    (lambda: Phase("p", MODEL, TRAIN, Data(DATA), measurements=(
        Evaluation("x"), OwnAccuracy("x"))), "two measurements share a name"),
    (lambda: Evaluation("x", every=0), "every N >= 1 epochs or None"),
    (lambda: Evaluation("x", on="test"), "'validation' or 'train'"),
    (lambda: Convergence(1.5), "threshold is in"),
    (lambda: Data(DATA, noise="randZ"), "unknown noise 'randZ'"),
])
def test_a_bad_declaration_says_what_is_wrong(make, message):
    with pytest.raises((MemjaxError, ValueError), match=message):
        make()


def test_a_phase_declared_for_other_data_is_refused():
    phase = Phase("p", MODEL, TRAIN, Data(DATA))
    other = load_dataset(dataclasses.replace(DATA, train_size=128))
    with pytest.raises(MemjaxError, match="declared for 192 training examples; the data has 128"):
        Runner.of(phase, other)


@dataclasses.dataclass(frozen=True)
class MeanLoss(Measurement):
    """A user's measurement: each member's mean validation loss, every other epoch."""

    name: str = "validation_loss"
    every: int | None = 2
    outputs: tuple = ("validation_loss",)

    def bind(self, runner, dataset):
        x, y = jax.device_put(dataset.validation.x), jax.device_put(dataset.validation.y)
        return lambda epoch: {self.name: runner.evaluate(x, y)["loss"].mean(1)}

    def steps(self, phase, shape):
        return []


@dataclasses.dataclass(frozen=True)
class LabelSum(AtTheEnd):
    """A user's end-of-phase measurement: the labels summed, by every member."""

    name: str = "labels"
    outputs: tuple = ("label_sum",)

    def programs(self, apply_fn, train):
        return {"label_sum": lambda v, x, y: jax.vmap(lambda _: y.sum())(
            jax.tree_util.tree_leaves(v)[0])}


def test_a_phase_runs_its_measurements_on_their_schedules():
    dataset = load_dataset(DATA)
    phase = Phase("p", MODEL, TRAIN, Data(DATA, "randY", 0.5), measurements=(
        OwnAccuracy(every=2), MeanLoss(), Evaluation("correct", on="train", every=None,
                                                     per_example=True), LabelSum()))
    runner = Runner.of(phase, dataset)
    outcome = runner.execute()
    h = outcome.history
    assert h["train_accuracy"].shape == h["validation_loss"].shape == (3, 3)
    assert np.isnan(h["train_accuracy"][0]).all() and np.isnan(h["validation_loss"][0]).all()
    assert np.isfinite(h["train_accuracy"][1:]).all() and np.isfinite(h["validation_loss"][1:]).all()
    # after the last epoch: each member's accuracy on its own (noised) set, computed apart
    split, _ = phase.data.split(dataset)
    assert split.noisy.sum() == 96
    own = member_accuracy(runner.apply, runner.variables, split.x, split.y)["accuracy"]
    np.testing.assert_allclose(h["train_accuracy"][-1], own, rtol=1e-6)
    correct = np.asarray(jax.vmap(lambda v: runner.apply(v, split.x / 255.0).argmax(-1))(
        runner.variables)) == split.y
    np.testing.assert_array_equal(outcome.final["correct"], correct)
    np.testing.assert_array_equal(outcome.final["label_sum"], [split.y.sum()] * 3)


def test_the_dynamics_measurement_records_them_and_gives_the_scores():
    phase = Phase("p", MODEL, dataclasses.replace(TRAIN, epochs=2), Data(DATA),
                  Members(np.arange(2)), measurements=(Dynamics(),))
    assert phase.training.record_dynamics and not phase.train.record_dynamics
    outcome = Runner.of(phase, load_dataset(DATA)).execute()
    assert set(outcome.final) == set(Dynamics().outputs)
    assert outcome.final["presentations"].shape == (2, 192)
    assert (outcome.final["presentations"] == 2).all()


def test_record_counts_nothing_outside_recording():
    calls = []
    cost.record("p/x", lambda a: calls.append(a) or a, np.ones(3))
    assert not calls
    with cost.recording() as ran:
        cost.record("p/x", lambda a: a * 2, np.ones(3))
        cost.record("p/x", lambda a: a * 2, np.ones(3))
    assert ran["p/x"][1] == 2 and ran["p/x"][0].flops == 3


def test_the_plan_prices_each_measurement_at_its_declared_precision():
    """A bf16 CNN phase: its evaluation runs in bf16 (the compute dtype), its LASS search on
    the float32 network; each planned step carries the precision its measurement declares."""
    train = TrainConfig(members=2, epochs=1, batch_size=32, compute_dtype="bfloat16")
    phase = Phase("bf16", ModelConfig(kind="cnn", conv_channels=4),
                  train, Data(DataConfig(name="cifar10", train_size=64, validation_size=32)),
                  measurements=(Evaluation("validation_accuracy"),
                                CriticalSamples(examples=8, protocol="exhaustive")))
    steps = {s.program: s.precision for s in cost.phase_steps(phase)}
    assert steps == {"bf16/train": "bfloat16", "bf16/validation_accuracy": "bfloat16",
                     "bf16/csr": "float32"}
