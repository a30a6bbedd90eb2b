"""Two processes joined by jax.distributed (a localhost coordinator, 2 CPU devices each)
train one ensemble sharded over all 4 devices; process 0 writes the one run directory, and
its results equal a single-process run's. Covered: a study that evaluates (consistency)
and a sweep (capacity, killed mid-run and resumed). LASS across devices is the 8-device
tests' (tests/test_sharding.py, noise-curves)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from memjax.cli import main

# end-to-end runs in subprocesses (CI runs them)
pytestmark = [pytest.mark.slow, pytest.mark.all_devices]

STUDIES = {
    "consistency": ["--set", "conditions=real", "--members", "4"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(args, out):
    port = _free_port()
    procs = []
    for k in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   MEMJAX_COORDINATOR=f"127.0.0.1:{port}", MEMJAX_NUM_PROCESSES="2",
                   MEMJAX_PROCESS_ID=str(k))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "memjax", *args, "--out", str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs):
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    return outputs


def _assert_equal_runs(multi_dir, single_dir):
    multi = np.load(multi_dir / "results.npz")
    single = np.load(single_dir / "results.npz")
    assert sorted(multi.files) == sorted(single.files)
    for key in multi.files:  # equal up to float rounding (other devices, other fusions)
        if multi[key].dtype.kind == "f":
            np.testing.assert_allclose(multi[key], single[key], rtol=1e-4, atol=1e-6)
        else:
            np.testing.assert_array_equal(multi[key], single[key])


@pytest.mark.parametrize("study", list(STUDIES))
def test_two_processes_write_one_run_equal_to_one_process(tmp_path, study):
    args = ["run", study, "--preset", "smoke", *STUDIES[study]]
    _finish(_start_two(args, tmp_path / "multi"))
    assert (tmp_path / "multi" / "results.npz").exists()
    assert (tmp_path / "multi" / "hosts" / "1" / "manifest.json").exists()
    assert not (tmp_path / "multi" / "hosts" / "0").exists()
    assert not (tmp_path / "multi" / "checkpoints").exists()  # removed once finished
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    _assert_equal_runs(tmp_path / "multi", tmp_path / "single")
    multi = np.load(tmp_path / "multi" / "results.npz")
    if study == "consistency":
        assert multi["correct_real"].shape == (4, 200)


@pytest.mark.slow
def test_two_processes_killed_and_resumed_equal_an_uninterrupted_run(tmp_path):
    """Both processes save their parts of the state into the run's one checkpoint folder;
    killed with SIGKILL mid-run and started again with --resume, they end where one
    uninterrupted process does."""
    args = ["run", "capacity", "--preset", "smoke", "--set", "noise_levels=0.5",
            "--set", "widths=8", "--set", "bucket_limits=8", "--set", "train.epochs=6",
            # by time, at an interval every epoch passes: process 0's decision is both's
            "--checkpoint-minutes", "0.000001"]
    out = tmp_path / "multi"
    procs = _start_two(args, out)
    phase = out / "checkpoints" / "01-width-8"
    deadline = time.time() + 240
    while not any(p.name.isdigit() and int(p.name) >= 2 for p in phase.glob("[0-9]*")) \
            and time.time() < deadline:
        assert all(p.poll() is None for p in procs), "the run ended before it was killed"
        time.sleep(0.01)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    outputs = _finish(_start_two(args + ["--resume"], out))
    assert all("width-8: resumed from the checkpoint of epoch" in o for o in outputs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["resumed"]) == 1
    assert (out / "hosts" / "1" / "manifest.json").exists() and not (out / "hosts" / "0").exists()
    assert not (out / "checkpoints").exists()
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    _assert_equal_runs(out, tmp_path / "single")
