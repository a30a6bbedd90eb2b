"""A run killed with SIGKILL mid-run and resumed ends with exactly the results of a clean
run; and the same config and seed give identical results (here: in another process)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses (CI runs them)

# Two phases (real, then randY) of 6 epochs each, so the kill lands inside the second phase
# and the resume must skip the first one and continue the second from a checkpoint.
# Checkpoints by time, at an interval (0.06 ms) that every epoch passes: the clock's path.
ARGS = ["run", "consistency", "--preset", "smoke", "--set", "train.epochs=6",
        "--set", "tracked=50", "--set", "model.hidden=16", "--set", "conditions=real,randY"]
BY_TIME = ["--checkpoint-minutes", "0.000001"]


def _env(cache):
    # A shared compilation cache: the second and third processes skip XLA compilation.
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _run(out, env, *extra):
    done = subprocess.run([sys.executable, "-m", "memjax.cli", *ARGS, "--out", str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _checkpoints(phase_dir):
    # Finalized checkpoints only: orbax writes into "<step>.orbax-checkpoint-tmp-*" first and
    # renames it to "<step>" when complete.
    return [p for p in phase_dir.glob("[0-9]*")
            if p.name.isdigit() and (p / "commit_success.txt").exists()] \
        if phase_dir.is_dir() else []


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return _env(tmp_path_factory.mktemp("cache"))


def test_sigkill_then_resume_equals_clean_run(tmp_path, env):
    _run(tmp_path / "clean", env, *BY_TIME)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "memjax.cli", *ARGS, *BY_TIME, "--out",
                             str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not _checkpoints(killed / "checkpoints" / "02-randY") and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "manifest.json").read_text())["status"] == "running"
    assert not (killed / "results.npz").exists()

    resumed = _run(killed, env, "--resume", *BY_TIME)
    assert "unreadable" not in resumed.stderr
    # The finished phase is restored whole, the second continues from its checkpoint.
    assert "memjax: real: resumed from the checkpoint of epoch 6/6" in resumed.stderr
    assert "memjax: randY: resumed from the checkpoint of epoch " in resumed.stderr
    with np.load(tmp_path / "clean" / "results.npz") as a, np.load(killed / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["condition"] for r in records] == ["real", "randY"]
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["resumed"]) == 1
    assert not (killed / "checkpoints").exists()  # removed once finished

    # Determinism: a second clean run, in its own process, gives the same arrays.
    _run(tmp_path / "clean", env, "--overwrite", "--checkpoint-every", "0")
    with np.load(tmp_path / "clean" / "results.npz") as again, np.load(killed / "results.npz") as b:
        for key in b.files:
            np.testing.assert_array_equal(again[key], b[key], err_msg=key)


def test_sigterm_marks_the_run_failed_and_resumable(tmp_path, env):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "memjax.cli", *ARGS, "--out", str(out),
                             "--checkpoint-every", "1"],  # (the epochs' path)
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not _checkpoints(out / "checkpoints" / "01-real") and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "memjax: interrupted" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == "interrupted by SIGTERM"
