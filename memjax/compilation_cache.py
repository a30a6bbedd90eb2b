"""A persistent compilation cache, so that a rerun or a `--resume` of a study reads its
programs back instead of compiling them again (jax's own compilation cache).

The command line turns it on for every run; a library user calls `enable()` once. The
folder is `MEMJAX_COMPILATION_CACHE` if set (`0`: off), else jax's own setting
(`JAX_COMPILATION_CACHE_DIR`) if set, else `memjax/xla` in the user's cache folder
(`XDG_CACHE_HOME`, default `~/.cache`). Programs that compile in under a second are not
written (jax's threshold): reading them back would not pay.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    """Where compiled programs are kept (None: the cache is off)."""
    chosen = os.environ.get("MEMJAX_COMPILATION_CACHE")
    if chosen == "0":
        return None
    if chosen:
        return Path(chosen).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "memjax" / "xla"


def enable() -> Path | None:
    """Point jax's persistent compilation cache at `cache_dir()`; returns it (None: off, or
    the folder cannot be made, in which case programs are compiled as usual)."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax  # (here: `memjax --help` need not wait for it)

    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
