"""The run directory: manifest.json, summary.json, results.npz, metrics.jsonl, figures.

Every file but metrics.jsonl is written to a temporary name and renamed, so a reader never
sees half a file. manifest.json carries a status: running, finished or failed.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from memjax.errors import MemjaxError


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("memjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_description() -> dict[str, Any]:
    import jax

    devices = jax.devices()
    return {"platform": devices[0].platform, "kind": devices[0].device_kind,
            "count": len(devices), "host": platform.node(), "processor": platform.processor()}


class RunDir:
    """A study's output folder. Refuses to write into a finished run unless overwrite."""

    def __init__(self, path: str | Path, *, overwrite: bool = False):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise MemjaxError(f"cannot write to output directory {self.path}: "
                              f"{e.strerror or e}") from None
        manifest = self.read_manifest()
        if manifest.get("status") == "finished" and not overwrite:
            raise MemjaxError(f"{self.path} holds a finished run; pass --overwrite to replace it")
        self._started = time.time()

    def read_manifest(self) -> dict:
        try:
            return json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError):
            return {}

    def write_json(self, name: str, obj: Any) -> None:
        with atomic_path(self.path / name) as tmp:
            tmp.write_text(to_json(obj) + "\n")

    def write_npz(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        with atomic_path(self.path / name) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})

    def save_figure(self, fig, name: str) -> None:
        with atomic_path(self.path / name) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(name).suffix[1:])

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (values copied to the host by the caller)."""
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")

    def start(self, experiment: str, config: dict) -> None:
        (self.path / "metrics.jsonl").unlink(missing_ok=True)
        self._manifest = {"experiment": experiment, "status": "running", "config": config,
                          "versions": versions(), "device": device_description(),
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.write_json("manifest.json", self._manifest)

    def finish(self, **extra: Any) -> None:
        self._manifest.update(status="finished", wall_time_s=round(time.time() - self._started, 3),
                              **extra)
        self.write_json("manifest.json", self._manifest)

    def fail(self, error: BaseException) -> None:
        self._manifest.update(status="failed", error=f"{type(error).__name__}: {error}",
                              wall_time_s=round(time.time() - self._started, 3))
        self.write_json("manifest.json", self._manifest)
