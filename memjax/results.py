"""The run directory: manifest.json, summary.json, results.npz, metrics.jsonl, figures,
checkpoints/.

Every file but metrics.jsonl is written to a temporary name and renamed, so a reader never
sees half a file (metrics.jsonl is appended one line at a time; a torn last line is dropped
on resume). manifest.json carries a status: running, finished or failed (with the error),
and lists the run's outputs (what an --overwrite of it removes).

Resuming (`RunDir(path, resume=True)`): the study runs again from its start with the same
config; each training phase restores its newest checkpoint (run_dir/checkpoints/<phase>/)
and trains only the epochs left, so finished phases are skipped. metrics.jsonl records
already on disk are not written twice: the run keeps a cursor over them, and each
checkpoint stores the cursor's position at its epoch.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from memjax.errors import MemjaxError
from memjax.files import atomic_path, to_json
from memjax.manifest import (device_description, differences_from_run, listed,
                             memjax_environment, read_manifest, versions)


CHECKPOINT_MINUTES = 10.0  # the default interval of checkpoints by time
_PHASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_phase_id(phase: str) -> None:
    """A phase id names files and folders: letters, digits, '.', '_' and '-' (ValueError)."""
    if not isinstance(phase, str) or not _PHASE_ID.fullmatch(phase):
        raise ValueError(f"phase id {phase!r}: use letters, digits, '.', '_' and '-' "
                         f"(the progress text goes in desc=)")


class RunDir:
    """A study's output folder. Refuses to write into a finished run unless overwrite.

    resume: continue the unfinished run in `path` (see the module docstring); with no run
      there, start one. checkpoint_minutes: checkpoint by time, so that a killed run
      loses at most that many minutes of work (memjax.checkpoint.SaveClock; short phases
      write nothing). checkpoint_every: instead, save each training phase's state every
      that many epochs (and after its last; 0: no checkpoints). keep_checkpoints: leave checkpoints/
      in place when the run finishes (default: removed, they are only for resuming).
      discard_unstarted: a new run that fails before its first training phase (bad data,
      no network) leaves nothing behind: the folders made for it are removed, or, in a
      folder that was there before, its manifest.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, resume: bool = False,
                 checkpoint_minutes: float = CHECKPOINT_MINUTES,
                 checkpoint_every: int | None = None,
                 keep_checkpoints: bool = False, checkpoints_of: str | Path | None = None,
                 discard_unstarted: bool = False):
        from memjax.checkpoint import SaveClock

        if checkpoint_every is not None and checkpoint_every < 0:
            raise MemjaxError(f"checkpoint interval must be >= 0 epochs, got {checkpoint_every}")
        if checkpoint_every is None and not checkpoint_minutes > 0:
            raise MemjaxError(f"checkpoint interval must be > 0 minutes, got {checkpoint_minutes}")
        self.path = Path(path)
        # Several processes checkpoint one state into one folder: the writer's run
        # directory's (process 0); only that process creates or removes it.
        self._checkpoint_dir = Path(checkpoints_of or path) / "checkpoints"
        self._owns_checkpoints = checkpoints_of is None or Path(checkpoints_of) == self.path
        self.resume = resume
        self.overwrite = overwrite
        self.checkpoint_every = checkpoint_every
        self.save_clock = SaveClock(checkpoint_minutes) if checkpoint_every is None else None
        self.keep_checkpoints = keep_checkpoints
        self._phases = 0
        self._phase_ids: set[str] = set()
        self._records_on_disk = 0
        self._cursor = 0
        self._diverged: dict[str, list[int]] = {}
        self._placement: dict[str, dict] = {}
        self.discard_unstarted = discard_unstarted
        self._new = False  # start() began a run where there was none
        self._manifest: dict | None = None
        self._replaced: dict | None = None  # the manifest of the run start() replaces
        self._made = list(itertools.takewhile(lambda p: not p.exists(),
                                              [self.path, *self.path.parents]))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise MemjaxError(f"cannot write to output directory {self.path}: "
                              f"{e.strerror or e}") from None
        manifest = self.read_manifest()
        # start() clears a run's outputs and checkpoints/: never another program's files.
        # hosts/ holds the logs of a several-process run's other processes, which may
        # make it before process 0 gets here.
        if not manifest and any(not f.name.startswith(".") and f.name != "hosts"
                                for f in self.path.iterdir()):
            raise MemjaxError(f"{self.path} holds files but no memjax run (no manifest.json); "
                              f"choose a new or empty output directory")
        if manifest.get("status") == "finished" and not (overwrite or resume):
            raise MemjaxError(f"{self.path} holds a finished run; pass --overwrite to replace it")
        if (not resume and not overwrite and manifest.get("status") in ("running", "failed")
                and any(f.is_file() for f in self.checkpoint_dir.rglob("*"))):
            raise MemjaxError(f"{self.path} holds an unfinished run with checkpoints; pass "
                              f"--resume to continue it or --overwrite to start over")
        self._started = time.time()

    @staticmethod
    def status_of(path: str | Path) -> str | None:
        """The status in `path`/manifest.json (running, finished, failed), None if no run."""
        return read_manifest(path).get("status")

    @property
    def status(self) -> str | None:
        return self.status_of(self.path)

    @property
    def finished(self) -> bool:
        """True when the run here finished (what `memjax reproduce` skips)."""
        return self.status == "finished"

    @property
    def checkpoint_dir(self) -> Path:
        return self._checkpoint_dir

    def read_manifest(self) -> dict:
        return read_manifest(self.path)

    def write_json(self, name: str, obj: Any) -> None:
        self._output(name)
        self._json(name, obj)

    def _json(self, name: str, obj: Any) -> None:
        with atomic_path(self.path / name) as tmp:
            tmp.write_text(to_json(obj) + "\n")

    def _write_manifest(self) -> None:  # (not an output: write_json would list it)
        self._json("manifest.json", self._manifest)

    def _output(self, name: str) -> None:
        """Before the run writes `name`: the run it replaces goes, and the manifest lists
        `name` among the outputs that an --overwrite of this run removes."""
        self._clear_replaced()
        if self._manifest is not None and name not in self._manifest.setdefault("outputs", []):
            self._manifest["outputs"].append(name)
            self._write_manifest()

    def _clear_replaced(self) -> None:
        """Remove what the run that this one replaces (--overwrite) wrote: its outputs,
        metrics.jsonl and checkpoints/. Done when this run begins its first phase or writes
        its first output, so that one failing before that (bad data, a batch larger than
        the data) leaves the previous run whole."""
        if self._replaced is None:
            return
        replaced, self._replaced = self._replaced, None
        # runs from before manifests listed their outputs: the names every study writes
        outputs = replaced.get("outputs") or ["summary.json", "results.npz",
                                              *(f.name for f in self.path.glob("*.png"))]
        for name in {*outputs, "metrics.jsonl"}:
            if Path(name).name == name:  # a file of this folder, never a path elsewhere
                (self.path / name).unlink(missing_ok=True)
        if self._owns_checkpoints:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def write_npz(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        self._output(name)
        with atomic_path(self.path / name) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})

    def write_csv(self, name: str, columns: dict[str, np.ndarray]) -> None:
        """One row per index of the equal-length columns; floats with 7 significant
        digits (nan where missing), bools as 0/1."""
        import csv

        arrays = {k: np.asarray(v) for k, v in columns.items()}
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of unequal length: {sorted(lengths)}")
        def cell(v):
            if isinstance(v, (bool, np.bool_)):
                return int(v)
            return f"{v:.7g}" if isinstance(v, (float, np.floating)) else v
        self._output(name)
        with atomic_path(self.path / name) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(arrays)
                writer.writerows(zip(*[[cell(v) for v in a.tolist()] if a.dtype != object
                                       else a for a in arrays.values()]))

    def save_figure(self, fig, name: str) -> None:
        """Write a matplotlib figure to `name` (atomically) and close it."""
        import matplotlib.pyplot as plt

        try:
            self._output(name)
            with atomic_path(self.path / name) as tmp:
                fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(name).suffix[1:])
        finally:
            plt.close(fig)

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (values copied to the host by the caller).

        On resume, a record whose place in the sequence is already on disk is skipped (the
        run is deterministic, so it is the same record).
        """
        self._cursor += 1
        if self._cursor <= self._records_on_disk:
            return
        self._clear_replaced()
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(to_json(record, indent=None) + "\n")

    def checkpoints(self, phase: str, history: dict[str, list] | None = None):
        """The checkpoints of the next training phase (memjax.checkpoint.PhaseCheckpoints),
        in checkpoints/<NN>-<phase>/ where NN counts the phases of this run in order and
        phase is the phase's id (check_phase_id; unique within the run);
        None when checkpointing is off. history: a study's per-epoch host-side records
        (name -> list, one entry per epoch), saved with each checkpoint and put back by
        `restore_progress`."""
        from memjax.checkpoint import PhaseCheckpoints

        check_phase_id(phase)
        if phase in self._phase_ids:
            raise ValueError(f"phase id {phase!r} used twice in one run")
        self._phase_ids.add(phase)
        self._phases += 1
        self._clear_replaced()
        if self.checkpoint_every == 0:
            return None
        return PhaseCheckpoints(self.checkpoint_dir / f"{self._phases:02d}-{phase}",
                                every=self.checkpoint_every or 1, clock=self.save_clock,
                                host_state=lambda: {"metrics_records": self._cursor,
                                                    "history": json.loads(to_json(history or {}))})

    def open_phase(self, phase: str, state, epochs: int, history: dict[str, list] | None = None):
        """Checkpoints for the next training phase and the state to train from: on resume,
        the phase's newest checkpoint (with `history` and the metrics cursor restored),
        else `state` as given. Returns (PhaseCheckpoints or None, state). With several
        processes every process calls it, and all save into and restore from one folder
        (`checkpoints_of`), each its own part of the state."""
        checkpoints = self.checkpoints(phase, history)
        if checkpoints is not None and self.resume:
            restored = checkpoints.restore(state)
            if restored is not None:
                state, progress = restored
                self.restore_progress(progress, history)
                print(f"memjax: {phase}: resumed from the checkpoint of epoch "
                      f"{int(state.epoch)}/{epochs}", file=sys.stderr)
        return checkpoints, state

    def restore_progress(self, host_state: dict, history: dict[str, list] | None = None) -> None:
        """Continue from a restored checkpoint's host-side progress: its metrics cursor and,
        into `history` (in place), the per-epoch records the study had kept."""
        self._cursor = int(host_state.get("metrics_records", self._cursor))
        if history is not None:
            for name, values in host_state.get("history", {}).items():
                history[name] = [np.asarray(v) for v in values]

    def record_divergence(self, phase: str, diverged: np.ndarray, member_ids: np.ndarray) -> None:
        """Note members that diverged in `phase` (diverged: [M] bool; member_ids: [M]);
        finish() reports them in manifest.json and summary.json."""
        ids = [int(i) for i in np.asarray(member_ids)[np.asarray(diverged, bool)]]
        if ids:
            self._diverged[phase] = ids
            print(f"memjax: warning: {phase}: member(s) {ids} diverged (non-finite loss) "
                  f"and were frozen", file=sys.stderr)

    def record_placement(self, phase: str, placement: dict) -> None:
        """Note how `phase` placed its members on the devices (memjax.runner); finish()
        writes it to manifest.json under `placement`."""
        self._placement[phase] = placement

    def start(self, experiment: str, config: dict) -> None:
        previous = self.read_manifest()
        if previous.get("status") == "finished" and not self.overwrite:
            raise MemjaxError(f"{self.path} holds a finished run; nothing to resume "
                              f"(--overwrite runs it again)")
        if self.resume and previous.get("status") in ("running", "failed"):
            self._resume_from(previous, experiment, config)
            return
        self._new = not previous
        # a run was here (--overwrite): none of its outputs may outlive it, removed when
        # this one gets going (_clear_replaced)
        self._replaced = previous or None
        self._manifest = {"experiment": experiment, "status": "running", "config": config,
                          "versions": versions(), "device": device_description(),
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        # settings that come from the environment (MEMJAX_DATA_DIR above all) and relative
        # paths are part of what the run was
        self._manifest["cwd"] = os.getcwd()
        environment = memjax_environment()
        if environment:
            self._manifest["environment"] = environment
        self._write_manifest()

    def _resume_from(self, previous: dict, experiment: str, config: dict) -> None:
        if previous.get("experiment") != experiment:
            raise MemjaxError(f"{self.path} holds a {previous.get('experiment')!r} run, "
                              f"not {experiment!r}; cannot resume it")
        diff = differences_from_run(previous, config)
        if diff:
            raise MemjaxError(f"cannot resume {self.path} with a different config "
                              f"({listed(diff)}); use the same settings or --overwrite")
        self._records_on_disk = _keep_whole_lines(self.path / "metrics.jsonl")
        device, before = device_description(), previous.get("device", {})
        moved = [k for k in ("platform", "kind", "count") if k in before and before[k] != device[k]]
        if moved or _numeric(previous.get("environment", {})) != _numeric(memjax_environment()):
            # another device count or memory budget may group and reduce members differently
            print(f"memjax: note: resuming {self.path} on other devices or with other "
                  f"MEMJAX_* settings than it started with: the results will equal an "
                  f"uninterrupted run's up to float rounding, not bit for bit", file=sys.stderr)
        # the time of the segments before (those that ended in memjax's hands: a killed
        # process records none) counts in the run's wall time
        self._started -= float(previous.get("wall_time_s") or 0.0)
        self._manifest = {k: v for k, v in previous.items() if k not in ("error", "wall_time_s")}
        self._manifest.update(status="running", versions=versions(), device=device,
                              resumed=previous.get("resumed", []) + [
                                  time.strftime("%Y-%m-%dT%H:%M:%S%z")])
        self._write_manifest()

    def finish(self, **extra: Any) -> None:
        if self._placement:
            extra["placement"] = self._placement
        if self._diverged:
            extra["diverged_members"] = self._diverged
            if (self.path / "summary.json").exists():
                summary = json.loads((self.path / "summary.json").read_text())
                self.write_json("summary.json", {**summary, "diverged_members": self._diverged})
        if not self.keep_checkpoints and self._owns_checkpoints:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        if self._manifest.get("resumed") and not extra.get("model_examples_per_second", 1):
            # this process trained nothing (it resumed after the last phase): no rate
            extra.pop("model_examples_per_second")
        self._manifest.update(status="finished", wall_time_s=round(time.time() - self._started, 3),
                              **extra)
        self._write_manifest()

    def fail(self, error: BaseException) -> None:
        if self.discard_unstarted and self._new and not self._phases:
            if self._made:  # deepest first; a parent that holds other runs stays
                shutil.rmtree(self.path, ignore_errors=True)
                for folder in self._made[1:]:
                    try:
                        folder.rmdir()
                    except OSError:
                        break
            else:
                (self.path / "manifest.json").unlink(missing_ok=True)
            return
        if self.discard_unstarted and self._replaced:  # the run it was to replace stays
            self._manifest = self._replaced
            self._write_manifest()
            return
        self._clear_replaced()
        # Ctrl-C raises KeyboardInterrupt with no text; memjax's handlers name the signal
        reason = (f"interrupted by {str(error) or 'SIGINT'}" if isinstance(error, KeyboardInterrupt)
                  else f"{type(error).__name__}: {error}")
        self._manifest.update(status="failed", error=reason,
                              wall_time_s=round(time.time() - self._started, 3))
        if self._diverged:
            self._manifest["diverged_members"] = self._diverged
        self._write_manifest()


# MEMJAX_* settings that do not change how members are grouped and reduced (the data
# itself is compared as a setting, memjax.manifest.differences_from_run)
_NOT_NUMERIC = ("MEMJAX_DATA_DIR", "MEMJAX_COMPILATION_CACHE", "MEMJAX_COORDINATOR",
                "MEMJAX_PROCESS_ID")


def _numeric(environment: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environment.items() if k not in _NOT_NUMERIC}


def _keep_whole_lines(path: Path) -> int:
    """Drop a torn last line (a kill mid-write) from a JSON-lines file; count the lines."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with atomic_path(path) as tmp:
            tmp.write_bytes(whole)
    return whole.count(b"\n")
