"""The member axis spread over devices: a `members` mesh axis and NamedSharding.

Members are independent, so sharding them needs no communication during training: each
device trains its own block of members on a replicated copy of the data. A member count
that the device count does not divide is padded once with dummy members (copies of the
last member, memjax.runner) whose results are dropped, so any count works and member i's
result never depends on the device count.

Several hosts: call `initialize_distributed()` (jax.distributed) first on every host; the
mesh then spans every device of every host (see docs/scale.md).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from memjax.config import env_number
from memjax.errors import MemjaxError

AXIS = "members"


def member_mesh(devices: int | list | None = None) -> Mesh:
    """A 1-D mesh with axis `members` over `devices`: a list of devices, a count (the first
    n of jax.devices()), or None for every device of every process."""
    all_devices = jax.devices()
    if devices is None:
        chosen = all_devices
    elif isinstance(devices, int):
        chosen = all_devices[:devices]
    else:
        chosen = list(devices)
    return Mesh(np.asarray(chosen), (AXIS,))


def default_mesh(members: int) -> Mesh:
    """Every device (at most MEMJAX_DEVICES of them, when set), but no more devices than
    members (a device without a real member would only compute a dummy). With several
    processes every device of every process: each process must hold a part of every array
    it computes."""
    if jax.process_count() > 1:
        return member_mesh()
    cap = env_number("MEMJAX_DEVICES", int, jax.device_count(), minimum=1)
    return member_mesh(min(members, cap, jax.device_count()))


def padded_members(members: int, mesh: Mesh, chunk: int | None = None) -> int:
    """The member count padded to a multiple of the mesh size (times `chunk` per device)."""
    d = mesh.shape[AXIS]
    per_device = -(-members // d)
    if chunk:
        per_device = -(-per_device // chunk) * chunk
    return d * per_device


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """device_put that also works when the mesh spans other hosts: every process holds the
    same full array and hands each of its devices its own slice."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # a global array: reshard
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index],
                                        dtype=x.dtype)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf copied to every device of the mesh (shared data: images, labels)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda x: _put(x, sharding), tree)


def everywhere(tree: Any, members: int, mesh: Mesh | None = None) -> Any:
    """Results with a leading member axis made whole on every device (inside or outside
    jit), so every process can read every member's numbers; the identity in one process.
    The metric functions end with it."""
    if jax.process_count() == 1:
        return tree
    return jax.lax.with_sharding_constraint(
        tree, NamedSharding(mesh or default_mesh(members), P()))


def shard_members(tree: Any, mesh: Mesh, members: int) -> Any:
    """Leaves whose leading axis is the member axis (length `members`, a multiple of the mesh
    size: memjax.runner pads the count once) split over the mesh; every other leaf
    (scalars) replicated."""
    split, whole = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    if members % mesh.shape[AXIS]:
        raise ValueError(f"{members} members do not divide over {mesh.shape[AXIS]} devices: "
                         f"pad them first (memjax.ensemble.pad_members)")

    def put(x):
        stacked = getattr(x, "ndim", 0) >= 1 and x.shape[0] == members
        return _put(x, split if stacked else whole)

    return jax.tree_util.tree_map(put, tree)


def initialize_distributed() -> bool:
    """Start jax.distributed when launched as one of several processes, before any other JAX
    call. Cloud TPU pod slices and Slurm are detected by jax itself; elsewhere set
    MEMJAX_COORDINATOR (host:port), MEMJAX_NUM_PROCESSES and MEMJAX_PROCESS_ID.
    MEMJAX_DISTRIBUTED=0 turns detection off. Returns True when running as several processes."""
    if not several_processes_requested():
        return False
    coordinator = os.environ.get("MEMJAX_COORDINATOR")
    if coordinator:
        processes = env_number("MEMJAX_NUM_PROCESSES", int, minimum=1)
        process_id = env_number("MEMJAX_PROCESS_ID", int, minimum=0)
        if processes is None or process_id is None:
            raise MemjaxError("MEMJAX_COORDINATOR needs MEMJAX_NUM_PROCESSES and "
                              "MEMJAX_PROCESS_ID set too")
        if process_id >= processes:
            raise MemjaxError(f"MEMJAX_PROCESS_ID={process_id} must be below "
                              f"MEMJAX_NUM_PROCESSES={processes}")
        jax.distributed.initialize(coordinator, processes, process_id)
    else:
        jax.distributed.initialize()
    return jax.process_count() > 1


def several_processes_requested() -> bool:
    """Whether the environment launches this process as one of several: MEMJAX_COORDINATOR,
    a multi-task Slurm step or a multi-host TPU slice, unless MEMJAX_DISTRIBUTED=0."""
    if os.environ.get("MEMJAX_DISTRIBUTED") == "0":
        return False
    return bool(os.environ.get("MEMJAX_COORDINATOR")) \
        or os.environ.get("SLURM_NTASKS", "1") != "1" \
        or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0


def is_writer() -> bool:
    """Whether this process writes the run directory: process 0 alone, so that every host's
    members (gathered by `to_host`) land in one run directory."""
    return jax.process_index() == 0


@functools.partial(jax.jit, static_argnums=(2, 3))
def take_members(tree: Any, take: jax.Array, padded: int, mesh: Mesh) -> Any:
    """The members `take` [K] of every leaf with the member axis [padded, ...], split over
    the mesh as [K, ...]; other leaves (scalars) as they are."""
    split = NamedSharding(mesh, P(AXIS))
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a[take], split)
                        if a.ndim and a.shape[0] == padded else a, tree)


@functools.partial(jax.jit, static_argnums=(3, 4), donate_argnums=0)
def put_members(full: Any, part: Any, take: jax.Array, padded: int, mesh: Mesh) -> Any:
    """`full` with its members `take` replaced by `part`'s (take_members' inverse; scalar
    leaves from `part`)."""
    split = NamedSharding(mesh, P(AXIS))
    return jax.tree.map(lambda a, b: jax.lax.with_sharding_constraint(a.at[take].set(b), split)
                        if a.ndim and a.shape[0] == padded else b, full, part)


def to_host(tree: Any) -> Any:
    """Numpy copies of global arrays; with several processes every process gets the whole
    array (members held by other hosts included) through an all-gather."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
