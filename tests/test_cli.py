"""Every bad input gives one line `memjax: error: ...` naming the problem and exit code 2,
through the CLI and through the Python API; run directories record their status."""
import json
import time
from dataclasses import dataclass

import numpy as np
import pytest

from memjax.cli import main
from memjax.config import check_numbers, validate
from memjax.errors import MemjaxError
from memjax.results import RunDir

SMOKE = ["run", "consistency", "--preset", "smoke"]


def _error(capsys, argv) -> str:
    """Run the CLI; assert exit 2 and exactly one stderr line; return that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("memjax: error: ")
    return err[0]


@pytest.mark.parametrize("args, message", [
    (["run", "nosuch"], "unknown experiment 'nosuch'"),
    (SMOKE + ["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (SMOKE + ["--set", "noise_fraction=1.5"], "noise_fraction must be in [0, 1], got 1.5"),
    (SMOKE + ["--set", "noise_fraction=-0.1"], "noise_fraction must be in [0, 1]"),
    (SMOKE + ["--set", "model.hidden=32,0"], "model.hidden must be positive, got 0"),
    (SMOKE + ["--set", "model.conv_channels=-3"], "model.conv_channels must be positive"),
    (SMOKE + ["--members", "0"], "train.members must be positive, got 0"),
    (["run", "capacity", "--preset", "smoke", "--members", "3"],
     "capacity is a sweep: its ensemble is one member per cell and seed; use --seeds N"),
    (SMOKE + ["--seeds", "3"], "consistency trains one ensemble: use --members N, not --seeds"),
    (["run", "filters", "--preset", "smoke", "--seeds", "0"], "seeds must be positive, got 0"),
    (["run", "noise-curves", "--preset", "smoke", "--set", "train.members=2"],
     "a sweep trains one member per cell and seed: set seeds (--seeds N)"),
    (SMOKE + ["--set", "train.epochs=0"], "train.epochs must be positive"),
    (SMOKE + ["--set", "train.batch_size=-1"], "train.batch_size must be positive"),
    (SMOKE + ["--set", "train.learning_rate=0"], "train.learning_rate must be positive, got 0"),
    (SMOKE + ["--set", "train.learning_rate=inf"], "train.learning_rate must be a finite number"),
    (SMOKE + ["--set", "train.weight_decay=inf"], "train.weight_decay must be a finite number"),
    (SMOKE + ["--set", "train.momentum=1"], "train.momentum must be in [0, 1), got 1.0"),
    (SMOKE + ["--set", "input_noise_stats=foo"], "unknown input_noise_stats 'foo'; known: per_pixel, global"),
    (["run", "capacity", "--preset", "smoke", "--set", "tolerance=-1"],
     "tolerance must be >= 0"),
    (["run", "noise-curves", "--preset", "smoke", "--set", "csr_examples=0"],
     "csr_examples must be positive"),
    (["run", "regularization", "--preset", "smoke", "--set", "adversarial_weight=2",
      "--set", "adversarial_dropout=0.5"], "adversarial_weight must be in [0, 1], got 2.0"),
    (["run", "regularization", "--preset", "smoke", "--set", "adversarial_weight=0.5,0.5"],
     "adversarial_weight and adversarial_dropout must pair up"),
    (["run", "filters", "--preset", "smoke", "--set", "model.kind=mlp"], "needs model.kind=cnn"),
    (["run", "sensitivity", "--preset", "smoke", "--set", "loss_on=all"], "unknown loss_on 'all'; known: full, batch"),
    (["run", "csr", "--preset", "smoke", "--set", "conditions=real,nope"], "unknown condition"),
    (SMOKE + ["--dataset", "npz:/"], "data file / is a directory"),
    (SMOKE + ["--seed", "2147483648"], "train.seed must be an integer in [0, 2147483647]"),
    (SMOKE + ["--seed", "-1"], "train.seed must be an integer in [0, 2147483647], got -1"),
    (SMOKE + ["--set", "data.data_seed=-5"], "data.data_seed must be an integer in"),
    (["run", "capacity", "--preset", "smoke", "--set", "widths="],
     "widths needs at least one value"),
    (["run", "capacity", "--preset", "smoke", "--model", "cnn"],
     "capacity sweeps the hidden width of an MLP: model.kind must be mlp, not 'cnn'"),
    (["run", "convergence", "--preset", "smoke", "--model", "resnet9"],
     "convergence sweeps the hidden width of an MLP"),
    (["run", "el2n", "--preset", "smoke", "--set", "grand_chunk=0"],
     "grand_chunk must be positive"),
    (["run", "el2n", "--preset", "smoke", "--set", "per_class=-1"], "per_class must be positive"),
    (SMOKE + ["--resume", "--overwrite", "--out", "x"], "--resume and --overwrite"),
    (SMOKE + ["--set", "train.weight_decay=-1"], "train.weight_decay must be >= 0"),
    (SMOKE + ["--set", "model.kind=rnn"], "unknown model 'rnn'"),
    (SMOKE + ["--set", "train.epochs=two"], "train.epochs: cannot read 'two' as int"),
    (SMOKE + ["--set", "nosuch=1"], "unknown setting 'nosuch'"),
    (SMOKE + ["--set", "train.nosuch=1"], "unknown setting 'train.nosuch'"),
    (SMOKE + ["--dataset", "npz:/nonexistent/x.npz"], "/nonexistent/x.npz does not exist"),
    (SMOKE + ["--dataset", "mnist", "--data-dir", "/nonexistent"], "/nonexistent does not exist"),
    (SMOKE + ["--resume"], "--resume needs --out"),
])
def test_bad_setting_is_one_line_before_anything_runs(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert message in _error(capsys, args)
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_data_dir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    assert "is a file, not a directory" in _error(
        capsys, SMOKE + ["--dataset", "mnist", "--data-dir", str(tmp_path / "f")])


@pytest.mark.parametrize("args, message", [
    (SMOKE + ["--set", "data.downscale=3"], "downscale 3 does not divide embedded's 28 x 28"),
    (["run", "csr", "--preset", "smoke", "--set", "examples=100000"],
     "examples=100000 is more than the"),
    (SMOKE + ["--set", "data.train_size=100000"], "train size 100000 is larger than the "),
])
def test_bad_setting_for_the_data_is_one_line(capsys, tmp_path, args, message):
    assert message in _error(capsys, args + ["--out", str(tmp_path / "run")])


def test_npz_labels_that_skip_classes_are_noted(capsys, tmp_path):
    from memjax.data.sources import read_npz

    x = np.zeros((4, 2, 2), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 255, 255, 0]), x_test=x,
             y_test=np.zeros(4, int))
    read_npz(tmp_path / "d.npz")
    assert "2 distinct labels but the largest is 255, so models get 256" in capsys.readouterr().err
    # test labels no training example has: noted; one class to learn: refused
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 1, 1, 0]), x_test=x,
             y_test=np.array([0, 5, 7, 1]))
    read_npz(tmp_path / "d.npz")
    assert "y_test has label(s) 5, 7 that y_train never has" in capsys.readouterr().err
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.full(4, 3), x_test=x,
             y_test=np.full(4, 3))
    with pytest.raises(MemjaxError, match=r"y_train holds one class \(label 3\); "
                                          r"classifying needs at least 2"):
        read_npz(tmp_path / "d.npz")


@pytest.mark.parametrize("setting, message", [
    ("ratios=0.25,0.25", "ratios lists 0.25 more than once"),
    # distinct values that name one phase: refused before anything trains
    ("ratios=0.25,0.2500000001", "these settings give two phases the id 'ratio-0.25'"),
])
def test_a_sweep_value_given_twice_is_one_line(capsys, tmp_path, setting, message):
    line = _error(capsys, ["run", "cscore", "--preset", "smoke", "--set", setting,
                           "--out", str(tmp_path / "run")])
    assert message in line
    assert not (tmp_path / "run").exists()


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _error(capsys, SMOKE + ["--out", str(blocker / "run")])
    assert "cannot write to output directory" in line and str(blocker) in line


def test_negative_checkpoint_interval(capsys, tmp_path):
    line = _error(capsys, SMOKE + ["--out", str(tmp_path / "r"), "--checkpoint-every", "-1"])
    assert "checkpoint interval must be >= 0" in line
    line = _error(capsys, SMOKE + ["--out", str(tmp_path / "r"), "--checkpoint-minutes", "0"])
    assert "checkpoint interval must be > 0 minutes" in line
    # by epochs, the interval in minutes is not used: not checked; the command takes one
    assert RunDir(tmp_path / "s", checkpoint_minutes=0, checkpoint_every=2).save_clock is None
    line = _error(capsys, SMOKE + ["--out", str(tmp_path / "r"), "--checkpoint-every", "2",
                                   "--checkpoint-minutes", "5"])
    assert "--checkpoint-every and --checkpoint-minutes contradict each other" in line


@pytest.mark.parametrize("replace, message", [
    ({"y_test": None}, "lacks y_test"),
    ({"x_train": np.zeros((300, 28, 28), np.float32)}, "x_train must be uint8"),
    ({"x_train": np.zeros((300, 784), np.uint8)}, "x_train must be [N, H, W]"),
    ({"y_train": np.zeros(299, np.int64)}, "y_train must be [300] integer labels"),
    ({"y_train": np.zeros(300, np.float32)}, "y_train must be [300] integer labels"),
    ({"x_test": np.zeros((60, 14, 14), np.uint8)}, "x_test images are (14, 14, 1)"),
])
def test_malformed_npz_is_named_and_leaves_no_run(capsys, tmp_path, fake_npz, replace, message):
    path = fake_npz(**replace)
    out = tmp_path / "runs" / "run"
    line = _error(capsys, SMOKE + ["--dataset", f"npz:{path}", "--out", str(out),
                                   "--set", "data.train_size=None", "--set", "data.validation_size=None"])
    assert message in line and str(path) in line
    assert not (tmp_path / "runs").exists()  # nothing trained: the folders made for it go


def test_unreadable_npz(capsys, tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"this is not a zip archive")
    line = _error(capsys, SMOKE + ["--dataset", f"npz:{path}", "--out", str(tmp_path / "r")])
    assert f"{path} is not an .npz file" in line


def _offline(monkeypatch):
    """No name resolves, as on a machine without a network."""
    import socket

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_offline_named_dataset_fails_in_seconds_in_one_line_and_leaves_nothing(
        capsys, tmp_path, monkeypatch):
    _offline(monkeypatch)
    empty, out = tmp_path / "data", tmp_path / "run"
    empty.mkdir()
    started = time.perf_counter()
    line = _error(capsys, ["run", "consistency", "--dataset", "mnist", "--out", str(out),
                           "--data-dir", str(empty)])
    assert time.perf_counter() - started < 15  # tensorflow-datasets' retries took 410 s
    assert "storage.googleapis.com is unreachable" in line
    assert "--data-dir DIR holding mnist.npz" in line and "memjax data import mnist" in line
    assert not out.exists() and not any(empty.iterdir())


def test_run_that_never_trained_leaves_a_folder_it_did_not_make(capsys, tmp_path, monkeypatch):
    _offline(monkeypatch)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    for flags in ([], ["--resume"]):
        capsys.readouterr()
        assert main(["run", "consistency", "--dataset", "cifar10", "--out", str(out),
                     "--data-dir", str(tmp_path), *flags]) == 2
        assert [f.name for f in out.iterdir()] == ["notes.txt"]


def test_batch_larger_than_data(capsys, tmp_path):
    out = tmp_path / "run"
    line = _error(capsys, SMOKE + ["--set", "data.train_size=50", "--set", "tracked=10",
                                   "--out", str(out)])
    assert "batch size 64 is larger than the 50 training examples" in line
    assert not out.exists()


def test_finished_run_needs_overwrite(capsys, tmp_path):
    from memjax.config import to_dict
    from memjax.experiments import consistency
    from memjax.files import to_json

    config = json.loads(to_json(to_dict(consistency.PRESETS["smoke"])))
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"status": "finished", "experiment": "consistency", "config": config}))
    line = _error(capsys, SMOKE + ["--out", str(tmp_path)])
    assert "holds a finished run; pass --overwrite" in line
    assert RunDir(tmp_path, resume=True).finished
    assert main(SMOKE + ["--out", str(tmp_path), "--resume"]) == 0  # nothing left to do
    assert "nothing to resume" in capsys.readouterr().out
    # --resume of a finished run with other settings, or of another study: refused
    line = _error(capsys, SMOKE + ["--out", str(tmp_path), "--resume", "--members", "3"])
    assert "holds a finished run with other settings (train.members: " in line
    line = _error(capsys, ["run", "csr", "--preset", "smoke", "--out", str(tmp_path),
                           "--resume"])
    assert "holds a finished 'consistency' run, not 'csr'" in line
    for name in ("summary.json", "results.npz", "fig1_consistency.png", "notes.txt"):
        (tmp_path / name).write_text("")
    run_dir = RunDir(tmp_path, overwrite=True, checkpoint_every=0)
    run_dir.start("csr", {})
    assert run_dir.status == "running" and not run_dir.finished
    run_dir.checkpoints("real")  # the new run gets going
    # the replaced run's outputs are gone (a figure of another study must not linger);
    # files memjax does not write stay
    assert sorted(f.name for f in tmp_path.iterdir()) == ["manifest.json", "notes.txt"]


def test_overwrite_removes_every_output_of_the_run_it_replaces_once_the_new_one_trains(
        capsys, tmp_path):
    """--overwrite removes what the old run wrote, dynamics and score files included (its
    manifest lists them), keeps the user's files, and touches nothing when the new run
    fails before training (here: a batch larger than the data)."""
    out = str(tmp_path)
    assert main(SMOKE + ["--out", out, "--record", "dynamics"]) == 0
    (tmp_path / "notes.txt").write_text("mine")
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    assert any(name.startswith("dynamics-") for name in before)
    line = _error(capsys, SMOKE + ["--out", out, "--overwrite",
                                   "--set", "train.batch_size=100000"])
    assert "batch size 100000 is larger than" in line
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    assert main(SMOKE + ["--out", out, "--overwrite"]) == 0
    names = {f.name for f in tmp_path.iterdir()}
    assert "notes.txt" in names and not any(n.startswith("dynamics-") for n in names)
    assert {"results.npz", "summary.json", "fig1_consistency.png"} <= names
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "finished"


def test_unfinished_run_with_checkpoints_needs_resume_or_overwrite(capsys, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "running"}))
    (tmp_path / "checkpoints" / "01-real").mkdir(parents=True)
    RunDir(tmp_path)  # phase folders that no checkpoint was written into: nothing to lose
    (tmp_path / "checkpoints" / "01-real" / "3").mkdir()
    (tmp_path / "checkpoints" / "01-real" / "3" / "state").write_text("")
    assert "pass --resume" in _error(capsys, SMOKE + ["--out", str(tmp_path)])
    run_dir = RunDir(tmp_path, overwrite=True, checkpoint_every=0)
    run_dir.start("consistency", {})
    run_dir.checkpoints("real")
    assert not (tmp_path / "checkpoints").exists()


def test_resume_with_different_config_is_refused(capsys, tmp_path):
    RunDir(tmp_path).start("consistency", {"train": {"epochs": 2}})
    with pytest.raises(MemjaxError, match=r"different config \(train.epochs: 2 -> 3\)"):
        RunDir(tmp_path, resume=True).start("consistency", {"train": {"epochs": 3}})
    with pytest.raises(MemjaxError, match="holds a 'consistency' run"):
        RunDir(tmp_path, resume=True).start("other", {"train": {"epochs": 2}})
    # many differences: the first five and how many more, never cut without a word
    seven = {"train": {"epochs": 3, **{f"k{i}": i for i in range(6)}}}
    with pytest.raises(MemjaxError, match=r"train.k3: None -> 3, and 2 more\)"):
        RunDir(tmp_path, resume=True).start("consistency", seven)


def test_a_resumed_run_counts_the_time_before_and_claims_no_rate_it_did_not_measure(
        tmp_path):
    """Wall time adds the interrupted segment's; a resume that trained nothing (it came after
    the last phase) records no model-examples/s rather than 0."""
    first = RunDir(tmp_path)
    first.start("consistency", {})
    first.fail(KeyboardInterrupt())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["error"] == "interrupted by SIGINT"  # Ctrl-C, as the other signals read
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "wall_time_s": 100.0}))
    again = RunDir(tmp_path, resume=True)
    again.start("consistency", {})
    again.finish(model_examples_per_second=0.0)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert 100.0 <= manifest["wall_time_s"] < 110.0
    assert "model_examples_per_second" not in manifest and len(manifest["resumed"]) == 1


def test_resume_on_other_devices_or_budget_says_it_is_not_bit_for_bit(capsys, tmp_path,
                                                                     monkeypatch):
    RunDir(tmp_path).start("consistency", {"train": {"epochs": 2}})
    RunDir(tmp_path, resume=True).start("consistency", {"train": {"epochs": 2}})
    assert "float rounding" not in capsys.readouterr().err
    monkeypatch.setenv("MEMJAX_DATA_DIR", str(tmp_path))  # where data is: no numbers change
    RunDir(tmp_path, resume=True).start("consistency", {"train": {"epochs": 2}})
    assert "float rounding" not in capsys.readouterr().err
    monkeypatch.setenv("MEMJAX_MEMORY_BYTES", "1000000")
    RunDir(tmp_path, resume=True).start("consistency", {"train": {"epochs": 2}})
    assert "up to float rounding, not bit for bit" in capsys.readouterr().err


@dataclass(frozen=True)
class _LassConfig:
    radius: float = 0.3
    step_size: float = 0.25
    max_iterations: int = 100
    noise_fractions: tuple[float, ...] = (0.0, 0.2)


@pytest.mark.parametrize("change, message", [
    ({"radius": -0.1}, "radius must be >= 0, got -0.1"),
    ({"max_iterations": 0}, "max_iterations must be positive"),
    ({"noise_fractions": (0.2, 1.2)}, "noise_fractions must be in [0, 1], got 1.2"),
    ({"radius": float("nan")}, "radius must be a finite number, got nan"),
    ({"step_size": float("inf")}, "step_size must be a finite number, got inf"),
])
def test_check_numbers_applies_the_rules_a_study_names(change, message):
    rules = dict(positive=("max_iterations",), nonnegative=("radius", "step_size"),
                 fractions=("noise_fractions",))
    check_numbers(_LassConfig(), **rules)
    with pytest.raises(MemjaxError) as e:
        check_numbers(_LassConfig(**change), **rules)
    assert message in str(e.value)


@pytest.mark.parametrize("change", [{"radius": float("nan")}, {"step_size": float("inf")}])
def test_validate_finds_a_number_that_is_not_finite_in_any_field(change):
    validate(_LassConfig())
    with pytest.raises(MemjaxError, match="must be a finite number"):
        validate(_LassConfig(**change))


@pytest.mark.parametrize("env, message", [
    ({"MEMJAX_COORDINATOR": "host0:1234"},
     "MEMJAX_COORDINATOR needs MEMJAX_NUM_PROCESSES and MEMJAX_PROCESS_ID set too"),
    ({"MEMJAX_COORDINATOR": "host0:1234", "MEMJAX_NUM_PROCESSES": "two",
      "MEMJAX_PROCESS_ID": "0"}, "MEMJAX_NUM_PROCESSES='two' is not an integer"),
    ({"MEMJAX_COORDINATOR": "host0:1234", "MEMJAX_NUM_PROCESSES": "2",
      "MEMJAX_PROCESS_ID": "2"}, "MEMJAX_PROCESS_ID=2 must be below MEMJAX_NUM_PROCESSES=2"),
])
def test_bad_distributed_environment_is_one_line(capsys, tmp_path, monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert message in _error(capsys, SMOKE + ["--out", str(tmp_path / "run")])


def test_several_processes_need_an_out_folder(capsys, tmp_path, monkeypatch):
    import memjax.sharding

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(memjax.sharding, "initialize_distributed", lambda: True)
    assert "needs --out" in _error(capsys, SMOKE)
    assert not (tmp_path / "runs").exists()


def test_reproduce_refuses_to_run_as_one_of_several_processes(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    line = _error(capsys, ["reproduce", "--preset", "smoke", "--out", str(tmp_path / "r")])
    assert "runs as one process" in line and not (tmp_path / "r").exists()


def test_bad_memory_budget_variable_fails_the_run_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMJAX_MEMORY_FRACTION", "abc")
    out = tmp_path / "never-started"
    capsys.readouterr()
    assert main(SMOKE + ["--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # --resume where there is nothing to resume says so, then starts a new run
    assert err[0] == f"memjax: no run in {out} to resume; starting a new one"
    assert err[-1] == ("memjax: error: environment variable MEMJAX_MEMORY_FRACTION='abc' is "
                       "not a number")
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    monkeypatch.setenv("MEMJAX_MEMORY_FRACTION", "1.5")
    assert "must be in [0.0, 1.0]" in _error(capsys, SMOKE + ["--out", str(tmp_path / "b")])


def test_list_names_every_study_and_the_presets_it_adds(capsys):
    assert main(["list"]) == 0
    entries: dict[str, str] = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith(" "):
            entries[name] += line
        elif line and not line.startswith("beyond"):
            name = line.split()[0]
            entries[name] = line
    assert {"consistency", "regularization", "cscore", "memorization", "el2n"} <= set(entries)
    presets = {n: " ".join(e.split()).partition("Presets also ")[2] for n, e in entries.items()}
    assert presets["memorization"] == presets["cscore"] == "cifar, gpu, cifar-cpu."
    assert presets["consistency"] == presets["el2n"] == ""


def test_a_folder_of_other_files_is_not_an_output_directory(capsys, tmp_path):
    """A run clears checkpoints/ and its outputs in --out: a folder that holds files but
    no run is refused, even with --overwrite, and keeps every file."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "model.pt").write_text("mine too")
    for extra in ([], ["--overwrite"], ["--resume"]):
        line = _error(capsys, SMOKE + ["--out", str(tmp_path), *extra])
        assert "holds files but no memjax run (no manifest.json)" in line
    assert (tmp_path / "checkpoints" / "model.pt").read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "notes.txt"]


def test_a_folder_with_only_other_processes_logs_is_a_new_run(tmp_path):
    """In a run of several processes the others keep their logs in --out/hosts/, and may
    make it before process 0 looks at --out: that folder alone is not someone's files."""
    from memjax.results import RunDir

    (tmp_path / "hosts" / "1").mkdir(parents=True)
    RunDir(tmp_path).start("memjax.experiments.consistency", {})
    assert RunDir.status_of(tmp_path) == "running"


def test_augmentation_that_does_not_fit_the_images_stops_before_the_run_folder(capsys,
                                                                             tmp_path):
    """A cutout or reflect padding larger than the data's images is told in one line before
    any phase begins: no folder is left that a corrected rerun would be refused in."""
    out = tmp_path / "run"
    for setting, message in (("train.augment_cutout=40", "cutout 40 is larger than the "
                                                         "28 x 28 images"),
                             ("train.augment_crop=40", "reflect padding 40 needs images")):
        assert message in _error(capsys, SMOKE + ["--out", str(out), "--set", setting])
        assert not out.exists()


def test_a_study_with_two_data_sets_finds_both_before_training(capsys, tmp_path, monkeypatch):
    """noise-curves' CNN part reads CIFAR-10: when it is not to be had, the run stops before
    the MLP part trains (it used to fail only after it) and leaves nothing."""
    _offline(monkeypatch)
    empty, out = tmp_path / "data", tmp_path / "run"
    empty.mkdir()
    line = _error(capsys, ["run", "noise-curves", "--preset", "smoke", "--set", "cnn=true",
                           "--data-dir", str(empty), "--out", str(out)])
    assert "--data-dir DIR holding cifar10.npz" in line
    assert not out.exists()


def test_members_and_seeds_help_name_the_studies_that_take_them():
    """--members is for one-ensemble studies, --seeds for sweeps (build_config's rule): the
    help lists each registered study under the flag it takes."""
    import re

    from memjax.cli import parser
    from memjax.studies import registered

    run = parser()._subparsers._group_actions[0].choices["run"]
    helps = {a.dest: a.help for a in run._actions if a.dest in ("members", "seeds")}
    for name, module in registered().items():
        flag = "seeds" if hasattr(module.PRESETS["smoke"], "seeds") else "members"
        assert re.search(rf"\b{re.escape(name)}\b", helps[flag]), (name, flag)
