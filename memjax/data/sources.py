"""Where data comes from: the embedded MNIST subset, `<data dir>/<name>.npz`,
tensorflow-datasets, or any `npz:PATH`.

Every source returns a Dataset with uint8 images [N, H, W, C] and int32 labels.
TensorFlow is never needed: tensorflow-datasets is imported only when a named data set
is not found as a local .npz, and then read with `tfds.data_source` (no TensorFlow)
before falling back to `tfds.load`. When it has no copy and its download host cannot be
reached, the load is refused at once (memjax.data.convert makes the .npz from files the
user has).
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import urllib.parse
import urllib.request
import zipfile
from importlib import resources
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from memjax.config import DataConfig
from memjax.data.dataset import Dataset, downscale, make_split
from memjax.errors import MemjaxError

# Validation taken from the end of the official training split (PAPER.md "Data").
VALIDATION_SIZE = {"mnist": 10_000, "cifar10": 5_000}
IMAGE_SHAPE = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DATA_DIR_ENV = "MEMJAX_DATA_DIR"
# Where tensorflow-datasets downloads each data set from (the URLs of its builders).
DOWNLOAD_HOST = {"mnist": "storage.googleapis.com", "cifar10": "www.cs.toronto.edu"}


def load_dataset(config: DataConfig) -> Dataset:
    """Load the data set named by `config.name`, cut to the configured sizes."""
    config.check()
    name = config.name
    if name == "embedded":
        dataset = _embedded()
    elif name in VALIDATION_SIZE:
        dataset = _named(name, config.data_dir or os.environ.get(DATA_DIR_ENV),
                         config.test_as_validation,
                         from_env=not config.data_dir)
    elif name.startswith("npz:"):
        arrays = read_npz(Path(name[4:]))
        dataset = _from_arrays(name, arrays["x_train"], arrays["y_train"],
                               arrays["x_test"], arrays["y_test"])
        dataset = replace(dataset, order={"train": f"index in {name[4:]}'s x_train",
                                          "validation": f"index in {name[4:]}'s x_test"})
    else:
        raise MemjaxError(
            f"unknown dataset {name!r}; use embedded, mnist, cifar10 or npz:PATH")
    for split_name, size in (("train", config.train_size), ("validation", config.validation_size)):
        available = len(getattr(dataset, split_name))
        if size is not None and size > available:
            raise MemjaxError(f"{split_name} size {size} is larger than the {available} "
                              f"examples {name} has (data.{split_name}_size: at most "
                              f"{available}, or None for all)")
    h, w = dataset.train.x.shape[1:3]
    if h % config.downscale or w % config.downscale:
        raise MemjaxError(f"downscale {config.downscale} does not divide {name}'s {h} x {w} "
                          f"images (it average-pools {config.downscale} x {config.downscale} "
                          f"blocks)")
    train = downscale(dataset.train.take(config.train_size), config.downscale)
    validation = downscale(dataset.validation.take(config.validation_size), config.downscale)
    return replace(dataset, train=train, validation=validation)


@dataclass(frozen=True)
class DataShape:
    """The sizes load_dataset would give, known without loading: examples per split, the
    image shape (H, W, C) after downscaling, and the classes."""

    train: int
    validation: int
    image_shape: tuple[int, int, int]
    num_classes: int


# (training split, test split) of the official files
OFFICIAL_SIZES = {"mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}


def data_shape(config: DataConfig) -> DataShape:
    """What `load_dataset(config)` would return, in sizes (memjax.cost plans runs with it).
    The embedded and named data sets need no file; npz:PATH reads the file's headers."""
    config.check()
    name = config.name
    if name == "embedded":
        sizes, image, classes = (10_000, 2_000), (28, 28, 1), 10
    elif name in OFFICIAL_SIZES:
        total, test = OFFICIAL_SIZES[name]
        sizes = ((total, test) if config.test_as_validation
                 else (total - VALIDATION_SIZE[name], VALIDATION_SIZE[name]))
        image, classes = IMAGE_SHAPE[name], 10
    elif name.startswith("npz:"):
        arrays = read_npz(Path(name[4:]))
        sizes = len(arrays["y_train"]), len(arrays["y_test"])
        image = (arrays["x_train"].shape[1:] + (1,))[:3]
        classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    else:
        raise MemjaxError(f"unknown dataset {name!r}; use embedded, mnist, cifar10 or npz:PATH")
    train, validation = (n if size is None else min(size, n)
                         for n, size in zip(sizes, (config.train_size, config.validation_size)))
    f = config.downscale
    return DataShape(train, validation, (image[0] // f, image[1] // f, image[2]), classes)


def _from_arrays(name: str, x_train, y_train, x_val, y_val, val_start: int = 0) -> Dataset:
    train, validation = make_split(x_train, y_train), make_split(x_val, y_val, val_start)
    num_classes = int(max(train.y.max(), validation.y.max())) + 1
    return Dataset(name, train, validation, num_classes)


def _embedded() -> Dataset:
    path = resources.files("memjax.data") / "mnist_subset.npz"
    with resources.as_file(path) as file, np.load(file) as d:
        # official MNIST training images 0-9999 and 50000-51999 (tests/test_data.py)
        dataset = _from_arrays("embedded", d["x_train"], d["y_train"],
                               d["x_validation"], d["y_validation"], val_start=50_000)
    order = "index in the official MNIST training files (train-images-idx3-ubyte)"
    return replace(dataset, order={"train": order, "validation": order})


def _official(name: str, train: tuple, test: tuple, test_as_validation: bool,
              order: str) -> Dataset:
    """The paper's split (validation = the end of the official training split) or, with
    test_as_validation, the whole training split and the test split."""
    (x, y), (x_test, y_test) = train, test
    if test_as_validation:
        return replace(_from_arrays(name, x, y, x_test, y_test),
                       order={"train": f"{order}, training split",
                              "validation": f"{order}, test split"})
    n_val = VALIDATION_SIZE[name]
    if len(y) <= n_val:
        raise MemjaxError(f"{name}: {len(y)} training examples, need more than {n_val}")
    dataset = _from_arrays(name, x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:],
                           val_start=len(y) - n_val)
    return replace(dataset, order={"train": f"{order}, training split",
                                   "validation": f"{order}, training split"})


def _named(name: str, data_dir: str | None, test_as_validation: bool = False,
           from_env: bool = False) -> Dataset:
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            named = f" (${DATA_DIR_ENV})" if from_env else ""
            raise MemjaxError(f"data directory {data_dir}{named} does not exist")
        local = Path(data_dir) / f"{name}.npz"
        if local.exists():
            a = read_npz(local, image_shape=IMAGE_SHAPE[name])
            return _official(name, (a["x_train"], a["y_train"]), (a["x_test"], a["y_test"]),
                             test_as_validation, f"index in {local} (the official files' order)")
    _check_tfds_can_load(name, data_dir)
    if data_dir is not None:
        print(f"memjax: note: no {name}.npz in {data_dir}; loading {name} through "
              f"tensorflow-datasets, with {data_dir} as its data directory (it downloads "
              f"there if it has no copy)", file=sys.stderr)
    train, version = _tfds_split(name, "train", data_dir)
    test = _tfds_split(name, "test", data_dir)[0] if test_as_validation else (None, None)
    # tensorflow-datasets stores MNIST in another order than the official files; its
    # position is all that identifies an example, so exports add each image's SHA-1
    return _official(name, train, test, test_as_validation,
                     f"position in tensorflow-datasets {name}:{version} (NOT the official "
                     f"files' order for mnist; join on image_sha1)")


def read_npz(path: Path, image_shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """Read and check an .npz with x_train, y_train, x_test, y_test (uint8 images, int labels)."""
    if not path.is_file():
        raise MemjaxError(f"data file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise MemjaxError(f"{path} is not an .npz file (numpy.savez's zip of arrays)")
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in NPZ_KEYS if k not in d.files]
            if missing:
                raise MemjaxError(f"{path} lacks {', '.join(missing)} "
                                  f"(needs {', '.join(NPZ_KEYS)})")
            arrays = {k: d[k] for k in NPZ_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise MemjaxError(f"cannot read {path}: {e}") from None
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.dtype != np.uint8:
            raise MemjaxError(f"{path}: x_{part} must be uint8 pixels, got {x.dtype}")
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
            raise MemjaxError(f"{path}: x_{part} must be [N, H, W] or [N, H, W, C], "
                              f"got shape {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
            raise MemjaxError(f"{path}: y_{part} must be [{x.shape[0]}] integer labels, "
                              f"got {y.dtype} {y.shape}")
        if not len(y):
            raise MemjaxError(f"{path}: x_{part} and y_{part} hold no examples")
        if y.min() < 0:
            raise MemjaxError(f"{path}: y_{part} has negative labels")
        if part == "train" and len(np.unique(y)) < 2:
            raise MemjaxError(f"{path}: y_train holds one class (label {int(y[0])}); "
                              f"classifying needs at least 2")
        if part == "test" and len(unseen := np.setdiff1d(y, arrays["y_train"])):
            print(f"memjax: note: {path}: y_test has label(s) "
                  f"{', '.join(map(str, unseen[:5].tolist()))}{', ...' * (len(unseen) > 5)} "
                  f"that y_train never has; no model can learn them", file=sys.stderr)
        if part == "train" and len(np.unique(y)) < int(y.max()) + 1:
            # the class count is the largest label + 1: labels 3, 7, 255 make 256 classes
            print(f"memjax: note: {path}: y_train holds {len(np.unique(y))} distinct labels "
                  f"but the largest is {int(y.max())}, so models get {int(y.max()) + 1} "
                  f"classes; labels are class indices 0..K-1", file=sys.stderr)
        shape = x.shape[1:] if x.ndim == 4 else x.shape[1:] + (1,)
        if image_shape is not None and shape != image_shape:
            raise MemjaxError(f"{path}: x_{part} images are {shape}, expected {image_shape}")
        image_shape = shape  # the test images must match the training images
    return arrays


def _how_to_get(name: str) -> str:
    return (f"pass --data-dir DIR holding {name}.npz (uint8 arrays x_train, y_train, x_test, "
            f"y_test; `memjax data import {name} PATH --out DIR` makes it from the official "
            f"files)")


def _tfds(name: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise MemjaxError(f"{name}: no {name}.npz in the data directory and "
                          f"tensorflow-datasets is not installed; {_how_to_get(name)}, or "
                          f"`pip install tensorflow-datasets`") from None
    return tfds


def _check_tfds_can_load(name: str, data_dir: str | None) -> None:
    """Refuse in seconds, before tensorflow-datasets writes anything, when it has no copy
    of `name` and could not download one: offline, its downloader retries for minutes."""
    if _tfds(name).builder(name, data_dir=data_dir).data_path.exists():
        return
    host = DOWNLOAD_HOST[name]
    if not reachable(host):
        where = f"no {name}.npz in {data_dir}" if data_dir else "no --data-dir"
        raise MemjaxError(f"{name}: {where}, and tensorflow-datasets has no copy and cannot "
                          f"download one ({host} is unreachable); {_how_to_get(name)}")


def reachable(host: str, timeout: float = 5.0) -> bool:
    """Whether a connection to `host` port 443 (through the HTTPS proxy that the
    environment names, if any) opens within `timeout` seconds, name lookup included."""
    proxy = urllib.request.getproxies().get("https")
    address = (host, 443)
    if proxy and not urllib.request.proxy_bypass(host):
        url = urllib.parse.urlsplit(proxy if "//" in proxy else f"//{proxy}")
        address = (url.hostname, url.port or 80)
    opened = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            opened.append(True)
        except (OSError, ValueError):
            pass

    # in a thread: name lookup takes no timeout, and a dead resolver holds it 10 s or more
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def _tfds_split(name: str, split: str, data_dir: str | None) -> tuple[tuple, str]:
    """An official split through tensorflow-datasets: ((uint8 images, labels), the data
    set's version), its examples in the order tensorflow-datasets enumerates them."""
    tfds = _tfds(name)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir)
        records = [source[i] for i in range(len(source))]
        x = np.stack([r["image"] for r in records])
        y = np.array([r["label"] for r in records])
    except Exception as first:  # no array_record support / not prepared: try tfds.load
        try:
            data = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1, data_dir=data_dir))
            x, y = data["image"], data["label"]
        except Exception as second:
            raise MemjaxError(f"{name}: could not load through tensorflow-datasets "
                              f"({type(first).__name__}: {first}; then {type(second).__name__}: "
                              f"{second})".replace("\n", " ")) from None
    version = str(tfds.builder(name, data_dir=data_dir).version)
    return (np.asarray(x, np.uint8), np.asarray(y, np.int32)), version
