"""`<name>.npz` (the format memjax.data.sources reads) from the official files a user has:
MNIST's four IDX files (gzipped or not) and CIFAR-10's python batches (the
cifar-10-batches-py folder or cifar-10-python.tar.gz). The arrays keep the files' order;
images are uint8 [N, 28, 28] and [N, 32, 32, 3] (HWC), labels uint8.
"""
from __future__ import annotations

import codecs
import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from memjax.data.sources import IMAGE_SHAPE
from memjax.errors import MemjaxError

MNIST_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
               "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def import_dataset(name: str, source: str | Path, out: str | Path) -> Path:
    """Write out/<name>.npz from the official files at `source`; returns its path.
    name: mnist | cifar10. Refuses to replace an existing file."""
    from memjax.files import atomic_path

    readers = {"mnist": mnist_arrays, "cifar10": cifar10_arrays}
    if name not in readers:
        raise MemjaxError(f"cannot import {name!r}; known: {', '.join(readers)}")
    source, target = Path(source), Path(out) / f"{name}.npz"
    if not source.exists():
        raise MemjaxError(f"{source} does not exist")
    if target.exists():
        raise MemjaxError(f"{target} exists; remove it first or choose another --out")
    arrays = readers[name](source)
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if (x.shape[1:] + (1,))[:3] != IMAGE_SHAPE[name] or len(x) != len(y):
            raise MemjaxError(f"{source}: {len(x)} {part} images of {x.shape[1:]} and "
                              f"{len(y)} labels; {name} has {IMAGE_SHAPE[name]} images, "
                              f"one label each")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
    except OSError as e:
        raise MemjaxError(f"cannot write {target}: {e.strerror or e}") from None
    return target


def mnist_arrays(folder: Path) -> dict[str, np.ndarray]:
    """The four arrays from a folder holding the official IDX files (any of them may be
    gzipped, and `train-images.idx3-ubyte` is accepted for `train-images-idx3-ubyte`)."""
    if not folder.is_dir():
        raise MemjaxError(f"{folder} is not a folder; give the folder that holds the MNIST "
                          f"files ({', '.join(MNIST_FILES.values())}, gzipped or not)")
    arrays = {}
    for key, stem in MNIST_FILES.items():
        dotted = stem.replace("-idx", ".idx")
        found = [folder / n for s in (stem, dotted) for n in (s, f"{s}.gz")
                 if (folder / n).is_file()]
        if not found:
            raise MemjaxError(f"{folder} has no {stem} (nor {stem}.gz); the MNIST files are "
                              f"{', '.join(MNIST_FILES.values())}")
        arrays[key] = read_idx(found[0], dims=3 if key.startswith("x") else 1)
    return arrays


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `dims` dimensions (gzipped or not), as uint8."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise MemjaxError(f"{path}: broken gzip file ({e})") from None
    # magic: two zero bytes, type 0x08 (unsigned byte), the number of dimensions
    if len(data) < 4 + 4 * dims or data[:4] != bytes([0, 0, 8, dims]):
        raise MemjaxError(f"{path} is not an IDX file of {dims}-dimensional unsigned bytes")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", dims, offset=4))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != np.prod(shape):
        raise MemjaxError(f"{path}: header says {shape} ({np.prod(shape)} bytes), the file "
                          f"holds {body.size}")
    return body.reshape(shape).copy()


def cifar10_arrays(source: Path) -> dict[str, np.ndarray]:
    """The four arrays from the CIFAR-10 python batches: the cifar-10-batches-py folder
    or the cifar-10-python.tar.gz that holds it."""
    if source.is_dir():
        def batch(name):
            path = source / name
            return path.read_bytes() if path.is_file() else None
        return _cifar10_from(batch, source)
    if not tarfile.is_tarfile(source):
        raise MemjaxError(f"{source} is neither the cifar-10-batches-py folder nor "
                          f"cifar-10-python.tar.gz")
    try:
        with tarfile.open(source) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

            def batch(name):
                return tar.extractfile(members[name]).read() if name in members else None
            return _cifar10_from(batch, source)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise MemjaxError(f"cannot read {source}: {e}") from None


def _cifar10_from(batch, source: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for part, names in CIFAR10_BATCHES.items():
        images, labels = [], []
        for name in names:
            data = batch(name)
            if data is None:
                raise MemjaxError(f"{source} has no {name}; the CIFAR-10 python batches are "
                                  f"{', '.join(sum(CIFAR10_BATCHES.values(), []))}")
            x, y = _cifar10_batch(data, f"{source}: {name}")
            images.append(x)
            labels.append(y)
        arrays[f"x_{part}"], arrays[f"y_{part}"] = np.concatenate(images), np.concatenate(labels)
    return arrays


def _cifar10_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 32, 32, 3] uint8, labels [N] uint8) of one pickled batch, whose rows
    are 1024 red, then 1024 green, then 1024 blue bytes."""
    try:
        batch = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
        x, y = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except MemjaxError as e:
        raise MemjaxError(f"{where}: {e}") from None
    except Exception as e:  # anything a broken pickle raises
        raise MemjaxError(f"{where} is not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),) \
            or (y.size and not 0 <= y.min() <= y.max() <= 9):
        raise MemjaxError(f"{where} is not a CIFAR-10 batch (data {x.dtype} {x.shape}, "
                          f"labels {y.shape})")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), y.astype(np.uint8)


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # how numpy pickles an array, under either name


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays and nothing else: a pickle can run any code
    it names, and these files come from the internet."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # Python 3's protocol-2 bytes

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise MemjaxError(f"refused to unpickle {module}.{name} (a batch holds only arrays)")
        return self.ALLOWED[module, name]
