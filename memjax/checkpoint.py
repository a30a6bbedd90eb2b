"""Checkpoints of one training phase, so a killed run resumes where it stopped.

A phase (one ensemble trained for some epochs) keeps its checkpoints in its own folder,
`run_dir/checkpoints/<phase>/<epoch>/`, written by orbax's CheckpointManager at epoch
boundaries (every N epochs, or by time: `SaveClock`), asynchronously (the device-to-host
copy happens before `save` returns, so the next epoch may donate the state's buffers; the
file writes overlap with training). Each
checkpoint holds the EnsembleState and a small JSON dict of host-side progress (e.g. how
many metrics.jsonl records the run had written). Every key is a stateless function of
(seed, member, epoch, step), so restoring the state at an epoch boundary continues the
run bit-for-bit.

orbax writes a checkpoint to a temporary folder and renames it when complete, so a
process killed mid-save leaves no partial checkpoint behind. A checkpoint damaged later
(unreadable, or its contents or host records no longer matching the checksums stored beside
them) is reported and moved aside, and the previous one is used. Checkpoints that do not
fit the state to restore (other shapes: the model or memjax changed) are kept, and
restoring them is an error.
"""
from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import jax.numpy as jnp

from memjax.ensemble import EnsembleState
from memjax.errors import MemjaxError


def _checksum(host: dict) -> int:
    return zlib.crc32(json.dumps(host, sort_keys=True).encode())


def _damage(state: EnsembleState, host: dict, step: int) -> str | None:
    """What is wrong with a restored checkpoint (popping memjax's checksums from host), or
    None."""
    stored, stored_host = host.pop("_fingerprint", None), host.pop("_host_checksum", None)
    if stored is None or stored_host is None:
        return "no checksum stored with it"
    if int(state.epoch) != step:
        return f"holds epoch {int(state.epoch)}"
    if int(fingerprint(state)) != stored or _checksum(host) != stored_host:
        return "contents do not match their checksum"
    return None


def _check_arrays(stored: Any, like: Any) -> None:
    """Raise ValueError naming the first array whose name, shape or dtype in a checkpoint's
    metadata (`stored`) differs from `like`'s. Checked before orbax reads the arrays: a read
    that fails midway abandons orbax's other reads, whose coroutines then print tracebacks
    when they are collected, long after the failure was reported."""
    import orbax.checkpoint as ocp

    def describe(a):
        return "nothing" if a is None else f"{tuple(a.shape)} {np.dtype(a.dtype).name}"

    stored, wanted = ocp.tree.to_flat_dict(stored or {}), ocp.tree.to_flat_dict(like)
    for key in sorted(set(stored) | set(wanted), key=str):
        a, b = stored.get(key), wanted.get(key)
        if describe(a) != describe(b):
            raise ValueError(f"{'/'.join(map(str, key))} is {describe(a)} in the checkpoint, "
                             f"{describe(b)} in this run")


def _one_line(error: Exception) -> str:
    message = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {message}"


class _QuietMetadataWarnings(logging.Filter):
    """orbax warns through absl when a step folder lacks _CHECKPOINT_METADATA (seen on
    resuming a killed run) and goes on without that file; memjax checks every restored state
    against its own checksum, so the line is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Metadata file does not exist")


logging.getLogger("absl").addFilter(_QuietMetadataWarnings())


@jax.jit
def fingerprint(tree: Any) -> jax.Array:
    """A uint32 checksum of every bit of every array in `tree`: a wrapping, position-weighted
    sum of the raw bits, so it is exact, NaN-safe and independent of reduction order."""
    def bits(a):
        if a.dtype == jnp.bool_:
            return a.astype(jnp.uint32)
        raw = jax.lax.bitcast_convert_type(a, jnp.dtype(f"uint{a.dtype.itemsize * 8}"))
        return raw.astype(jnp.uint32)

    total = jnp.zeros((), jnp.uint32)
    for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
        # Each element weighted by an odd number from its position, so swapped elements
        # (or leaves) change the sum too.
        raw = bits(leaf).ravel()
        weight = jnp.arange(raw.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(2 * i + 1)
        total = total + jnp.sum(raw * weight, dtype=jnp.uint32)
    return total


@contextmanager
def _interrupts_deferred():
    """Hold SIGTERM and Ctrl-C while orbax saves or waits for a save: an exception raised
    inside it can leave its background writer waiting forever, so the process never ends.
    A signal that arrives meanwhile ends the run right after, as KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            raise KeyboardInterrupt(signal.Signals(received[0]).name)


class SaveClock:
    """When a run checkpoints by time, across its phases: at an epoch boundary once the work
    a resume would redo reaches `minutes`, and at a phase's last epoch once it reaches half
    of that. So a killed run loses at most `minutes` of work (and the epoch under way), and
    short phases write nothing: nobody needs a checkpoint of a phase that takes seconds.

    The work a resume would redo: the time since the current phase's newest checkpoint (or
    since the previous phase ended), and the finished phases that ended unsaved, each from
    its newest checkpoint on. The latter stay under minutes / 2, since a phase is saved at
    its end when they would not. `now`: the clock in seconds (tests pass their own). With
    several processes, process 0's decision is everyone's (they save together).
    """

    def __init__(self, minutes: float, now: Callable[[], float] = time.monotonic):
        self.limit, self._now = 60.0 * minutes, now
        self._since, self._behind = now(), 0.0

    def unsaved(self) -> float:
        """Seconds of work a resume now would redo."""
        return self._behind + self._now() - self._since

    def due(self, last: bool) -> bool:
        """Whether to checkpoint now; last: at the phase's last epoch."""
        decided = self.unsaved() >= (self.limit / 2 if last else self.limit)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            decided = bool(multihost_utils.broadcast_one_to_all(np.bool_(decided)))
        return decided

    def saved(self) -> None:
        self._since = self._now()

    def phase_ended(self) -> None:
        """The phase is over: what it did since its newest checkpoint stays to redo."""
        now = self._now()
        self._behind += now - self._since
        self._since = now


class PhaseCheckpoints:
    """The checkpoints of one training phase.

    directory: the phase's folder (created). every: save after every that many epochs
    (the phase's last epoch is always saved), or clock: save when it says (a run's
    SaveClock). keep: newest checkpoints kept on disk. host_state: returns the JSON-able
    host-side progress stored beside each state.
    """

    def __init__(self, directory: str | Path, *, every: int = 1, clock: SaveClock | None = None,
                 keep: int = 2, host_state: Callable[[], dict] = dict,
                 asynchronous: bool = True):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        self.every, self.clock = every, clock
        self.host_state = host_state
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            self.directory,
            # named, so that a new process can read a checkpoint's metadata before its arrays
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "host": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous,
                cleanup_tmp_directories=True))

    def restore(self, like: EnsembleState) -> tuple[EnsembleState, dict] | None:
        """The newest readable checkpoint as (state, host_state), or None when there is none.

        like: a state of the same structure (e.g. freshly initialized); its shapes, dtypes
        and shardings say how to place the restored arrays. A newer checkpoint that cannot
        be read is reported on stderr and moved aside (`<epoch>.unreadable`, kept on disk)
        once an older one restores. If none restores and any failure was not damage (its
        checksum, the one memjax stores with it, never got checked: e.g. arrays of other
        shapes after a change of model or of memjax), nothing is moved and MemjaxError
        says so; if every one is damaged, they are moved aside and None is returned.
        """
        ocp = self._ocp
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), like)
        failed: list[tuple[int, Exception, bool]] = []  # (step, error, damaged)
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                _check_arrays(self._manager.item_metadata(step)["state"], like)
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore()))
            except Exception as e:  # unreadable, or not a state like `like`
                failed.append((step, e, False))
                continue
            state, host = restored.state, dict(restored.host or {})
            problem = _damage(state, host, step)
            if problem:
                failed.append((step, ValueError(problem), True))
                continue
            if jax.process_count() == 1:
                # Uncommitted copies, so the state can go wherever the caller's mesh says.
                state = jax.tree.map(lambda a: jax.device_put(np.asarray(a)), state)
            self._set_aside(failed, "resuming from epoch " + str(step))
            return state, host
        if any(not damaged for _, _, damaged in failed):
            step, error, _ = next(f for f in failed if not f[2])
            raise MemjaxError(
                f"cannot restore the checkpoints in {self.directory} (epoch {step}: "
                f"{_one_line(error)}); they are kept. If the model's settings or memjax "
                f"changed since they were written, start over with --overwrite")
        self._set_aside(failed, "starting this phase over")
        return None

    def _set_aside(self, failed: list[tuple[int, Exception, bool]], then: str) -> None:
        if jax.process_index() != 0:  # the folder is shared: process 0 moves it
            failed = []
        for step, error, _ in failed:
            aside = self.directory / f"{step}.unreadable"
            print(f"memjax: checkpoint {self.directory / str(step)} is unreadable "
                  f"({_one_line(error)}); moved to {aside.name}, {then}", file=sys.stderr)
            shutil.rmtree(aside, ignore_errors=True)
            (self.directory / str(step)).rename(aside)
        if failed:
            self._manager.reload()

    def save(self, state: EnsembleState, *, last: bool = False) -> bool:
        """Save `state` as checkpoint `state.epoch` if the interval or the clock says so;
        last: the phase's last epoch (always saved by interval; by clock at half its limit).

        Returns whether a save was started; it completes in the background.
        """
        epoch = int(state.epoch)
        due = self.clock.due(last) if self.clock is not None else last or epoch % self.every == 0
        if not due or epoch in self._manager.all_steps():
            return False
        ocp = self._ocp
        host = self.host_state()
        host = {**host, "_fingerprint": int(fingerprint(state)), "_host_checksum": _checksum(host)}
        with _interrupts_deferred():
            self._manager.save(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)), force=True)
        if self.clock is not None:
            self.clock.saved()
        return True

    def close(self) -> None:
        """Wait for the last save to be on disk and release the manager; the phase is over."""
        with _interrupts_deferred():
            self._manager.wait_until_finished()
            self._manager.close()
        if self.clock is not None:
            self.clock.phase_ended()

    def __enter__(self) -> "PhaseCheckpoints":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
