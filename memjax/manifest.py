"""What a run's manifest.json records beyond its status: the versions and devices it ran on,
its MEMJAX_* environment, and how a config differs from the one a run recorded (what
`--resume` and `memjax reproduce` refuse to mix)."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from memjax.files import to_json


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


def read_manifest(path: str | Path) -> dict:
    """The manifest.json in run directory `path`, {} where there is none (or unreadable)."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def memjax_environment() -> dict[str, str]:
    """This process's MEMJAX_* environment variables (MEMJAX_DATA_DIR above all)."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("MEMJAX_")}


def differences_from_run(manifest: dict, config: Any) -> list[str]:
    """`key: old -> new` for every setting in which `config` (a dataclass or dict, about to
    run in this process) differs from the run that `manifest` (manifest.json) records;
    sorted, [] when they are the same. Data folders are compared as the loader resolves
    them (--data-dir, else MEMJAX_DATA_DIR; absolute; ignored where the data set reads
    none), so the same data reached another way is the same setting."""
    old = _as_loaded(json.loads(to_json(manifest.get("config"))), manifest.get("environment", {}),
                     manifest.get("cwd", os.getcwd()))
    new = _as_loaded(json.loads(to_json(config)), memjax_environment(), os.getcwd())
    return sorted(_differences(old, new, defaults=_defaults(config)))


def listed(differences: list[str], most: int = 5) -> str:
    """The first `most` differences, comma-separated, and how many more there are."""
    more = len(differences) - most
    return ", ".join(differences[:most]) + (f", and {more} more" if more > 0 else "")


def _defaults(config: Any) -> Any:
    """A dataclass config's field defaults, nested as its JSON is (a setting added to memjax
    after a run started is absent from that run's manifest: at its default it is no
    difference)."""
    if isinstance(config, dict):
        return {k: _defaults(v) for k, v in config.items()}
    if not dataclasses.is_dataclass(config):
        return None
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = _defaults(value)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = json.loads(to_json(f.default))
    return out


def _as_loaded(config: Any, environment: dict, cwd: str) -> Any:
    from memjax.data.sources import DATA_DIR_ENV, VALIDATION_SIZE

    if not isinstance(config, dict):
        return config
    out = {k: _as_loaded(v, environment, cwd) for k, v in config.items()}
    if "name" in out and "data_dir" in out:  # a DataConfig
        folder = None
        if out["name"] in VALIDATION_SIZE:  # the data sets read from a folder
            folder = out["data_dir"] or environment.get(DATA_DIR_ENV)
            folder = os.path.normpath(os.path.join(cwd, folder)) if folder else None
        out["data_dir"] = folder
    return out


def _differences(old: Any, new: Any, prefix: str = "", defaults: Any = None) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        defaults = defaults if isinstance(defaults, dict) else {}
        for key in sorted(set(old) | set(new)):
            if key not in old and key in defaults and new[key] == defaults[key]:
                continue
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.",
                                defaults.get(key))
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
