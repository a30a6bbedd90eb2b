"""Planned memory: how many members one vmap may hold, from the device's memory and the
model's size.

`map_members` (ensemble.py) runs members in groups of `chunk` (vmap inside a group, lax.map
across groups). When no chunk is given it asks `plan_member_chunk`, which traces one
member's computation (no compile), counts the bytes of every value it creates and fits as
many members into the device's memory budget as it allows. The count ignores XLA's fusion,
so it overestimates: the plan errs toward smaller groups, never toward running out of memory.

Overrides: an explicit `member_chunk` (TrainConfig.member_chunk, `--set
train.member_chunk=N`); the environment variables MEMJAX_MEMORY_BYTES (the budget per
device, in bytes) or MEMJAX_MEMORY_FRACTION (share of the device's memory limit, default 0.8).

A CNN's members also have a planned convolution form (`plan_conv_form`): how each member's
convolution is written (memjax.models.CONV_FORMS), how many members one vmap holds, and
BatchNorm's precision; the fastest that `memjax bench` recorded on this kind of accelerator,
else today's default (lax.conv, one member at a time, BatchNorm in float32).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

import jax
import numpy as np

from memjax.config import env_number
from memjax.records import bench_records

try:  # jax >= 0.4.33 moved the core types here
    from jax.extend.core import ClosedJaxpr, Jaxpr
except ImportError:  # pragma: no cover
    from jax.core import ClosedJaxpr, Jaxpr

DEFAULT_FRACTION = 0.8
# Members per group when a computation convolves and no chunk is set: vmap turns a
# convolution over stacked weights into a grouped convolution, which measured slower than
# one member at a time inside the program (lax.map) on the CPU (`memjax bench` c_cnn,
# benchmarks/README.md), and on an H100 vmap ran out of memory at 100 members where
# lax.map ran. Override with an explicit member_chunk, or MEMJAX_CONV_CHUNK.
CONV_CHUNK = 1


def device_memory_bytes(device: jax.Device | None = None) -> int:
    """Bytes one device may hold: the accelerator's limit, or on the CPU the host's physical
    memory shared by the process's local devices."""
    device = device or jax.local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # some backends do not report
        pass
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host // max(1, jax.local_device_count())


def memory_budget_bytes() -> int:
    """The bytes a planned computation may use on one device (see the module docstring)."""
    budget = env_number("MEMJAX_MEMORY_BYTES", int, minimum=1)
    if budget is not None:
        return budget
    fraction = env_number("MEMJAX_MEMORY_FRACTION", float, DEFAULT_FRACTION, minimum=0.0,
                          maximum=1.0)
    return int(fraction * device_memory_bytes())


def nbytes(aval: Any) -> int:
    shape = getattr(aval, "shape", None)
    dtype = getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:  # extended dtypes (typed keys)
        itemsize = 8
    return int(math.prod(shape)) * itemsize


def _inner_jaxprs(params: dict) -> list:
    found = []
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, Jaxpr):
                found.append(v)
    return found


def jaxpr_bytes(jaxpr: Jaxpr, skip_shapes: frozenset = frozenset()) -> int:
    """Bytes of every value the jaxpr creates, with the largest nested body (a scan step, a
    branch) counted once: an upper bound on its temporary memory without fusion. Values
    shaped like one of `skip_shapes` are left out (the caller accounts for them)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += sum(nbytes(v.aval) for v in eqn.outvars
                     if tuple(getattr(v.aval, "shape", ())) not in skip_shapes)
        inner = [jaxpr_bytes(j, skip_shapes) for j in _inner_jaxprs(eqn.params)]
        if inner:
            total += max(inner)
    return total


def convolves(jaxpr: Jaxpr) -> bool:
    """Whether the jaxpr (or a body inside it) has a convolution."""
    return any(eqn.primitive.name == "conv_general_dilated"
               or any(convolves(j) for j in _inner_jaxprs(eqn.params)) for eqn in jaxpr.eqns)


def member_bytes(fn: Callable, *one_member: Any) -> tuple[int, int]:
    """(state bytes, temporary bytes) of `fn` applied to ONE member's arguments (arrays or
    ShapeDtypeStructs without the member axis): state = its arguments and results, which
    exist for every member at once; temporary = what one member's computation creates.

    Values shaped like an argument (gradients, optimizer updates: a chain of elementwise
    ops XLA fuses) are counted as two more copies of the arguments instead of once per op;
    activations are counted once per op, fused or not.
    """
    return _costs(jax.make_jaxpr(fn)(*one_member))


def _costs(closed: ClosedJaxpr) -> tuple[int, int]:
    args = sum(nbytes(v.aval) for v in closed.jaxpr.invars)
    state = args + sum(nbytes(v.aval) for v in closed.jaxpr.outvars)
    shapes = frozenset(tuple(v.aval.shape) for v in closed.jaxpr.invars
                       if len(getattr(v.aval, "shape", ())) >= 2)
    return state, 2 * args + jaxpr_bytes(closed.jaxpr, shapes)


def plan_member_chunk(fn: Callable, stacked: tuple, *, devices: int = 1,
                      budget_bytes: int | None = None, at_most: int | None = None) -> int:
    """Members per vmap group on one device for `fn` over `stacked` arguments [M, ...]:
    all of a device's members when they fit the budget, else the most that do (at least 1),
    balanced so the groups are equal in size; computations with convolutions CONV_CHUNK.
    at_most: no more than that many (a planned convolution form's chunk, ConvPlan), as many
    as fit, whether the computation convolves or not."""
    leaves = jax.tree_util.tree_leaves(stacked)
    local = -(-leaves[0].shape[0] // devices)
    one = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), stacked)
    closed = jax.make_jaxpr(fn)(*one)
    if at_most is None and convolves(closed.jaxpr):
        return min(local, env_number("MEMJAX_CONV_CHUNK", int, CONV_CHUNK, minimum=1))
    most = local if at_most is None else max(1, min(local, at_most))
    state, temporary = _costs(closed)
    budget = memory_budget_bytes() if budget_bytes is None else budget_bytes
    # Arguments and results exist for every member at once (results replace donated
    # arguments); temporaries only for the members of one group.
    free = budget - local * state
    fits = max(1, free // max(temporary, 1))
    if fits >= local and most >= local:
        return local
    # Several groups: regrouping the members to [groups, chunk] and stacking lax.map's
    # results copy every member's arguments and results (16 MLPs 512-512 in groups of 2:
    # XLA's peak 238 MB where the single-copy count said 214 MB), so count them thrice.
    fits = min(most, max(1, (budget - 3 * local * state) // max(temporary, 1)))
    groups = -(-local // fits)
    return -(-local // groups)


# ---- the convolution form -------------------------------------------------------------

# The bench case whose rows time the convolution forms (benchmarks/throughput.py)
CONV_CASE = "c_cnn"


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """How a CNN ensemble convolves: conv_form (memjax.models.CONV_FORMS); member_chunk,
    the most members one vmap holds (memory may allow fewer; None: plan_member_chunk's
    rule, CONV_CHUNK for lax convolutions); norm_in_compute_dtype (BatchNorm normalizes in
    the compute dtype); source: where the choice comes from."""

    conv_form: str = "conv"
    member_chunk: int | None = None
    norm_in_compute_dtype: bool = False
    source: str = "default"


def recorded_conv_forms(records: list[dict], device_kind: str,
                        compute_dtype: str) -> tuple[dict | None, list[dict]]:
    """(record, rows): the newest of `records` (oldest first, as memjax.records.bench_records()
    gives them) made on an accelerator of kind `device_kind` whose CONV_CASE rows name their
    convolution form, and those of its rows in `compute_dtype` that ran (they carry
    "conv_form", "member_chunk", "compute_dtype", "norm_in_compute_dtype")."""
    for record in reversed(records):
        device = record.get("device", {})
        if device.get("kind") != device_kind or device.get("platform") == "cpu":
            continue
        rows = [row for row in record.get("rows", ())
                if row.get("case") == CONV_CASE and row.get("conv_form")
                and row.get("compute_dtype", "float32") == compute_dtype
                and row.get("model_examples_per_s")]
        if rows:
            return record, rows
    return None, []


def plan_conv_form(compute_dtype: str = "float32", *, device_kind: str | None = None,
                   platform: str | None = None, records: list[dict] | None = None) -> ConvPlan:
    """The fastest convolution form `memjax bench` recorded on this kind of device in
    `compute_dtype` (the newest record that has the forms: recorded_conv_forms), else the
    default ConvPlan (today's: lax.conv, one member at a time, BatchNorm in float32).

    CPUs keep the default: their bench rows come from a narrow CNN on a shared machine, and
    a CPU run's results stay what they were. device_kind, platform: of the first local
    device unless given; records: memjax.records.bench_records() unless given (tests pass
    fakes)."""
    if device_kind is None or platform is None:
        device = jax.local_devices()[0]
        device_kind = device.device_kind if device_kind is None else device_kind
        platform = device.platform if platform is None else platform
    if platform == "cpu":
        return ConvPlan(source="default (CPUs keep it)")
    if records is None:
        records = bench_records()
    record, rows = recorded_conv_forms(records, device_kind, compute_dtype)
    if not rows:
        return ConvPlan(source=f"default (no {CONV_CASE} record of {device_kind} names its "
                               f"forms in {compute_dtype})")
    best = max(rows, key=lambda row: row["model_examples_per_s"])
    return ConvPlan(best["conv_form"], best.get("member_chunk"),
                    bool(best.get("norm_in_compute_dtype", False)),
                    f"{record.get('file', 'record')}: {best['impl']}, "
                    f"{best['model_examples_per_s']:,.0f} model-examples/s")


def conv_plan(conv_form: str | None, member_chunk: int | None,
              norm_in_compute_dtype: bool | None, compute_dtype: str = "float32",
              **device) -> ConvPlan:
    """A run's convolution form: what it sets (TrainConfig.conv_form, member_chunk,
    norm_in_compute_dtype; None: planned), the rest from plan_conv_form. The planned chunk
    goes with the planned form only: a form the run names without a chunk gets
    plan_member_chunk's rule. device: plan_conv_form's keywords (tests)."""
    if conv_form is not None and norm_in_compute_dtype is not None:
        return ConvPlan(conv_form, member_chunk, norm_in_compute_dtype, "set by the run")
    planned = plan_conv_form(compute_dtype, **device)
    same_form = conv_form is None or conv_form == planned.conv_form
    return ConvPlan(
        planned.conv_form if conv_form is None else conv_form,
        member_chunk if member_chunk is not None else
        (planned.member_chunk if same_form else None),
        planned.norm_in_compute_dtype if norm_in_compute_dtype is None
        else norm_in_compute_dtype, planned.source)
