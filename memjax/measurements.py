"""What a phase measures, by name: each measurement declares what it computes (`outputs`),
its schedule (`every` N epochs and after the last; None: once, after the phase), and its
programs for the plan (`steps`: memjax.cost), and computes on the device when bound to a
Runner (`bind`). Like big_vision's evaluators, they are registered by name
(`REGISTRY`, `register`), and a study or user passes their own: any object with these
attributes and methods, e.g. a subclass of `Measurement`.

    Evaluation("validation_accuracy", on="validation")           # [M] after each epoch
    Evaluation("correct_train", on="train", every=None, per_example=True)   # [M, N], at the end
    OwnAccuracy(every=5)                       # each member's accuracy on its own view
    CriticalSamples("csr", protocol="authors", examples=500, **PAPER_LASS)   # LASS CSR
    Convergence(0.99)                          # stop members at 99 % own accuracy
    Dynamics()                                 # per-example training dynamics

A measurement of the members' final variables on the training split subclasses `AtTheEnd`
and only names its programs (memjax's el2n study: EL2N and GraNd).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from memjax import cost, dynamics
from memjax.errors import MemjaxError
from memjax.keys import ATTACK, study_key
from memjax.members import abstract_ensemble
from memjax.metrics.lass import (PAPER_LASS, PROTOCOLS, authors_scale, critical_sample_ratio,
                                 validation_search)

REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a measurement known by `name` (REGISTRY)."""
    def add(cls):
        if name in REGISTRY:
            raise ValueError(f"a measurement named {name!r} is registered already")
        REGISTRY[name] = cls
        return cls
    return add


class Measurement:
    """The base of memjax's measurements. Subclasses set `name`, `outputs` (the names of
    the results: history entries [M] for per-epoch ones, `Outcome.final` entries for
    those at the end), `every`, and implement `bind` and `steps`."""

    name: str
    every: int | None = 1
    outputs: tuple[str, ...] = ()

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether it runs after `epoch` (1-based) of `epochs`: every `every` epochs and
        after the last (never during training when `every` is None: after the phase)."""
        return self.every is not None and (epoch % self.every == 0 or epoch == epochs)

    def runs(self, epochs: int) -> int:
        """How many times a phase of `epochs` epochs runs it."""
        if self.every is None:
            return 1
        return sum(self.due(e, epochs) for e in range(1, epochs + 1))

    def bind(self, runner, dataset) -> Callable[[int], dict]:
        """epoch -> {output: result} on the device, for this runner's members."""
        raise NotImplementedError

    def precision(self, phase) -> str:
        """The precision its programs compute in (the plan prices them at it): the phase's
        compute dtype unless a measurement declares otherwise."""
        return phase.train.compute_dtype

    def steps(self, phase, shape) -> list[cost.Step]:
        """Its programs as memjax.cost counts them, for the phase's plan."""
        raise NotImplementedError


class AtTheEnd(Measurement):
    """The base of a measurement taken once after the phase, on the phase's training split
    (as it trains on it): `programs(apply_fn, train)` gives {output: fn(variables, x, y)},
    each a jittable function of the real members' stacked variables [M, ...] (apply_fn in
    evaluation mode, float32; train: the phase's TrainConfig). Each result is named by its
    program; the plan counts each program once."""

    every: int | None = None

    def programs(self, apply_fn, train) -> dict[str, Callable]:
        raise NotImplementedError

    def bind(self, runner, dataset):
        def measure(epoch):
            variables, out = runner.member_state().variables, {}
            for name, fn in self.programs(runner.apply, runner.train).items():
                cost.record(_program(runner, name), fn, variables, runner.x, runner.y)
                out[name] = fn(variables, runner.x, runner.y)
            return out
        return measure

    def steps(self, phase, shape):
        network, _, state = abstract_ensemble(phase.model, phase.training, shape.num_classes,
                                              (1,) + shape.image_shape, phase.ensemble)
        x = jax.ShapeDtypeStruct((shape.train,) + shape.image_shape, phase.data.x_dtype)
        y, count = jax.ShapeDtypeStruct((shape.train,), np.int32), phase.ensemble.count
        return [cost.Step(f"{name} ({phase.text})", "evaluate", phase.model.kind,
                          cost.program_cost(fn, state.variables, x, y), 1,
                          per_example=float(count * shape.train), member_count=count,
                          precision=self.precision(phase), program=f"{phase.id}/{name}",
                          conv_form=network.conv_form)
                for name, fn in self.programs(network.apply, phase.training).items()]


def _program(runner, name: str) -> str:
    return f"{runner.phase_id}/{name}"


def _check_every(every):
    if every is not None and (not isinstance(every, int) or every < 1):
        raise MemjaxError(f"a measurement's schedule is every N >= 1 epochs or None (at the "
                          f"end), got {every!r}")


@register("evaluation")
@dataclasses.dataclass(frozen=True)
class Evaluation(Measurement):
    """Correctness of the members on the validation split or on the phase's training split
    (as it trains on it: its noise included), in the training's compute precision
    (memjax.evaluation.evaluation_program). Result `name`: each member's accuracy [M]
    (NaN for members not among `member_rows`, indices), or with per_example its
    correctness [M, N].
    examples: the first `examples` of the split (None: all); indices: those examples."""

    name: str
    on: str = "validation"
    every: int | None = 1
    per_example: bool = False
    member_rows: np.ndarray | None = None
    examples: int | None = None
    indices: np.ndarray | None = None

    def __post_init__(self):
        _check_every(self.every)
        if self.on not in ("validation", "train"):
            raise MemjaxError(f"an evaluation is on 'validation' or 'train', got {self.on!r}")

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name,)

    def _examples(self, size: int) -> int:
        if self.indices is not None:
            return len(self.indices)
        return size if self.examples is None else min(self.examples, size)

    def bind(self, runner, dataset):
        if self.on == "train":
            x, y = runner.x, runner.y
        else:
            x, y = dataset.validation.x, dataset.validation.y
        if self.indices is not None:
            x, y = np.asarray(x)[self.indices], np.asarray(y)[self.indices]
        elif self.examples is not None:
            x, y = x[:self.examples], y[:self.examples]
        x, y = jax.device_put(x), jax.device_put(y)
        members = None if self.member_rows is None else np.asarray(self.member_rows)

        def measure(epoch):
            correct = runner.evaluate(x, y, member_rows=members,
                                      program=_program(runner, self.name))["correct"]
            if self.per_example:
                return {self.name: correct}
            accuracy = correct.mean(1)
            if members is not None:
                accuracy = jnp.full(runner.member_count, jnp.nan).at[members].set(accuracy)
            return {self.name: accuracy}
        return measure

    def steps(self, phase, shape):
        size = shape.train if self.on == "train" else shape.validation
        members = (phase.ensemble if self.member_rows is None
                   else phase.ensemble.subset(np.asarray(self.member_rows)))
        return [cost.evaluation(f"{self.name} ({phase.text})", phase.model, phase.training,
                                shape, members, self._examples(size),
                                runs=self.runs(phase.epoch_count),
                                x_dtype=phase.data.x_dtype if self.on == "train" else np.uint8,
                                program=f"{phase.id}/{self.name}")]


@register("own_accuracy")
@dataclasses.dataclass(frozen=True)
class OwnAccuracy(Measurement):
    """Each member's accuracy [M] on its own view of the training set (its examples, its
    noise: Runner.own_accuracy), in evaluation mode; NaN after the epochs it does not run."""

    name: str = "train_accuracy"
    every: int | None = 1

    def __post_init__(self):
        _check_every(self.every)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name,)

    def bind(self, runner, dataset):
        return lambda epoch: {self.name: runner.own_accuracy()}

    def steps(self, phase, shape):
        return [cost.own_accuracy(f"{self.name} ({phase.text})", phase, shape,
                                  runs=self.runs(phase.epoch_count))]


@register("convergence")
@dataclasses.dataclass(frozen=True)
class Convergence(Measurement):
    """Each member's own accuracy after every epoch (`train_accuracy`) and the first epoch
    it reaches `threshold` (`first_epoch`, memjax.convergence); a member that reached it
    stops training, and the phase ends once all have (Runner.run's converge_at). The plan
    counts every epoch: when members converge is not known before the run."""

    threshold: float
    name: str = "convergence"
    every: int | None = 1
    outputs: tuple[str, ...] = ("train_accuracy", "first_epoch")

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise MemjaxError(f"a convergence threshold is in (0, 1], got {self.threshold}")

    def bind(self, runner, dataset):
        return None  # (Runner.run measures it: it decides which members still train)

    def steps(self, phase, shape):
        return [cost.own_accuracy(f"own accuracy ({phase.text})", phase, shape,
                                  runs=phase.epoch_count)]


@register("dynamics")
@dataclasses.dataclass(frozen=True)
class Dynamics(Measurement):
    """Per-example training dynamics, recorded inside every training step (the training
    epoch's program counts them) and scored at the end (memjax.dynamics.scores: [M, N]
    each); also written to dynamics-<phase>.npz with their member averages."""

    name: str = "dynamics"
    every: int | None = None
    outputs: tuple[str, ...] = tuple(dynamics.SCORES)

    def bind(self, runner, dataset):
        return lambda epoch: runner.dynamics_scores()

    def steps(self, phase, shape):
        return []


@register("critical_samples")
@dataclasses.dataclass(frozen=True)
class CriticalSamples(Measurement):
    """The critical-sample ratio [M] of LASS on validation inputs
    (memjax.metrics.validation_search under `protocol`, `examples` of them; under
    "authors" r, alpha and beta times `authors_scale` of the data, as the authors'
    callback scaled them). Keys: fold_in(ATTACK study key, *stream, epoch); member m
    searches with its id. iterations: also the LASS iterations summed over members and
    examples, under that name (None: not)."""

    name: str = "csr"
    protocol: str = "authors"
    examples: int | None = 500
    radius: float = PAPER_LASS["radius"]
    step_size: float = PAPER_LASS["step_size"]
    noise_scale: float = PAPER_LASS["noise_scale"]
    max_iterations: int = PAPER_LASS["max_iterations"]
    chunk: int | None = None
    stream: tuple[int, ...] = ()
    iterations: str | None = None
    every: int | None = 1

    def __post_init__(self):
        _check_every(self.every)
        if self.protocol not in PROTOCOLS:
            raise MemjaxError(f"unknown LASS protocol {self.protocol!r}; known: "
                              f"{', '.join(PROTOCOLS)}")

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name,) + ((self.iterations,) if self.iterations else ())

    @property
    def settings(self) -> dict:
        return dict(radius=self.radius, step_size=self.step_size,
                    noise_scale=self.noise_scale, max_iterations=self.max_iterations)

    def precision(self, phase) -> str:
        return "float32"  # (the search runs on the float32 network, as the authors')

    def scale(self, dataset) -> float:
        """The factor of r, alpha and beta (1 unless the protocol is "authors")."""
        if self.protocol != "authors":
            return 1.0
        return authors_scale(dataset.train.x, dataset.validation.x)

    def bind(self, runner, dataset):
        x = jax.device_put(dataset.validation.x)
        search = dict(protocol=self.protocol, examples=self.examples, chunk=self.chunk,
                      member_chunk=runner.train.member_chunk, scale=self.scale(dataset),
                      **self.settings)
        base = study_key(runner.train.seed, ATTACK)
        for i in self.stream:
            base = jax.random.fold_in(base, i)
        trips = cost.search_iterations(self.protocol, self.max_iterations)

        def measure(epoch):
            key = jax.random.fold_in(base, epoch)
            fn = lambda v, x, key, ids: validation_search(runner.apply, v, x, key,
                                                          member_ids=ids, **search)
            cost.record(_program(runner, self.name), fn, runner.variables, x, key,
                        runner.state.member_ids, while_trips=trips)
            found = fn(runner.variables, x, key, runner.state.member_ids)
            out = {self.name: critical_sample_ratio(found.critical)}
            if self.iterations:  # (summed exactly on the device)
                out[self.iterations] = found.iterations[:runner.member_count].sum()
            return out
        return measure

    def steps(self, phase, shape):
        return [cost.search(f"{self.name} ({phase.text})", phase.model, phase.training, shape,
                            phase.ensemble, protocol=self.protocol,
                            examples=self.examples, validation=shape.validation,
                            runs=self.runs(phase.epoch_count), chunk=self.chunk,
                            program=f"{phase.id}/{self.name}", **self.settings)]
