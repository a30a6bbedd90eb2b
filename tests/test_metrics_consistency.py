"""The E1 study end to end through the command line, and its one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

from memjax.cli import main
from memjax.metrics.consistency import (binomial_reference, class_binomial_reference,
                                        misclassification_rate)


def test_smoke_run_writes_every_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "consistency", "--preset", "smoke", "--members", "3", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "summary.json", "results.npz", "metrics.jsonl",
            "fig1_consistency.png"} <= names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["config"]["train"]["members"] == 3
    assert manifest["model_examples_per_second"] > 0 and "jax" in manifest["versions"]
    results = np.load(out / "results.npz")
    tracked = results["tracked_indices"]
    assert tracked.shape == (200,) and len(np.unique(tracked)) == 200
    summary = json.loads((out / "summary.json").read_text())
    for c in ("real", "randX", "randY"):
        correct = results[f"correct_{c}"]
        assert correct.shape == (3, 200) and correct.dtype == bool
        rate = results[f"misclassification_rate_{c}"]
        np.testing.assert_allclose(rate, 1 - correct.mean(0), atol=1e-6)
        assert np.all(np.diff(results[f"binomial_reference_{c}"]) >= 0)
        assert summary[c]["mean_error"] == pytest.approx(rate.mean(), abs=1e-6)
        assert summary[c]["fraction_misclassified_by_90pct"] == pytest.approx(np.mean(rate >= 0.9))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["condition"] for l in lines] == ["real", "randX", "randY"]
    # a finished run is not overwritten by accident
    assert main(["run", "consistency", "--preset", "smoke", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--set", "noise_fraction=1.5"], "in [0, 1]"),
    (["--dataset", "npz:/nonexistent/data.npz"], "does not exist"),
    (["--members", "0"], "members must be positive"),
    (["--set", "train.batch_size=100000"], "batch size"),
    (["--set", "nonsense=1"], "unknown setting"),
    (["--preset", "huge"], "unknown preset"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "memjax.cli", "run", "consistency", "--preset", "smoke",
         "--out", str(tmp_path / "r"), *args], capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memjax: error:") and message in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_experiment(capsys):
    assert main(["run", "fig99"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


def test_consistency_metrics_against_counts():
    import jax

    correct = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0]], bool)
    np.testing.assert_allclose(misclassification_rate(correct), [0.0, 0.5, 1.0])
    # p = 0 and p = 1 are deterministic; a middle p has the binomial's variance
    assert np.all(binomial_reference(jax.random.key(0), 0.0, members=10, num_examples=5) == 0)
    assert np.all(binomial_reference(jax.random.key(0), 1.0, members=10, num_examples=5) == 1)
    draws = binomial_reference(jax.random.key(1), 0.3, members=100, num_examples=20_000)
    assert abs(float(draws.mean()) - 0.3) < 0.005
    assert abs(float(draws.std()) - np.sqrt(0.3 * 0.7 / 100)) < 0.003
    # the per-class reference uses each class's own mean rate
    rate = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    labels = np.array([0, 0, 1, 1])
    np.testing.assert_array_equal(
        class_binomial_reference(jax.random.key(0), rate, labels, members=10, num_classes=2),
        [0.0, 0.0, 1.0, 1.0])


def test_noisy_labels_are_the_ones_judged(tmp_path):
    """randY members that memorized their random labels are correct on them: the study
    judges a condition's examples by that condition's labels, not the clean ones."""
    from memjax.config import DataConfig, ModelConfig, TrainConfig
    from memjax.experiments import consistency
    from memjax.results import RunDir

    config = consistency.Config(DataConfig(train_size=128, validation_size=16),
                                ModelConfig(hidden=(256,)),
                                TrainConfig(members=2, epochs=40, batch_size=16,
                                            learning_rate=0.1),
                                tracked=128, conditions=("randY",))
    run_dir = RunDir(tmp_path)
    run_dir.start("consistency", {})
    consistency.run(config, run_dir)
    results = np.load(tmp_path / "results.npz")
    assert results["correct_randY"].mean() > 0.8  # about 0.1 against the clean labels
