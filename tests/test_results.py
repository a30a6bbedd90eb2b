"""Results files are written whole or not at all."""
import json

import numpy as np
import pytest

from memjax.files import atomic_path
from memjax.results import RunDir


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    run_dir = RunDir(tmp_path)
    run_dir.write_npz("results.npz", {"a": np.arange(3)})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "results.npz") as tmp:
            tmp.write_bytes(b"half a fi")
            raise RuntimeError("killed mid-write")
    with np.load(tmp_path / "results.npz") as d:
        np.testing.assert_array_equal(d["a"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.npz"]
    assert (tmp_path / "results.npz").stat().st_mode & 0o777 == 0o644


def test_manifest_status_running_finished_failed(tmp_path):
    run_dir = RunDir(tmp_path / "ok")
    run_dir.start("test", {"x": 1})
    assert RunDir.status_of(tmp_path / "ok") == "running" and not run_dir.finished
    run_dir.finish(extra=2)
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["extra"] == 2 and run_dir.finished
    bad = RunDir(tmp_path / "bad")
    bad.start("test", {})
    bad.fail(ValueError("no good"))
    manifest = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == "ValueError: no good"
    assert RunDir.status_of(tmp_path / "nothing") is None


def test_manifest_records_memjax_environment(tmp_path, monkeypatch):
    import json

    from memjax.results import RunDir

    monkeypatch.setenv("MEMJAX_DATA_DIR", "/data/here")
    RunDir(tmp_path).start("consistency", {})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["environment"]["MEMJAX_DATA_DIR"] == "/data/here"


def test_data_folders_compare_as_the_loader_resolves_them(tmp_path, monkeypatch):
    """The same folder reached by --data-dir, MEMJAX_DATA_DIR, a trailing slash or a relative
    path is the same setting; another folder read through the environment is not; a data
    set that reads no folder ignores it."""
    import json

    from memjax.config import DataConfig
    from memjax.manifest import differences_from_run
    from memjax.results import RunDir

    def recorded(data, run):
        RunDir(tmp_path / run).start("consistency", {"data": data})
        return json.loads((tmp_path / run / "manifest.json").read_text())

    monkeypatch.delenv("MEMJAX_DATA_DIR", raising=False)
    folder = tmp_path / "data"
    by_flag = recorded(DataConfig(name="mnist", data_dir=str(folder)), "a")
    monkeypatch.setenv("MEMJAX_DATA_DIR", f"{folder}/")
    assert differences_from_run(by_flag, {"data": DataConfig(name="mnist")}) == []
    monkeypatch.chdir(tmp_path)
    assert differences_from_run(by_flag, {"data": DataConfig(name="mnist", data_dir="data")}) == []
    by_env = recorded(DataConfig(name="mnist"), "b")
    monkeypatch.setenv("MEMJAX_DATA_DIR", str(tmp_path / "other"))
    assert differences_from_run(by_env, {"data": DataConfig(name="mnist")}) == [
        f"data.data_dir: {str(folder)!r} -> {str(tmp_path / 'other')!r}"]
    embedded = recorded(DataConfig(name="embedded", data_dir="/somewhere"), "c")
    assert differences_from_run(embedded, {"data": DataConfig(name="embedded")}) == []
    assert differences_from_run(embedded, {"data": DataConfig(name="embedded", train_size=5)}) \
        == [f"data.train_size: {DataConfig().train_size!r} -> 5"]


def test_a_setting_added_since_a_run_started_differs_only_off_its_default():
    """A run recorded before a TrainConfig field existed resumes when the field is at its
    default, and is refused when it is not."""
    from memjax.config import TrainConfig
    from memjax.files import to_json
    from memjax.manifest import differences_from_run

    old = json.loads(to_json({"train": TrainConfig()}))
    del old["train"]["label_smoothing"]
    manifest = {"config": old}
    assert differences_from_run(manifest, {"train": TrainConfig()}) == []
    assert differences_from_run(manifest, {"train": TrainConfig(label_smoothing=0.1)}) == [
        "train.label_smoothing: None -> 0.1"]


def test_phase_ids_name_files_and_are_unique_in_a_run(tmp_path):
    from memjax.results import check_phase_id

    for good in ("real", "width-512", "ratio-0.5", "noise_curves-mlp"):
        check_phase_id(good)
    for bad in ("real (1/3)", "", "-x", "a/b", None):
        with pytest.raises(ValueError, match="phase id"):
            check_phase_id(bad)
    run_dir = RunDir(tmp_path, checkpoint_every=1)
    assert run_dir.checkpoints("randY").directory.name == "01-randY"
    with pytest.raises(ValueError, match="used twice"):
        run_dir.checkpoints("randY")
