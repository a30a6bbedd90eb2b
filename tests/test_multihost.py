"""Two processes joined by jax.distributed (a localhost coordinator, 2 CPU devices each)
train one ensemble sharded over all 4 devices; process 0 writes the one run directory, and
its results equal a single-process run's. Covered: a study that evaluates (consistency),
one that reads metric results (csr: LASS, with fewer members than devices) and a sweep
(capacity)."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from memjax.cli import main

STUDIES = {
    "consistency": ["--set", "conditions=real", "--members", "4"],
    "csr": ["--set", "conditions=real", "--set", "train.epochs=1"],
    "capacity": ["--set", "noise_levels=0.5", "--set", "train.epochs=1"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("study", list(STUDIES))
def test_two_processes_write_one_run_equal_to_one_process(tmp_path, study):
    args = ["run", study, "--preset", "smoke", *STUDIES[study]]
    port = _free_port()
    procs = []
    for k in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   MEMJAX_COORDINATOR=f"127.0.0.1:{port}", MEMJAX_NUM_PROCESSES="2",
                   MEMJAX_PROCESS_ID=str(k))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "memjax", *args, "--out", str(tmp_path / "multi")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert (tmp_path / "multi" / "results.npz").exists()
    assert (tmp_path / "multi" / "hosts" / "1" / "manifest.json").exists()
    assert not (tmp_path / "multi" / "hosts" / "0").exists()
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    multi = np.load(tmp_path / "multi" / "results.npz")
    single = np.load(tmp_path / "single" / "results.npz")
    assert sorted(multi.files) == sorted(single.files)
    for key in multi.files:  # equal up to float rounding (other devices, other fusions)
        if multi[key].dtype.kind == "f":
            np.testing.assert_allclose(multi[key], single[key], rtol=1e-4, atol=1e-6)
        else:
            np.testing.assert_array_equal(multi[key], single[key])
    if study == "consistency":
        assert multi["correct_real"].shape == (4, 200)
