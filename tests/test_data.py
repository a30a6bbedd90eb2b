import numpy as np
import pytest

from memjax.config import DataConfig
from memjax.data import load_dataset, random_inputs, random_labels, with_noise
from memjax.errors import MemjaxError


def test_embedded_default_shapes_and_dtypes():
    d = load_dataset(DataConfig())
    assert d.name == "embedded" and d.num_classes == 10
    assert d.train.x.shape == (10_000, 28, 28, 1) and d.train.x.dtype == np.uint8
    assert d.validation.x.shape == (2_000, 28, 28, 1)
    assert d.train.y.dtype == np.int32 and set(np.unique(d.train.y)) == set(range(10))
    assert not d.train.noisy.any()


def test_sizes_and_downscale():
    d = load_dataset(DataConfig(train_size=100, validation_size=10, downscale=2))
    assert d.train.x.shape == (100, 14, 14, 1) and d.validation.x.shape == (10, 14, 14, 1)
    full = load_dataset(DataConfig(train_size=1))
    assert d.train.x[0, 0, 0, 0] == np.rint(full.train.x[0, :2, :2, 0].mean())


def test_named_dataset_from_data_dir_splits_official_train(fake_npz, tmp_path):
    fake_npz("mnist.npz", n_train=10_500, n_test=20)
    d = load_dataset(DataConfig("mnist", data_dir=str(tmp_path)))
    assert d.train.x.shape == (500, 28, 28, 1) and d.validation.x.shape == (10_000, 28, 28, 1)
    raw = np.load(tmp_path / "mnist.npz")
    np.testing.assert_array_equal(d.validation.x[..., 0], raw["x_train"][500:])


def test_cifar_from_data_dir(fake_npz, tmp_path):
    fake_npz("cifar10.npz", n_train=5_100, n_test=10, shape=(32, 32, 3))
    d = load_dataset(DataConfig("cifar10", data_dir=str(tmp_path)))
    assert d.train.x.shape == (100, 32, 32, 3) and d.validation.x.shape == (5_000, 32, 32, 3)


def test_npz_path_source(fake_npz):
    path = fake_npz()
    d = load_dataset(DataConfig(f"npz:{path}"))
    assert d.train.x.shape == (300, 28, 28, 1) and d.validation.x.shape == (60, 28, 28, 1)
    assert d.train.y.dtype == np.int32


def _network_up(monkeypatch):
    """mock_data replaces tensorflow-datasets' download, not the check memjax makes that
    the download host answers (memjax.data.sources.reachable)."""
    from memjax.data import sources

    monkeypatch.setattr(sources, "reachable", lambda host: True)


def test_tfds_source_offline_with_mocks(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds  # a dependency of memjax: never skipped
    monkeypatch.delenv("MEMJAX_DATA_DIR", raising=False)
    _network_up(monkeypatch)
    with tfds.testing.mock_data(num_examples=10_050):
        d = load_dataset(DataConfig("mnist"))
    assert d.train.x.shape == (50, 28, 28, 1) and d.train.x.dtype == np.uint8
    assert d.validation.x.shape == (10_000, 28, 28, 1)
    assert d.train.y.dtype == np.int32 and d.train.y.max() < 10


@pytest.mark.parametrize("bad, message", [
    (dict(y_test=None), "lacks y_test"),
    (dict(x_train=np.zeros((300, 28, 28), np.float32)), "must be uint8"),
    (dict(y_train=np.zeros(5, np.int64)), "y_train must be"),
    (dict(x_test=np.zeros((60, 28, 28, 7), np.uint8)), "x_test must be"),
    (dict(x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.int64)),
     "x_test and y_test hold no examples"),
])
def test_npz_problems_are_named(fake_npz, bad, message):
    with pytest.raises(MemjaxError, match=message):
        load_dataset(DataConfig(f"npz:{fake_npz(**bad)}"))


def test_unreadable_and_missing_files(tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip file")
    with pytest.raises(MemjaxError, match="is not an .npz file"):
        load_dataset(DataConfig(f"npz:{broken}"))
    with pytest.raises(MemjaxError, match="does not exist"):
        load_dataset(DataConfig(f"npz:{tmp_path / 'absent.npz'}"))
    with pytest.raises(MemjaxError, match="unknown dataset"):
        load_dataset(DataConfig("imagenet"))
    with pytest.MonkeyPatch.context() as env:  # the folder named by the environment: said so
        env.setenv("MEMJAX_DATA_DIR", str(tmp_path / "gone"))
        with pytest.raises(MemjaxError, match=r"gone \(\$MEMJAX_DATA_DIR\) does not exist"):
            load_dataset(DataConfig("mnist"))
        with pytest.raises(MemjaxError, match=r"/elsewhere does not exist"):
            load_dataset(DataConfig("mnist", data_dir="/elsewhere"))
    with pytest.raises(MemjaxError, match="larger than"):
        load_dataset(DataConfig(train_size=10**6))


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_label_noise_fraction_is_exact_and_deterministic(fraction):
    train = load_dataset(DataConfig(train_size=1000)).train
    a = random_labels(train, fraction, 10, seed=3)
    b = random_labels(train, fraction, 10, seed=3)
    assert a.noisy.sum() == round(fraction * 1000)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.noisy, b.noisy)
    np.testing.assert_array_equal(a.y[~a.noisy], train.y[~a.noisy])
    np.testing.assert_array_equal(a.x, train.x)
    assert a.y.min() >= 0 and a.y.max() < 10
    if fraction == 1.0:  # uniform labels: roughly 10% agree with the originals by chance
        assert 0.05 < np.mean(a.y == train.y) < 0.15
    c = random_labels(train, fraction, 10, seed=4)
    if 0 < fraction < 1:
        assert not np.array_equal(a.noisy, c.noisy)


def test_random_labels_are_uniform_over_every_class():
    train = load_dataset(DataConfig(train_size=10_000)).train
    counts = np.bincount(random_labels(train, 1.0, 10, seed=0).y, minlength=11)
    assert counts[10] == 0
    # each class 1000 +- 5 standard deviations of Binomial(10000, 0.1)
    assert (np.abs(counts[:10] - 1000) < 5 * 30).all(), counts


def test_input_noise_matches_per_pixel_statistics():
    train = load_dataset(DataConfig(train_size=4000)).train
    noisy = random_inputs(train, 1.0, seed=0)
    assert noisy.x.dtype == np.float16 and noisy.noisy.all()
    np.testing.assert_array_equal(noisy.y, train.y)
    real = train.x.astype(np.float32) / 255
    x = noisy.x.astype(np.float32)
    np.testing.assert_allclose(x.mean(0), real.mean(0), atol=0.03)
    np.testing.assert_allclose(x.std(0), real.std(0), atol=0.03, rtol=0.08)
    glob = random_inputs(train, 1.0, seed=0, stats="global").x.astype(np.float32)
    assert abs(glob.mean() - real.mean()) < 0.01 and abs(glob.std() - real.std()) < 0.01
    assert glob[:, 0, 0].std() > 0.2  # global noise is not zero at the always-black corner


def test_partial_input_noise_keeps_the_rest():
    train = load_dataset(DataConfig(train_size=500)).train
    noisy = random_inputs(train, 0.4, seed=1)
    assert noisy.noisy.sum() == 200
    np.testing.assert_allclose(noisy.x[~noisy.noisy].astype(np.float32),
                               train.x[~noisy.noisy] / 255.0, atol=1e-3)
    np.testing.assert_array_equal(noisy.noisy, random_inputs(train, 0.4, seed=1).noisy)


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_fraction_outside_unit_interval(fraction):
    train = load_dataset(DataConfig(train_size=10)).train
    with pytest.raises(MemjaxError, match=r"in \[0, 1\]"):
        with_noise(train, "randY", fraction, 10, 0)
    with pytest.raises(MemjaxError, match=r"in \[0, 1\]"):
        with_noise(train, "randX", fraction, 10, 0)


def test_indices_follow_the_source_order(fake_npz, tmp_path):
    fake_npz("mnist.npz", n_train=10_500, n_test=20)
    raw = np.load(tmp_path / "mnist.npz")
    d = load_dataset(DataConfig("mnist", data_dir=str(tmp_path), train_size=300))
    np.testing.assert_array_equal(d.train.index, np.arange(300))
    np.testing.assert_array_equal(d.validation.index, 500 + np.arange(10_000))
    assert "training split" in d.order["validation"]
    t = load_dataset(DataConfig("mnist", data_dir=str(tmp_path), test_as_validation=True))
    assert len(t.train) == 10_500 and "test split" in t.order["validation"]
    np.testing.assert_array_equal(t.validation.x[..., 0], raw["x_test"])
    np.testing.assert_array_equal(t.validation.index, np.arange(20))
    # index survives subsets and noise
    noisy = random_labels(d.train.subset(np.array([5, 2, 9])), 0.5, 10, 0)
    np.testing.assert_array_equal(noisy.index, [5, 2, 9])
    assert noisy.image_sha1()[0] == d.train.image_sha1()[5]


def test_embedded_indices_are_official_mnist_indices():
    """The embedded subset is official MNIST training images 0-9999 and 50000-51999: its
    images hash like those of the official files (checked against them when present)."""
    import hashlib
    import os
    from pathlib import Path

    d = load_dataset(DataConfig())
    np.testing.assert_array_equal(d.train.index, np.arange(10_000))
    np.testing.assert_array_equal(d.validation.index, 50_000 + np.arange(2_000))
    official = Path(os.environ.get("MEMJAX_DATA_DIR", "../shared/data")) / "mnist.npz"
    if official.exists():
        x = np.load(official)["x_train"]
        for split in (d.train, d.validation):
            rows = split.index[[0, 123, len(split) - 1]]
            want = [hashlib.sha1(np.ascontiguousarray(x[i][..., None]).tobytes()).hexdigest()
                    for i in rows]
            assert list(split.image_sha1()[[0, 123, len(split) - 1]]) == want


def test_embedded_has_no_test_split():
    with pytest.raises(MemjaxError, match="no test split"):
        load_dataset(DataConfig(test_as_validation=True))


def test_tfds_order_is_named(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    monkeypatch.delenv("MEMJAX_DATA_DIR", raising=False)
    _network_up(monkeypatch)
    with tfds.testing.mock_data(num_examples=10_050):
        d = load_dataset(DataConfig("mnist", test_as_validation=True))
    assert "tensorflow-datasets mnist:" in d.order["train"] and "image_sha1" in d.order["train"]
    assert len(d.train) == 10_050 and "test split" in d.order["validation"]


def test_reachable_gives_up_on_a_name_lookup_that_hangs(monkeypatch):
    import socket
    import time

    from memjax.data.sources import reachable

    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    def dead_resolver(*args, **kwargs):  # answers, as a real one does, long after
        time.sleep(3)
        raise socket.gaierror("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", dead_resolver)
    started = time.perf_counter()
    assert not reachable("storage.googleapis.com", timeout=0.2)
    assert time.perf_counter() - started < 1


def test_reachable_asks_the_proxy_the_environment_names(monkeypatch):
    import socket

    from memjax.data.sources import reachable

    asked = []

    class Connection:
        def close(self):
            pass

    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(socket, "create_connection",
                        lambda address, timeout: asked.append(address) or Connection())
    assert reachable("www.cs.toronto.edu") and asked == [("proxy.example", 3128)]
