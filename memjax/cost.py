"""The work of a study before it runs: XLA's cost analysis of the programs it compiles.

A study declares its programs (`Step`: a training epoch, an evaluation, a LASS search) and
how often it runs each; `training`, `evaluation` and `search` build those programs as the
Runner and the studies do, from abstract arrays (`jax.eval_shape`: nothing is allocated,
no data is loaded), and count their FLOPs and bytes with `program_cost`. `memjax.plan`
turns the counts into time on a device.

XLA's cost analysis (`jax.stages.Lowered.cost_analysis`) counts the body of a loop once.
`program_cost` walks the program's jaxpr and counts every scan body `length` times and
every while-loop body `while_trips` times, each body by XLA's own analysis of it; a
conditional as its dearest branch (as XLA counts it), that branch's loops counted so too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from memjax import dynamics
from memjax.config import ModelConfig, TrainConfig
from memjax.data import DataShape
from memjax.evaluation import evaluation_program, member_accuracy
from memjax.memory import nbytes
from memjax.metrics.lass import TRAINING_LASS, validation_search
from memjax.members import Members, abstract_ensemble, epoch_program, member_view, searching
from memjax.models import computing_in
from memjax.sharding import member_mesh
from memjax.views import NoiseSource

try:  # jax >= 0.4.33 moved the core types here
    from jax.extend.core import ClosedJaxpr, jaxpr_as_fun
except ImportError:  # pragma: no cover
    from jax.core import ClosedJaxpr, jaxpr_as_fun

# LASS iterations a planned search runs. "exhaustive": every iteration (on real data almost
# every example stays non-critical to the end). "authors": the search stops after the first
# iteration with fewer than 20 new critical samples; memjax's csr cpu preset averaged 1 to
# 2.5 iterations on MNIST (docs/studies.md, "LASS protocols"), so 3 is the plan's count.
AUTHORS_ITERATIONS = 3
# The same for the in-step search of adversarial training, whose rule counts over one
# minibatch of 128: on the paper's CNN (32 channels, CIFAR-10, real and randY) it ran 1 or
# 2 iterations, 2 in the first epochs (benchmarks/in_step_search.py, its record in
# benchmarks/results), so 2 is the plan's count.
AUTHORS_IN_STEP_ITERATIONS = 2


@dataclasses.dataclass(frozen=True)
class Cost:
    """FLOPs and bytes accessed, as XLA's cost analysis counts them."""

    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(self.flops - other.flops, self.bytes - other.bytes)

    def __mul__(self, n: float) -> "Cost":
        return Cost(self.flops * n, self.bytes * n)


@dataclasses.dataclass(frozen=True)
class Step:
    """One program of a study and how many times the study runs it.

    kind: "train" (one epoch), "evaluate" (forward passes), "search" (LASS) or
    "unrolled" (E2's trajectory with its backward pass); model: its ModelConfig.kind
    (with kind, which measured efficiency applies: memjax.plan, memjax.models.plan_kind).
    cost: one run.
    per_example: model-examples one run processes (for matching bench records). probes:
    LASS example-iterations of one run. checkpoint_bytes: bytes saved after each run.
    programs: how many times it is compiled (once per phase that builds it). conv_form:
    the network's (memjax.models.CONV_FORMS), whose bench rows time it where recorded.
    program: "<phase id>/<program>", the name under which a run `record`s the program (a
    training epoch with adversarial members is three steps of one program:
    `adversarial_training`).
    """

    name: str
    kind: str
    model: str
    cost: Cost
    runs: int
    per_example: float
    precision: str = "float32"
    member_count: int = 0
    probes: float = 0.0
    checkpoint_bytes: float = 0.0
    programs: int = 1
    program: str = ""
    conv_form: str | None = None  # how its network convolves (None: it does not)

    def times(self, n: int) -> "Step":
        """The same program built and run again by n phases (n conditions, n ratios)."""
        return dataclasses.replace(self, runs=self.runs * n, programs=self.programs * n)


def program_cost(fn: Callable, *args: Any, while_trips: float = 1) -> Cost:
    """FLOPs and bytes of fn(*args) (arrays or jax.ShapeDtypeStruct), every loop counted as
    many times as it runs (while loops `while_trips` times)."""
    return _cost(jax.make_jaxpr(fn)(*args), while_trips)[1]


def _xla(closed: ClosedJaxpr) -> Cost:
    avals = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in closed.in_avals]
    analysis = jax.jit(jaxpr_as_fun(closed)).lower(*avals).cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0]
    return Cost(float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0)))


def _cost(closed: ClosedJaxpr, while_trips: float) -> tuple[Cost, Cost]:
    """(XLA's count, with each loop body once; the count with every loop as it runs)."""
    once = total = _xla(closed)
    for kind, inner, trips in _loops(closed.jaxpr, while_trips):
        if kind == "loop":
            body_once, body_total = _cost(inner, while_trips)
            total = total - body_once + body_total * trips  # (XLA counted the body once)
        else:  # XLA counted the conditional as its dearest branch, that branch's loops once
            counts = [_cost(branch, while_trips) for branch in inner]
            total = (total - _most([c[0] for c in counts])
                     + _most([c[1] for c in counts]))
    return once, total


def _most(costs: list[Cost]) -> Cost:
    return Cost(max(c.flops for c in costs), max(c.bytes for c in costs))


def _loops(jaxpr, while_trips: float):
    """("loop", body, trip count) of the outermost loops of a jaxpr and ("cond", branches,
    None) of its outermost conditionals that hold loops, looking through calls."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "scan":
            yield "loop", eqn.params["jaxpr"], eqn.params["length"]
        elif name == "while":
            yield "loop", eqn.params["body_jaxpr"], while_trips
        elif name == "cond":
            if any(next(_loops(b.jaxpr, while_trips), None) for b in eqn.params["branches"]):
                yield "cond", eqn.params["branches"], None
        else:
            for value in eqn.params.values():
                inner = value.jaxpr if isinstance(value, ClosedJaxpr) else value
                if hasattr(inner, "eqns"):
                    yield from _loops(inner, while_trips)


def search_iterations(protocol: str, max_iterations: int) -> int:
    """The LASS iterations the plan counts for one search (see AUTHORS_ITERATIONS)."""
    return min(AUTHORS_ITERATIONS, max_iterations) if protocol == "authors" else max_iterations


def in_step_iterations(protocol: str, max_iterations: int) -> float:
    """The LASS iterations the plan counts for one in-step search of adversarial training
    (see AUTHORS_IN_STEP_ITERATIONS)."""
    return (min(AUTHORS_IN_STEP_ITERATIONS, max_iterations) if protocol == "authors"
            else max_iterations)


# ---- a study's programs, built as the Runner builds them --------------------------------

def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
                        if not isinstance(a, jax.ShapeDtypeStruct) else a, tree)


def _images(data: DataShape, n: int, dtype=np.uint8) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((n,) + data.image_shape, dtype)


def _epoch(model: ModelConfig, train: TrainConfig, data: DataShape, members: Members | None,
           data_seed: int, x_dtype=np.uint8):
    """(Members, the Runner's epoch program, its abstract arguments, the network's
    conv_form) for `members`."""
    n = data.train
    members = members or Members(np.arange(train.members))
    network, tx, state = abstract_ensemble(model, train, data.num_classes,
                                           (1,) + data.image_shape, members)
    if train.record_dynamics:
        state = state.replace(dynamics=jax.eval_shape(lambda: dynamics.empty(
            members.count, n, train.aum_include_first_epoch)))
    view = member_view(members, n, data_seed)
    noise = None
    if view.input_noise_mask is not None or view.label_noise_mask is not None:
        noise = NoiseSource(_images(data, n, np.float16)  # (randX: float16, in [0, 1] units)
                            if view.input_noise_mask is not None else None,
                            jax.ShapeDtypeStruct((n,), np.int32)
                            if view.label_noise_mask is not None else None)
    epoch = epoch_program(network, tx, train, member_mesh(1), members.example_mask)
    return members, epoch, (state, train.seed, _images(data, n, x_dtype),
                            jax.ShapeDtypeStruct((n,), np.int32), _abstract(view),
                            noise), network.conv_form


def _training_step(name: str, model: ModelConfig, train: TrainConfig, data: DataShape,
                   members: Members, cost: Cost, epochs: int, state, program: str,
                   conv_form: str | None) -> Step:
    mask = members.example_mask
    seen = members.count * data.train if mask is None else float(np.sum(mask))
    return Step(name, "train", model.kind, cost, epochs, per_example=seen,
                precision=train.compute_dtype, member_count=members.count,
                checkpoint_bytes=float(sum(map(nbytes, jax.tree_util.tree_leaves(state)))),
                program=program, conv_form=conv_form)


def training(name: str, model: ModelConfig, train: TrainConfig, data: DataShape,
             members: Members | None = None, *, epochs: int, data_seed: int = 0,
             x_dtype=np.uint8, program: str = "") -> Step:
    """The training epoch a Runner compiles for `members` (None: train.members) on the
    data.train training examples (x_dtype: uint8, or float16 with randX), run `epochs`
    times; a checkpoint of the members' state after each. Members with an adversarial
    weight: `adversarial_training`."""
    members, epoch, args, form = _epoch(model, train, data, members, data_seed, x_dtype)
    if args[4].adversarial_weight is not None:
        raise ValueError("members with an adversarial weight: use cost.adversarial_training")
    return _training_step(name, model, train, data, members, program_cost(epoch, *args),
                          epochs, args[0], program, form)


def adversarial_training(name: str, model: ModelConfig, train: TrainConfig, data: DataShape,
                         members: Members, *, epochs: int, data_seed: int = 0,
                         x_dtype=np.uint8, program: str = "") -> list[Step]:
    """`training` for members of which some have an adversarial weight, as three steps of
    one program: the clean epoch (every member's clean pass, in the training's precision);
    the adversarial pass of the members with a weight > 0 (kind "train", float32 as
    memjax.train runs it); and the search (kind "search", float32 too): its
    `in_step_iterations` and its first probe at the minibatch, counted as one more
    iteration (the same forward pass and input gradient). On one device only the members
    with a weight > 0 run the last two (the Runner's static `searching`)."""
    members, epoch, args, form = _epoch(model, train, data, members, data_seed, x_dtype)
    clean = program_cost(epoch, *args[:4], args[4].replace(adversarial_weight=None), *args[5:])
    epoch = functools.partial(epoch, searching=searching(members))
    unsearched = program_cost(epoch, *args, while_trips=0)
    iteration = program_cost(epoch, *args, while_trips=1) - unsearched
    trips = in_step_iterations(train.adversarial_protocol, TRAINING_LASS["max_iterations"])
    searched = float(np.sum(np.asarray(members.adversarial_weight) > 0)) * data.train
    common = dict(member_count=members.count, programs=0, program=program, conv_form=form)
    return [_training_step(name, model, train, data, members, clean, epochs, args[0], program,
                           form),
            Step(f"{name}: adversarial pass", "train", model.kind,
                 unsearched - iteration - clean, epochs, per_example=searched, **common),
            Step(f"{name}: in-step search", "search", model.kind, iteration * (trips + 1),
                 epochs, per_example=searched, probes=searched * trips, **common)]


def _variables(model: ModelConfig, train: TrainConfig, data: DataShape, members: Members):
    network, _, state = abstract_ensemble(model, train, data.num_classes,
                                          (1,) + data.image_shape, members)
    return network, state.variables


def evaluation(name: str, model: ModelConfig, train: TrainConfig, data: DataShape,
               members: Members, examples: int, *, runs: int, x_dtype=np.uint8,
               program: str = "") -> Step:
    """memjax.evaluation.evaluate of `members` on `examples` inputs, run `runs` times, in the
    training's compute precision (as the Runner evaluates)."""
    network, variables = _variables(model, train, data, members)
    cost = program_cost(evaluation_program(network.apply, train, member_mesh(1)), variables,
                        _images(data, examples, x_dtype),
                        jax.ShapeDtypeStruct((examples,), np.int32))
    return Step(name, "evaluate", model.kind, cost, runs, per_example=members.count * examples,
                precision=train.compute_dtype, member_count=members.count, program=program,
                conv_form=network.conv_form)


def own_accuracy(name: str, phase, data: DataShape, *, runs: int) -> Step:
    """Runner.own_accuracy of a phase's members (memjax.evaluation.member_accuracy on
    each member's own view of the training set: `Members.own_examples`), run `runs`
    times, in the training's compute precision."""
    train, members = phase.training, phase.ensemble
    _, _, args, form = _epoch(phase.model, train, data, members, phase.data.seed,
                              phase.data.x_dtype)
    state, _, x, y, view, noise = args
    used = members.own_examples()
    if used is not None:  # (the Runner's smaller copy of the examples some member sees)
        n = len(used)
        cut = lambda a, axis=0: None if a is None else jax.ShapeDtypeStruct(
            a.shape[:axis] + (n,) + a.shape[axis + 1:], a.dtype)
        x, y = cut(x), cut(y)
        view = view.replace(example_mask=cut(view.example_mask, 1),
                            input_noise_mask=cut(view.input_noise_mask, 1),
                            label_noise_mask=cut(view.label_noise_mask, 1))
        noise = noise and NoiseSource(cut(noise.x), cut(noise.y))
    network, _ = _variables(phase.model, train, data, members)
    fn = functools.partial(member_accuracy, computing_in(network.apply, train.compute_dtype),
                           chunk=train.eval_chunk, member_chunk=train.member_chunk,
                           mesh=member_mesh(1))
    cost = program_cost(fn, state.variables, x, y, view, noise)
    return Step(name, "evaluate", phase.model.kind, cost, runs,
                per_example=members.count * x.shape[0], precision=train.compute_dtype,
                member_count=members.count, program=f"{phase.id}/own_accuracy",
                conv_form=form)


def search(name: str, model: ModelConfig, train: TrainConfig, data: DataShape, members: Members,
           *, protocol: str, examples: int | None, validation: int, runs: int,
           chunk: int | None = None, program: str = "", **settings) -> Step:
    """memjax.metrics.validation_search by `members` (settings: radius, step_size,
    noise_scale, max_iterations), run `runs` times, each counted at `search_iterations`."""
    network, variables = _variables(model, train, data, members)
    iterations = search_iterations(protocol, settings["max_iterations"])
    searched = validation if examples is None else min(examples, validation)
    cost = program_cost(
        lambda v, x, key, ids: validation_search(
            network.apply, v, x, key, protocol=protocol, examples=examples,
            member_chunk=train.member_chunk, chunk=chunk, member_ids=ids, **settings),
        variables, _images(data, validation), jax.eval_shape(lambda: jax.random.key(0)),
        jax.ShapeDtypeStruct((members.count,), np.int32), while_trips=iterations)
    return Step(name, "search", model.kind, cost, runs, per_example=members.count * searched,
                member_count=members.count, probes=float(members.count * searched * iterations),
                program=program, conv_form=network.conv_form)


# ---- a phase's programs, and the programs a run calls -------------------------------------

def phase_steps(phase) -> list[Step]:
    """The programs a memjax.phase.Phase compiles and how often it runs each: its training
    epoch (none for a phase of 0 epochs) and each measurement's programs."""
    data = phase.data.shape()
    steps = []
    if phase.epoch_count:
        members = phase.ensemble
        kw = dict(epochs=phase.epoch_count, data_seed=phase.data.seed,
                  x_dtype=phase.data.x_dtype, program=f"{phase.id}/train")
        if searching(members) is not None:
            steps += adversarial_training(f"train ({phase.text})", phase.model, phase.training,
                                          data, members, **kw)
        else:
            steps.append(training(f"train ({phase.text})", phase.model, phase.training, data,
                                  members, **kw))
    for measurement in phase.measurements:
        declared = getattr(measurement, "precision", None)  # (Measurement.precision)
        steps += [step if declared is None else dataclasses.replace(step,
                                                                    precision=declared(phase))
                  for step in measurement.steps(phase, data)]
    return steps


_recorded: dict | None = None


@contextlib.contextmanager
def recording():
    """Within it, every program a run calls through `record` is counted once, as the plan
    counts it, and its calls are counted: yields {program: [Cost, calls]}. What the test
    that planned programs equal run programs reads."""
    global _recorded
    previous, _recorded = _recorded, {}
    try:
        yield _recorded
    finally:
        _recorded = previous


def record(program: str, fn: Callable, *args: Any, while_trips: float = 1) -> None:
    """A run calls fn(*args) under the name `program` (Step.program); counted only within
    `recording` (elsewhere: nothing, at no cost)."""
    if _recorded is None:
        return
    if program not in _recorded:  # (counted on shapes alone, as the plan counts: one device)
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
                              if isinstance(a, jax.Array) else a, args)
        _recorded[program] = [program_cost(fn, *shapes, while_trips=while_trips), 0]
    _recorded[program][1] += 1
