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

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from memjax import dynamics
from memjax.config import ModelConfig, TrainConfig
from memjax.data import DataShape
from memjax.evaluation import evaluation_program
from memjax.memory import nbytes
from memjax.metrics.lass import TRAINING_LASS, validation_search
from memjax.members import Members, abstract_ensemble, epoch_program, member_view, searching
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
    "unrolled" (E2's trajectory with its backward pass); model: "mlp"
    or "cnn" (with kind, which measured efficiency applies: memjax.plan). cost: one run.
    per_example: model-examples one run processes (for matching bench records). probes:
    LASS example-iterations of one run. checkpoint_bytes: bytes saved after each run.
    programs: how many times it is compiled (once per phase that builds it).
    """

    name: str
    kind: str
    model: str
    cost: Cost
    runs: int
    per_example: float
    precision: str = "float32"
    members: int = 0
    probes: float = 0.0
    checkpoint_bytes: float = 0.0
    programs: int = 1

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


def _images(data: DataShape, n: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((n,) + data.image_shape, np.uint8)


def _epoch(model: ModelConfig, train: TrainConfig, data: DataShape, members: Members | None,
           data_seed: int):
    """(Members, the Runner's epoch program, its abstract arguments) for `members`."""
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
        noise = NoiseSource(_images(data, n) if view.input_noise_mask is not None else None,
                            jax.ShapeDtypeStruct((n,), np.int32)
                            if view.label_noise_mask is not None else None)
    epoch = epoch_program(network, tx, train, member_mesh(1), members.example_mask)
    return members, epoch, (state, train.seed, _images(data, n),
                            jax.ShapeDtypeStruct((n,), np.int32), _abstract(view), noise)


def _training_step(name: str, model: ModelConfig, train: TrainConfig, data: DataShape,
                   members: Members, cost: Cost, epochs: int, state) -> Step:
    mask = members.example_mask
    seen = members.count * data.train if mask is None else float(np.sum(mask))
    return Step(name, "train", model.kind, cost, epochs, per_example=seen,
                precision=train.compute_dtype, members=members.count,
                checkpoint_bytes=float(sum(map(nbytes, jax.tree_util.tree_leaves(state)))))


def training(name: str, model: ModelConfig, train: TrainConfig, data: DataShape,
             members: Members | None = None, *, epochs: int, data_seed: int = 0) -> Step:
    """The training epoch a Runner compiles for `members` (None: train.members) on the
    data.train training examples, run `epochs` times; a checkpoint of the members' state
    after each. Members with an adversarial weight: `adversarial_training`."""
    members, epoch, args = _epoch(model, train, data, members, data_seed)
    if args[4].adversarial_weight is not None:
        raise ValueError("members with an adversarial weight: use cost.adversarial_training")
    return _training_step(name, model, train, data, members, program_cost(epoch, *args),
                          epochs, args[0])


def adversarial_training(name: str, model: ModelConfig, train: TrainConfig, data: DataShape,
                         members: Members, *, epochs: int, data_seed: int = 0) -> list[Step]:
    """`training` for members of which some have an adversarial weight: the epoch without
    the in-step search (in the training's precision), and the search (kind "search",
    float32 as memjax.train runs it; no program of its own to compile): its
    `in_step_iterations` and its first probe at the minibatch, counted as one more
    iteration (the same forward pass and input gradient). On one device only the members
    with a weight > 0 run it (the Runner's static `searching`)."""
    members, epoch, args = _epoch(model, train, data, members, data_seed)
    epoch = functools.partial(epoch, searching=searching(members))
    unsearched = program_cost(epoch, *args, while_trips=0)
    iteration = program_cost(epoch, *args, while_trips=1) - unsearched
    trips = in_step_iterations(train.adversarial_protocol, TRAINING_LASS["max_iterations"])
    searched = float(np.sum(np.asarray(members.adversarial_weight) > 0)) * data.train
    return [_training_step(name, model, train, data, members, unsearched - iteration, epochs,
                           args[0]),
            Step(f"{name}: in-step search", "search", model.kind, iteration * (trips + 1),
                 epochs, per_example=searched, members=members.count,
                 probes=searched * trips, programs=0)]


def _variables(model: ModelConfig, train: TrainConfig, data: DataShape, members: int):
    network, _, state = abstract_ensemble(model, train, data.num_classes,
                                          (1,) + data.image_shape, Members(np.arange(members)))
    return network, state.variables


def evaluation(name: str, model: ModelConfig, train: TrainConfig, data: DataShape,
               members: int, examples: int, *, runs: int) -> Step:
    """memjax.evaluation.evaluate of `members` on `examples` inputs, run `runs` times, in the
    training's compute precision (as the Runner evaluates)."""
    network, variables = _variables(model, train, data, members)
    cost = program_cost(evaluation_program(network.apply, train, member_mesh(1)), variables,
                        _images(data, examples), jax.ShapeDtypeStruct((examples,), np.int32))
    return Step(name, "evaluate", model.kind, cost, runs, per_example=members * examples,
                precision=train.compute_dtype, members=members)


def search(name: str, model: ModelConfig, train: TrainConfig, data: DataShape, members: int,
           *, protocol: str, examples: int | None, validation: int, runs: int,
           chunk: int | None = None, **settings) -> Step:
    """memjax.metrics.validation_search of `members` (settings: radius, step_size,
    noise_scale, max_iterations), run `runs` times, each counted at `search_iterations`."""
    network, variables = _variables(model, train, data, members)
    iterations = search_iterations(protocol, settings["max_iterations"])
    searched = validation if examples is None else min(examples, validation)
    cost = program_cost(
        lambda v, x, key: validation_search(network.apply, v, x, key, protocol=protocol,
                                            examples=examples, member_chunk=train.member_chunk,
                                            chunk=chunk, **settings),
        variables, _images(data, validation), jax.eval_shape(lambda: jax.random.key(0)),
        while_trips=iterations)
    return Step(name, "search", model.kind, cost, runs, per_example=members * searched,
                members=members, probes=float(members * searched * iterations))
