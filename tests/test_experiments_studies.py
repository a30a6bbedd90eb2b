"""E2 (sensitivity) and E5 (csr) end to end at tiny sizes: files written, shapes, errors."""
import dataclasses
import json

import numpy as np
import pytest

from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.errors import MemjaxError
from memjax.experiments import csr, sensitivity
from memjax.results import RunDir


def _run(module, config, path):
    run_dir = RunDir(path)
    run_dir.start(module.__name__, {})
    out = module.run(config, run_dir)
    run_dir.finish()
    return out, dict(np.load(path / "results.npz")), json.loads((path / "summary.json").read_text())


@pytest.mark.slow
def test_sensitivity_study(tmp_path):
    config = dataclasses.replace(
        sensitivity.PRESETS["smoke"], data=DataConfig(train_size=60, downscale=4),
        train=TrainConfig(members=2, epochs=2, batch_size=20, learning_rate=0.2),
        every=2, class_matrix_every=3, conditions=("randY",))
    out, arrays, summary = _run(sensitivity, config, tmp_path)
    assert arrays["gini_randY"].shape == (2, 2)  # 6 steps, every 2: t = 2, 4
    np.testing.assert_array_equal(arrays["steps"], [2, 4])
    assert arrays["per_class_randY"].shape == (2, 10, 10)
    assert arrays["gbar_randY"].shape == (2, 60)
    np.testing.assert_allclose(summary["randY"]["gini_gbar_final"], arrays["gini_randY"][:, -1].mean(),
                               rtol=1e-6)
    assert (tmp_path / "fig3_gini.png").exists() and (tmp_path / "fig4_per_class.png").exists()
    with pytest.raises(MemjaxError):
        sensitivity.run(dataclasses.replace(config, conditions=("nope",)), RunDir(tmp_path / "b"))
    with pytest.raises(MemjaxError):
        sensitivity.run(dataclasses.replace(config, train=dataclasses.replace(
            config.train, momentum=0.9)), RunDir(tmp_path / "c"))
    with pytest.raises(MemjaxError, match="class_matrix_every=6 leaves no chosen step"):
        sensitivity.run(dataclasses.replace(config, class_matrix_every=6), RunDir(tmp_path / "d"))


def test_one_class_per_example_labels():
    from memjax.data import Split

    train = Split(np.zeros((5, 2, 2, 1), np.uint8), np.array([3, 3, 1, 0, 3], np.int32),
                  np.zeros(5, bool))
    split, classes = sensitivity._condition_split(train, "randX_per_example", 10, 0)
    np.testing.assert_array_equal(split.y, np.arange(5))
    assert classes == 5 and split.noisy.all()


@pytest.mark.slow
def test_csr_study(tmp_path):
    config = dataclasses.replace(
        csr.PRESETS["smoke"], data=DataConfig(train_size=128, validation_size=32),
        model=ModelConfig(hidden=(16,)), train=TrainConfig(members=2, epochs=2, batch_size=64),
        conditions=("randY",), examples=16, max_iterations=3, radius=0.1, step_size=0.05)
    out, arrays, summary = _run(csr, config, tmp_path)
    assert arrays["csr_randY"].shape == (2, 2)  # [epochs, members]
    assert ((arrays["csr_randY"] >= 0) & (arrays["csr_randY"] <= 1)).all()
    assert (tmp_path / "fig9_csr.png").exists()
    assert summary["randY"]["examples_searched"] == 16
    with pytest.raises(MemjaxError):
        csr.run(dataclasses.replace(config, radius=-1.0), RunDir(tmp_path / "b"))
