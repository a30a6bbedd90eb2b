"""The persistent compilation cache: where it lives, and that a second run reads its
programs back instead of compiling them."""
import os
import subprocess
import sys
from pathlib import Path

from memjax.compilation_cache import cache_dir


def test_the_cache_folder_follows_the_settings(monkeypatch, tmp_path):
    for name in ("MEMJAX_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "memjax" / "xla"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "memjax" / "xla"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert cache_dir() == tmp_path / "jax"
    monkeypatch.setenv("MEMJAX_COMPILATION_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("MEMJAX_COMPILATION_CACHE", "0")
    assert cache_dir() is None


def test_a_rerun_reads_its_programs_from_the_cache(tmp_path):
    """The first run writes its programs; a second one reads them: with every entry
    spoiled and jax told to raise on a bad entry, it fails, and without the cache it runs."""
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(MEMJAX_COMPILATION_CACHE=str(cache), JAX_PLATFORMS="cpu",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", TQDM_DISABLE="1")
    args = [sys.executable, "-m", "memjax.cli", "run", "consistency", "--preset", "smoke",
            "--set", "conditions=real", "--out", str(tmp_path / "run"), "--overwrite"]
    subprocess.run(args, env=env, check=True, capture_output=True)
    entries = list(cache.iterdir())
    assert any(p.name.startswith("jit_train_epoch") for p in entries)
    for entry in entries:
        entry.write_bytes(b"spoiled")
    spoiled = {**env, "JAX_RAISE_PERSISTENT_CACHE_ERRORS": "1"}
    read = subprocess.run(args, env=spoiled, capture_output=True, text=True)
    assert read.returncode != 0 and "decompress" in read.stderr
    subprocess.run(args, env={**spoiled, "MEMJAX_COMPILATION_CACHE": "0"}, check=True,
                   capture_output=True)
