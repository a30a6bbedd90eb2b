"""`memjax data import`: the official MNIST and CIFAR-10 files, written here from known
arrays, become <name>.npz files that the loader reads back as those arrays, in order."""
import gzip
import pickle
import tarfile

import numpy as np
import pytest

from memjax.cli import main
from memjax.config import DataConfig
from memjax.data import load_dataset
from memjax.data.convert import MNIST_FILES, import_dataset


def _idx(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (magic 0 0 8 ndim, big-endian int32 dims)."""
    return (bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            + array.tobytes())


def _mnist_arrays(n_train=30, n_test=12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test).astype(np.uint8)}


def write_mnist(folder, arrays):
    """The four files as distributed: some gzipped, one with the dotted name some mirrors
    use (train-images.idx3-ubyte)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (key, stem) in enumerate(MNIST_FILES.items()):
        data = _idx(arrays[key])
        if i == 0:
            (folder / stem.replace("-idx", ".idx")).write_bytes(data)
        elif i % 2:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


def _cifar_batch(x_hwc: np.ndarray, y: np.ndarray) -> bytes:
    """A batch as CIFAR-10's python files hold it: rows of 1024 red, 1024 green, 1024 blue
    bytes, pickled with protocol 2 and numpy's old module name, like the originals."""
    rows = x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), 3072)
    batch = {b"batch_label": b"synthetic", b"labels": [int(v) for v in y], b"data": rows,
             b"filenames": [b"x.png"] * len(y)}
    return pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray",
                                                   b"numpy.core.multiarray")


def write_cifar10(folder, per_batch=4):
    """cifar-10-batches-py/ with five training batches and a test batch; returns the
    arrays they hold, in order (HWC)."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    x = rng.integers(0, 256, (6 * per_batch, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 6 * per_batch).astype(np.uint8)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        part = slice(i * per_batch, (i + 1) * per_batch)
        (folder / name).write_bytes(_cifar_batch(x[part], y[part]))
    cut = 5 * per_batch
    return {"x_train": x[:cut], "y_train": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}


def _assert_loads_as(name, out, arrays):
    """The file holds `arrays` exactly, and the loader (official train / test splits)
    returns them in order."""
    with np.load(out / f"{name}.npz") as d:
        assert sorted(d.files) == sorted(arrays)
        for key, value in arrays.items():
            assert d[key].dtype == np.uint8
            np.testing.assert_array_equal(d[key], value)
    data = load_dataset(DataConfig(name, data_dir=str(out), test_as_validation=True))
    x_train = data.train.x if name == "cifar10" else data.train.x[..., 0]
    x_test = data.validation.x if name == "cifar10" else data.validation.x[..., 0]
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    np.testing.assert_array_equal(data.train.y, arrays["y_train"])
    np.testing.assert_array_equal(x_test, arrays["x_test"])
    np.testing.assert_array_equal(data.validation.y, arrays["y_test"])


def test_mnist_idx_files_round_trip_through_the_loader(tmp_path, capsys):
    arrays = _mnist_arrays()
    write_mnist(tmp_path / "raw", arrays)
    assert main(["data", "import", "mnist", str(tmp_path / "raw"),
                 "--out", str(tmp_path / "data")]) == 0
    assert f"--data-dir {tmp_path / 'data'}" in capsys.readouterr().out
    _assert_loads_as("mnist", tmp_path / "data", arrays)


def test_cifar10_batches_folder_and_tarball_round_trip_through_the_loader(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    arrays = write_cifar10(folder)
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    import_dataset("cifar10", folder, tmp_path / "from-folder")
    import_dataset("cifar10", tarball, tmp_path / "from-tarball")
    _assert_loads_as("cifar10", tmp_path / "from-folder", arrays)
    assert ((tmp_path / "from-folder" / "cifar10.npz").read_bytes()
            == (tmp_path / "from-tarball" / "cifar10.npz").read_bytes())


def _one_error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memjax: error: "), err
    return err[0]


def _mnist_with(folder, name: str, data: bytes) -> None:
    """The MNIST files with `name` replaced by `data`."""
    write_mnist(folder, _mnist_arrays())
    (folder / name).write_bytes(data)


class _Boom:
    def __reduce__(self):
        return (print, ("the pickle ran code",))


@pytest.mark.parametrize("name, make, message", [
    ("mnist", lambda p: None, "does not exist"),
    ("mnist", lambda p: p.mkdir(),
     "has no train-images-idx3-ubyte (nor train-images-idx3-ubyte.gz)"),
    ("mnist", lambda p: _mnist_with(p, "t10k-labels-idx1-ubyte.gz", gzip.compress(b"\0\0\x08\x03")),
     "t10k-labels-idx1-ubyte.gz is not an IDX file of 1-dimensional unsigned bytes"),
    ("mnist", lambda p: _mnist_with(p, "t10k-images-idx3-ubyte",
                                    _idx(np.zeros((2, 3, 3), np.uint8))),
     "2 test images of (3, 3) and 12 labels; mnist has (28, 28, 1) images"),
    ("mnist", lambda p: p.write_text("x"), "is not a folder"),
    ("cifar10", lambda p: p.write_text("x"), "neither the cifar-10-batches-py folder nor"),
    ("cifar10", lambda p: (write_cifar10(p), (p / "test_batch").unlink()), "has no test_batch"),
    ("cifar10", lambda p: (write_cifar10(p), (p / "data_batch_3").write_bytes(
        pickle.dumps({b"data": _Boom(), b"labels": []}, protocol=2))),
     "data_batch_3: refused to unpickle __builtin__.print"),
    ("cifar10", lambda p: (write_cifar10(p), (p / "data_batch_2").write_bytes(b"junk")),
     "data_batch_2 is not a CIFAR-10 batch"),
])
def test_import_problems_are_one_line(capsys, tmp_path, name, make, message):
    source = tmp_path / "source"
    make(source)
    line = _one_error_line(capsys, ["data", "import", name, str(source), "--out",
                                    str(tmp_path / "out")])
    assert message in line, line
    assert not (tmp_path / "out" / f"{name}.npz").exists()


def test_import_does_not_replace_a_data_file(capsys, tmp_path):
    write_mnist(tmp_path / "raw", _mnist_arrays())
    (tmp_path / "mnist.npz").write_text("the user's")
    line = _one_error_line(capsys, ["data", "import", "mnist", str(tmp_path / "raw"),
                                    "--out", str(tmp_path)])
    assert "mnist.npz exists" in line and (tmp_path / "mnist.npz").read_text() == "the user's"
