import os

# Tests run on the CPU with 8 virtual devices. Ensembles use one of them unless a test is
# marked `all_devices` (the sharding and multi-process tests, which compare 8 devices, or
# several processes, with one): on 2 cores, 8 devices cost about 1.6x the time per test.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU backend at optimization level 0 compiles these small programs in less time than
# level 2 runs them faster (tests compile far more than they compute).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
# One compilation cache for the session and the processes its tests start: many tests build
# the same small ensembles, and a program compiled once is read back instead of compiled.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _OWN_CACHE = tempfile.mkdtemp(prefix="memjax-test-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
# jax writes only programs that took a second to compile; the tests' programs mostly take
# less, and the same ones are compiled by many tests and their processes.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _one_device_unless_marked(request, monkeypatch):
    if request.node.get_closest_marker("all_devices") is None \
            and "MEMJAX_DEVICES" not in os.environ:
        monkeypatch.setenv("MEMJAX_DEVICES", "1")


@pytest.fixture
def fake_npz(tmp_path):
    """Write a small data set file in the documented format and return its path."""

    def make(name="fake.npz", n_train=300, n_test=60, shape=(28, 28), classes=10, **replace):
        rng = np.random.default_rng(0)
        arrays = {
            "x_train": rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
            "y_train": rng.integers(0, classes, n_train).astype(np.int64),
            "x_test": rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8),
            "y_test": rng.integers(0, classes, n_test).astype(np.int64),
        }
        arrays.update(replace)
        arrays = {k: v for k, v in arrays.items() if v is not None}
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return make


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The end-to-end runs (marked slow, the longest tests) first, so that the workers'
    last tests are short ones and none waits on a long one started late."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
