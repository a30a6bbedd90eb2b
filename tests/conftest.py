import os

# Tests run on the CPU with 8 virtual devices, so sharding code is exercised everywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


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
