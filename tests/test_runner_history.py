"""A study whose per-epoch records live on the host (csr: CSR and accuracies per epoch)
resumes from a checkpoint with those records restored, and ends as an uninterrupted run."""
import json
import shutil

import numpy as np
import pytest

from memjax.cli import main

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses (CI runs them)

ARGS = ["run", "csr", "--preset", "smoke", "--set", "train.epochs=3",
        "--set", "conditions=real,randY", "--checkpoint-every", "1"]


def test_csr_resumes_with_its_history(tmp_path):
    out = tmp_path / "run"
    assert main([*ARGS, "--out", str(out), "--keep-checkpoints"]) == 0
    clean = dict(np.load(out / "results.npz"))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # Make it a run killed after the last phase's epoch-2 checkpoint: drop what came later.
    last_phase = sorted((out / "checkpoints").iterdir())[-1]
    shutil.rmtree(last_phase / "3")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    (out / "results.npz").unlink()
    (out / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n")  # real 1-3, randY 1-2

    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    resumed = np.load(out / "results.npz")
    assert sorted(resumed.files) == sorted(clean)
    for key in clean:
        np.testing.assert_array_equal(resumed[key], clean[key], err_msg=key)
    assert (out / "metrics.jsonl").read_text().splitlines() == lines


def _arrays(out):
    """Every .npz of a run (results, score exports, training dynamics), by file and key."""
    return {(f.name, k): v for f in sorted(out.glob("*.npz")) for k, v in np.load(f).items()}


@pytest.mark.parametrize("study,extra", [("noise-curves", ["--set", "own_accuracy_every=2"]),
                                         ("convergence", []),
                                         ("cscore", ["--set", "one_epoch_members=0"]),
                                         ("memorization", [])])
def test_sweep_resumes_from_its_previous_checkpoint(tmp_path, study, extra):
    """A study resumed from the checkpoint before its last one (as if killed just before
    the last save) ends with the uninterrupted run's arrays (training dynamics and score
    exports included) and metrics.jsonl."""
    out = tmp_path / "run"
    args = ["run", study, "--preset", "smoke", "--out", str(out), "--checkpoint-every", "1",
            *extra]
    assert main([*args, "--keep-checkpoints"]) == 0
    clean = _arrays(out)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    last_phase = sorted((out / "checkpoints").iterdir())[-1]
    steps = sorted((p for p in last_phase.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert len(steps) == 2, steps
    shutil.rmtree(steps[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    for f in out.glob("*.npz"):
        f.unlink()

    assert main([*args, "--resume"]) == 0
    resumed = _arrays(out)
    assert sorted(resumed) == sorted(clean)
    for key in clean:
        np.testing.assert_array_equal(resumed[key], clean[key], err_msg=str(key))
    assert (out / "metrics.jsonl").read_text().splitlines() == lines
