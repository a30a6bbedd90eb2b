"""Checkpoints of one training phase, so a killed run resumes where it stopped.

A phase (one ensemble trained for some epochs) keeps its checkpoints in its own folder,
`run_dir/checkpoints/<phase>/<epoch>/`, written by orbax's CheckpointManager at epoch
boundaries, asynchronously (the device-to-host copy happens before `save` returns, so the
next epoch may donate the state's buffers; the file writes overlap with training). Each
checkpoint holds the EnsembleState and a small JSON dict of host-side progress (e.g. how
many metrics.jsonl records the run had written). Every key is a stateless function of
(seed, member, epoch, step), so restoring the state at an epoch boundary continues the
run bit-for-bit.

orbax writes a checkpoint to a temporary folder and renames it when complete, so a
process killed mid-save leaves no partial checkpoint behind. A checkpoint damaged later
(unreadable, or its contents no longer matching the checksum stored beside them) is
reported, deleted, and the previous one is used.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import jax.numpy as jnp

from memjax.ensemble import EnsembleState


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
            raise KeyboardInterrupt(f"signal {received[0]}")


class PhaseCheckpoints:
    """The checkpoints of one training phase.

    directory: the phase's folder (created). every: save after every that many epochs
    (the phase's last epoch is always saved). keep: newest checkpoints kept on disk.
    host_state: returns the JSON-able host-side progress stored beside each state.
    """

    def __init__(self, directory: str | Path, *, every: int = 1, keep: int = 2,
                 host_state: Callable[[], dict] = dict, asynchronous: bool = True):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        self.every = every
        self.host_state = host_state
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous,
                cleanup_tmp_directories=True))

    def restore(self, like: EnsembleState) -> tuple[EnsembleState, dict] | None:
        """The newest readable checkpoint as (state, host_state), or None when there is none.

        like: a state of the same structure (e.g. freshly initialized); its shapes, dtypes
        and shardings say how to place the restored arrays. A checkpoint that cannot be
        read is reported on stderr and deleted, and the one before it is tried.
        """
        ocp = self._ocp
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), like)
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore()))
                state, host = restored.state, dict(restored.host or {})
                if int(state.epoch) != step:
                    raise ValueError(f"holds epoch {int(state.epoch)}")
                stored = host.pop("_fingerprint", None)
                if stored is not None and int(fingerprint(state)) != stored:
                    raise ValueError("contents do not match their checksum")
                # Uncommitted copies, so the state can go wherever the caller's mesh says.
                state = jax.tree.map(lambda a: jax.device_put(np.asarray(a)), state)
                return state, host
            except Exception as e:  # any damage: report it, drop it, use the one before
                message = str(e).splitlines()[0][:200] if str(e) else ""
                print(f"memjax: checkpoint {self.directory / str(step)} is unreadable "
                      f"({type(e).__name__}: {message}); deleting it and resuming from the "
                      f"previous one", file=sys.stderr)
                self._manager.delete(step)
        return None

    def save(self, state: EnsembleState, *, force: bool = False) -> bool:
        """Save `state` as checkpoint `state.epoch` if the interval (or force) says so.

        Returns whether a save was started; it completes in the background.
        """
        epoch = int(state.epoch)
        if not force and epoch % self.every:
            return False
        if epoch in self._manager.all_steps():
            return False
        ocp = self._ocp
        host = {**self.host_state(), "_fingerprint": int(fingerprint(state))}
        with _interrupts_deferred():
            self._manager.save(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)), force=True)
        return True

    def close(self) -> None:
        """Wait for the last save to be on disk and release the manager."""
        with _interrupts_deferred():
            self._manager.wait_until_finished()
            self._manager.close()

    def __enter__(self) -> "PhaseCheckpoints":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
