"""A phase: one ensemble trained for some epochs on some data, and what is measured on it.

A study is a list of phases (its `phases(config)`) and what it makes of their outcomes.
The same values drive the run (`Runner.of(phase, dataset).execute(run_dir)`), the plan
(`memjax.cost.phase_steps`: the programs the phase compiles and how often it runs each)
and resume (the phase id keys its checkpoints):

    phase = Phase("width-512", model, train, Data(config.data), members, epochs=20,
                  measurements=(Evaluation("validation accuracy", on="validation"),))
    outcome = Runner.of(phase, dataset).execute(run_dir)
    outcome.history["validation_accuracy"]  # [epochs, M]
"""
from __future__ import annotations

import dataclasses

import numpy as np

from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.data import DataShape, Dataset, Split, data_shape, with_noise
from memjax.data.noise import INPUT_NOISE_STATS
from memjax.errors import MemjaxError
from memjax.members import Members
from memjax.results import check_phase_id


@dataclasses.dataclass(frozen=True)
class Data:
    """The data a phase trains on: the data set, the noise applied to its training split
    (memjax.data.with_noise: "real", "randX" or "randY" on `fraction` of the examples, randX
    drawn with `input_stats`) and, with `one_class_per_example`, each training example its
    own class (labels 0..N-1, N classes: E2's per-example condition)."""

    config: DataConfig
    noise: str = "real"
    fraction: float = 1.0
    input_stats: str = "per_pixel"
    one_class_per_example: bool = False

    def __post_init__(self):
        if self.noise not in ("real", "randX", "randY"):
            raise MemjaxError(f"unknown noise {self.noise!r}; known: real, randX, randY")
        if self.input_stats not in INPUT_NOISE_STATS:
            raise MemjaxError(f"input noise statistics must be one of {INPUT_NOISE_STATS}")

    @property
    def seed(self) -> int:
        return self.config.data_seed

    @property
    def x_dtype(self):
        """The training images' dtype: uint8, or float16 once randX replaced some."""
        return np.float16 if self.noise == "randX" else np.uint8

    def shape(self) -> DataShape:
        """The sizes, known without loading (the classes as the phase trains them)."""
        shape = data_shape(self.config)
        if self.one_class_per_example:
            shape = dataclasses.replace(shape, num_classes=shape.train)
        return shape

    def split(self, dataset: Dataset) -> tuple[Split, int]:
        """(the training split as the phase trains on it, its number of classes)."""
        split = with_noise(dataset.train, self.noise, self.fraction, dataset.num_classes,
                           self.seed, self.input_stats)
        if self.one_class_per_example:
            split = dataclasses.replace(split, y=np.arange(len(split), dtype=np.int32))
            return split, len(split)
        return split, dataset.num_classes


@dataclasses.dataclass(frozen=True)
class Phase:
    """One ensemble and its training: the phase's id (letters, digits, '.', '_', '-';
    unique within a study: it names the checkpoints, diverged members, placement and
    dynamics file), the configs, the data, the members (None: train.members members
    0 .. train.members - 1), the epochs (None: train.epochs; 0: none, only the measurements
    taken at the end), the measurements (memjax.measurements) and the progress text
    (default: the id)."""

    id: str
    model: ModelConfig
    train: TrainConfig
    data: Data
    members: Members | None = None
    epochs: int | None = None
    measurements: tuple = ()
    desc: str | None = None

    def __post_init__(self):
        check_phase_id(self.id)
        names = [m.name for m in self.measurements]
        if len(set(names)) != len(names):
            raise MemjaxError(f"phase {self.id}: two measurements share a name: {names}")

    @property
    def ensemble(self) -> Members:
        return self.members or Members(np.arange(self.train.members))

    @property
    def training(self) -> TrainConfig:
        """The TrainConfig the phase trains with: `train`, recording the training dynamics
        when a measurement reads them (memjax.measurements.Dynamics)."""
        if any(m.name == "dynamics" for m in self.measurements):
            return dataclasses.replace(self.train, record_dynamics=True)
        return self.train

    @property
    def epoch_count(self) -> int:
        return self.train.epochs if self.epochs is None else self.epochs

    @property
    def text(self) -> str:
        return self.desc or self.id


@dataclasses.dataclass
class Outcome:
    """What a phase gave: its history (name -> [epochs, M] or [epochs], the trainer's
    metrics and the per-epoch measurements), the end-of-phase measurements (name -> their
    results), and the Runner (its trained state, seconds and model-examples)."""

    history: dict
    final: dict
    runner: object
