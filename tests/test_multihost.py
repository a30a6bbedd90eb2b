"""Two processes joined by jax.distributed (a localhost coordinator, 2 CPU devices each)
train one ensemble sharded over all 4 devices; process 0 writes the one run directory, and
its results equal a single-process run's."""
import os
import socket
import subprocess
import sys

import numpy as np

from memjax.cli import main

ARGS = ["run", "consistency", "--preset", "smoke", "--set", "conditions=real"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_one_run_equal_to_one_process(tmp_path):
    port = _free_port()
    procs = []
    for k in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   MEMJAX_COORDINATOR=f"127.0.0.1:{port}", MEMJAX_NUM_PROCESSES="2",
                   MEMJAX_PROCESS_ID=str(k))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "memjax.cli", *ARGS, "--out", str(tmp_path / "multi")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert (tmp_path / "multi" / "results.npz").exists()
    assert (tmp_path / "multi" / "hosts" / "1" / "manifest.json").exists()
    assert not (tmp_path / "multi" / "hosts" / "0").exists()
    assert main([*ARGS, "--out", str(tmp_path / "single")]) == 0
    multi = np.load(tmp_path / "multi" / "results.npz")
    single = np.load(tmp_path / "single" / "results.npz")
    assert multi["correct_real"].shape == (4, 200)
    np.testing.assert_array_equal(multi["correct_real"], single["correct_real"])
