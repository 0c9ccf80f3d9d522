"""Dataset sources: digits, numpy arrays, image folders, Fashion-MNIST IDX files and tfds, all offline."""

import gzip

import numpy as np
import pytest
import tensorflow as tf

from kerascnn.config import DataConfig
from kerascnn.data import datasets
from kerascnn.data.datasets import from_arrays, load_data
from kerascnn.errors import DataError
from tests.conftest import write_image_folder


def _labels(ds):
    return np.array([int(y) for _, y in ds.as_numpy_iterator()])


def test_digits_is_split_three_ways_stratified_in_pixel_range():
    data = load_data("digits")
    assert data.input_shape == (8, 8, 1)
    assert data.class_names == [str(i) for i in range(10)]
    assert sum(data.counts.values()) == 1797
    assert data.counts["test"] == pytest.approx(0.2 * 1797, abs=1)
    images, _ = next(data.train.batch(2000).as_numpy_iterator())
    assert images.dtype == np.float32 and images.min() == 0 and images.max() == 255
    for split in ("train", "validation", "test"):
        share = np.bincount(_labels(getattr(data, split)), minlength=10) / data.counts[split]
        np.testing.assert_allclose(share, 0.1, atol=0.02)


def test_splits_are_seeded_and_partition_the_data():
    from sklearn.datasets import load_digits

    a, b, c = load_data("digits", seed=1), load_data("digits", seed=1), load_data("digits", seed=2)
    np.testing.assert_array_equal(a.arrays["test"][0], b.arrays["test"][0])
    assert not np.array_equal(a.arrays["test"][0], c.arrays["test"][0])
    every_split = np.concatenate([a.arrays[s][0] for s in ("train", "validation", "test")])
    original = np.round(load_digits().images * 255 / 16).astype(np.uint8)[..., None]
    assert sorted(x.tobytes() for x in every_split) == sorted(x.tobytes() for x in original)


def test_class_subset_is_relabelled_in_order_and_capped():
    data = load_data(DataConfig(dataset="digits", classes=(7, 3), max_train_examples=50))
    assert data.class_names == ["7", "3"]
    assert data.counts["train"] == 50
    assert set(_labels(data.test)) == {0, 1}
    with pytest.raises(DataError, match="index 12 but the dataset has 10 classes"):
        load_data(DataConfig(dataset="digits", classes=(1, 12)))


def test_from_arrays_with_and_without_a_test_set():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (100, 6, 5)).astype(np.uint8)
    y = np.repeat([0, 1], 50)
    data = from_arrays(x, y, class_names=["a", "b"])
    assert data.input_shape == (6, 5, 1) and data.counts["test"] == 20
    data = from_arrays(x, y, x[:10], y[:10], config=DataConfig(dataset="arrays", image_size=(12, 10)))
    assert data.counts["test"] == 10 and data.input_shape == (12, 10, 1)
    image, _ = next(data.test.as_numpy_iterator())
    assert image.shape == (12, 10, 1)
    with pytest.raises(DataError, match="one label each"):
        from_arrays(x, y[:5])
    with pytest.raises(DataError, match="at least 2"):
        from_arrays(x, np.zeros(100, int))


def test_image_folder_streams_from_disk(tmp_path):
    root = write_image_folder(tmp_path / "pets", classes=("cat", "dog", "eel"), per_class=15, size=(20, 12))
    data = load_data(DataConfig(dataset=str(root), image_size=(10, 10)))
    assert data.class_names == ["cat", "dog", "eel"]
    assert data.input_shape == (10, 10, 3)
    assert data.arrays is None  # nothing decoded up front
    assert sum(data.counts.values()) == 45
    image, label = next(data.train.as_numpy_iterator())
    assert image.shape == (10, 10, 3) and 0 <= image.min() and image.max() <= 255


def test_grayscale_folder_gets_one_channel(tmp_path):
    root = write_image_folder(tmp_path / "gray", mode="L")
    assert load_data(DataConfig(dataset=str(root))).input_shape == (16, 16, 1)  # the images' own (median) size


@pytest.mark.parametrize("layout, fragment", [
    ("missing", "does not exist"),
    ("empty", "no usable images"),
    ("one_class", "one class only"),
    ("tiny_class", "smallest class has 1 images"),
])
def test_bad_folders(tmp_path, layout, fragment):
    root = tmp_path / "data"
    if layout == "empty":
        (root / "a").mkdir(parents=True)
    elif layout == "one_class":
        write_image_folder(root, classes=("only",))
    elif layout == "tiny_class":
        write_image_folder(root, classes=("a", "b"))
        write_image_folder(root, classes=("c",), per_class=1)
    with pytest.raises(DataError, match=fragment):
        load_data(DataConfig(dataset=str(root)))


def test_unknown_dataset_name_suggests_the_nearest():
    with pytest.raises(DataError, match=r"unknown dataset 'fashion_mnst' \(did you mean 'fashion_mnist'\?\)"):
        load_data("fashion_mnst")


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_the_debian_idx_files_offline(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x_train, x_test = rng.integers(0, 255, (60, 28, 28)), rng.integers(0, 255, (20, 28, 28))
    y_train, y_test = np.arange(60) % 10, np.arange(20) % 10
    for name, array in [("train-images-idx3-ubyte.gz", x_train), ("train-labels-idx1-ubyte.gz", y_train),
                        ("t10k-images-idx3-ubyte.gz", x_test), ("t10k-labels-idx1-ubyte.gz", y_test)]:
        _write_idx(tmp_path / name, array)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = load_data("fashion_mnist")
    assert data.class_names[0] == "T-shirt/top" and data.input_shape == (28, 28, 1)
    assert data.counts == {"train": 48, "validation": 12, "test": 20}
    np.testing.assert_array_equal(data.arrays["test"][0][..., 0], x_test)


def test_missing_keras_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(datasets, "_keras_dataset", _offline_keras_dataset)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion_mnist")


def _offline_keras_dataset(name):
    raise DataError(f"dataset {name!r} is not in the Keras cache (~/.keras/datasets) and could not be downloaded")


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        data = load_data(DataConfig(dataset="tfds:mnist", classes=(0, 1)))
    assert data.class_names == ["0", "1"] and data.input_shape == (28, 28, 1)
    image, label = next(data.train.as_numpy_iterator())
    assert image.dtype == np.float32 and label in (0, 1)
    with pytest.raises(DataError, match="unknown to tensorflow-datasets"):
        load_data("tfds:no_such_dataset_xyz")


def test_tf_data_elements_have_static_shapes():
    data = load_data("digits")
    assert data.train.element_spec[0].shape == tf.TensorShape([8, 8, 1])
