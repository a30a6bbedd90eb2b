"""Results files are written whole or not at all."""
import json

import numpy as np
import pytest

from memjax.results import RunDir, atomic_path


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
