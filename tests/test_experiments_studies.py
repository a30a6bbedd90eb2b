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
    from memjax.data import Dataset
    from memjax.phase import Data

    dataset = Dataset("tiny", train, train, 10)
    split, classes = Data(DataConfig(), "randX", one_class_per_example=True).split(dataset)
    np.testing.assert_array_equal(split.y, np.arange(5))
    assert classes == 5 and split.noisy.all()


@pytest.mark.slow
def test_csr_study(tmp_path, fake_npz):
    from memjax.data import load_dataset
    from memjax.metrics import authors_scale

    colour = DataConfig(name=f"npz:{fake_npz(shape=(6, 6, 3))}", train_size=128,
                        validation_size=32)
    config = dataclasses.replace(
        csr.PRESETS["smoke"], data=colour,
        model=ModelConfig(hidden=(16,)), train=TrainConfig(members=2, epochs=2, batch_size=64),
        conditions=("randY",), examples=16, max_iterations=3, radius=0.1, step_size=0.05)
    out, arrays, summary = _run(csr, config, tmp_path / "run")  # tmp_path holds the .npz
    assert arrays["csr_randY"].shape == (2, 2)  # [epochs, members]
    assert ((arrays["csr_randY"] >= 0) & (arrays["csr_randY"] <= 1)).all()
    assert (tmp_path / "run" / "fig9_csr.png").exists()
    assert summary["randY"]["examples_searched"] == 16
    dataset = load_dataset(colour)  # the authors' protocol scales r, alpha, beta by the range
    expected = authors_scale(dataset.train.x, dataset.validation.x)
    assert expected != 1.0 and summary["randY"]["lass_scale"] == pytest.approx(expected)
    with pytest.raises(MemjaxError):
        csr.run(dataclasses.replace(config, radius=-1.0), RunDir(tmp_path / "b"))


def test_convergence_runs_each_size_alone_and_the_shared_cell_once():
    """E4's part (b) runs one dataset size per phase (an epoch as long as that size), and
    its cell at all examples is part (a)'s cell at width_for_sizes: run once, read by both
    curves."""
    from memjax import convergence as conv
    from memjax.experiments import convergence

    config = dataclasses.replace(convergence.PRESETS["smoke"], widths=(4, 64),
                                 sizes=(32, 64, 128), width_for_sizes=64)
    table = convergence.cells(config, 128)
    assert table["part"].tolist().count("width") == 4  # 2 widths x 2 noise levels
    assert sorted(table["size"][table["part"] == "size"].tolist()) == [32, 32, 64, 64]
    names = [name for name, *_ in convergence.ensembles(config, table, 128)]
    assert names == ["width 64", "size 32", "size 64"]
    for name, _, members in convergence.ensembles(config, table, 128)[1:]:
        assert np.all(members.example_mask.sum(1) == int(name.split()[1]))
        assert members.own_inputs(128) == int(name.split()[1])
    # every member converges at an epoch of its own: each point reads its cell's members
    first = np.arange(len(table["part"])) + 1
    result = conv.epochs_to_converge(first, config.train.epochs)
    summary = convergence.summarize(table["part"], table["width"], table["size"],
                                    table["level"], result, config)
    at = lambda width, size, level: float(first[(table["width"] == width)
                                                & (table["size"] == size)
                                                & (table["level"] == level)].item())
    for level in config.noise_levels:
        assert summary[f"size_{level:g}"]["median_epochs"] == [
            at(64, 32, level), at(64, 64, level), at(64, 128, level)]
        assert summary[f"width_{level:g}"]["median_epochs"] == [
            at(4, 128, level), at(64, 128, level)]
