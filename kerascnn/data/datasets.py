"""Named image sources and the splits kerascnn trains on.

`load_data(config)` turns any source into an `ImageData`: three unbatched tf.data datasets of
(raw pixels float32 HWC in 0..255, integer label) plus class names and the input shape.

Sources: the registry below (`kerascnn datasets` prints it), `tfds:<name>`, an image-folder path,
and numpy arrays through `from_arrays`.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
from kerascnn.config import DataConfig
from kerascnn.data.duplicates import array_hash, first_of_each
from kerascnn.data.folder import load_folder
from kerascnn.data.imagedata import ImageData, cap_examples, check_classes, select_classes, stratified_split
from kerascnn.data.table import load_table, table_path
from kerascnn.data.tfds_source import load_tfds
from kerascnn.errors import DataError, suggest

log = logging.getLogger(__name__)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclasses.dataclass(frozen=True)
class NamedSource:
    """A row of the dataset registry: how to load it and what to tell the user."""

    loader: Callable[[], tuple]
    description: str


def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8x8 images with values 0..16, scaled to the 0..255 pixel range every kerascnn model expects.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target, None, None, [str(c) for c in digits.target_names]


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST family's format), as keras.datasets does."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _keras_dataset(name: str):
    import keras

    try:
        return getattr(keras.datasets, name).load_data()
    except Exception as exc:  # keras raises whatever urllib raised when the download fails
        raise DataError(f"dataset {name!r} is not in the Keras cache (~/.keras/datasets) and could not be "
                        f"downloaded ({type(exc).__name__}); connect to the internet once or copy the files "
                        f"there") from None


def _load_fashion_mnist():
    files = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    keras_cache = Path.home() / ".keras" / "datasets" / "fashion-mnist"
    if all((keras_cache / f).is_file() for f in files) or not DEBIAN_FASHION_MNIST.is_dir():
        try:
            (x_train, y_train), (x_test, y_test) = _keras_dataset("fashion_mnist")
        except DataError as exc:
            raise DataError(f"{exc}; on Debian/Ubuntu `apt-get install dataset-fashion-mnist` provides it "
                            f"offline") from None
    else:
        x_train, y_train, x_test, y_test = (_read_idx(DEBIAN_FASHION_MNIST / f) for f in files)
    return x_train[..., None], y_train, x_test[..., None], y_test, list(FASHION_MNIST_CLASSES)


def _load_mnist():
    (x_train, y_train), (x_test, y_test) = _keras_dataset("mnist")
    return x_train[..., None], y_train, x_test[..., None], y_test, [str(i) for i in range(10)]


def _load_cifar10():
    (x_train, y_train), (x_test, y_test) = _keras_dataset("cifar10")
    return x_train, y_train.ravel(), x_test, y_test.ravel(), list(CIFAR10_CLASSES)


DATASETS: dict[str, NamedSource] = {
    "digits": NamedSource(_load_digits, "scikit-learn's bundled 8x8 handwritten digits, 1797 images, "
                                        "10 classes (the embedded default)"),
    "fashion_mnist": NamedSource(_load_fashion_mnist, "Fashion-MNIST 28x28 grayscale, 60k train + 10k test, "
                                                      "10 classes (Keras cache or Debian dataset-fashion-mnist)"),
    "mnist": NamedSource(_load_mnist, "MNIST 28x28 grayscale digits, 60k train + 10k test (keras.datasets)"),
    "cifar10": NamedSource(_load_cifar10, "CIFAR-10 32x32 color, 50k train + 10k test (keras.datasets)"),
}


def describe_sources() -> list[tuple[str, str]]:
    """(name, description) rows for `kerascnn datasets`, including the non-registry sources."""
    rows = [(name, source.description) for name, source in DATASETS.items()]
    rows.append(("tfds:<name>", "any tensorflow-datasets image classification dataset"))
    rows.append(("<folder path>", "an image folder root/<class>/<image> (png, jpg, bmp, gif), streamed from disk"))
    rows.append(("<table>.csv", "a label table filename,label (or filename,labels: multi-label) beside its images "
                                "or under data.image_root"))
    return rows


def from_arrays(x_train, y_train, x_test=None, y_test=None, class_names=None, config: DataConfig | None = None,
                seed: int = 42, name: str = "arrays") -> ImageData:
    """An ImageData from numpy arrays (raw pixels NHWC or NHW, integer labels).

    Without a test set, `config.test_split` of the data is held out (stratified, seeded); the
    validation set is always `config.validation_split` of the training data.

    Example:
        data = from_arrays(x, y, class_names=["cat", "dog"])
    """
    config = config or DataConfig(dataset=name)
    x_train = np.asarray(x_train)
    y_train = np.asarray(y_train).astype(np.int64).ravel()
    if x_train.ndim == 3:
        x_train = x_train[..., None]
    if x_train.ndim != 4 or len(x_train) != len(y_train):
        raise DataError(f"images must be N x H x W (x C) with one label each; got images {x_train.shape} "
                        f"and labels {y_train.shape}")
    if class_names is None:
        class_names = [str(i) for i in range(int(y_train.max()) + 1)]
    class_names = list(class_names)
    if config.deduplicate:
        x_train, y_train, x_test, y_test = _deduplicate(x_train, y_train, x_test, y_test, name)
    if x_test is None:
        keep, labels, class_names = select_classes(y_train, config.classes, class_names)
        x_all, y_all = x_train[keep], labels[keep]
        check_classes(y_all, class_names, name)
        train_idx, test_idx = stratified_split(y_all, config.test_split, seed, "test")
        x_train, y_train, x_test, y_test = x_all[train_idx], y_all[train_idx], x_all[test_idx], y_all[test_idx]
    else:
        x_test = np.asarray(x_test)
        x_test = x_test[..., None] if x_test.ndim == 3 else x_test
        y_test = np.asarray(y_test).astype(np.int64).ravel()
        keep, y_train, class_names_kept = select_classes(y_train, config.classes, class_names)
        x_train, y_train = x_train[keep], y_train[keep]
        keep, y_test, _ = select_classes(y_test, config.classes, class_names)
        x_test, y_test, class_names = x_test[keep], y_test[keep], class_names_kept
        check_classes(y_train, class_names, name)
    train_idx, val_idx = stratified_split(y_train, config.validation_split, seed, "validation")
    x_val, y_val = x_train[val_idx], y_train[val_idx]
    capped = train_idx[cap_examples(y_train[train_idx], config.max_train_examples, seed)]
    x_train, y_train = x_train[capped], y_train[capped]
    arrays = {"train": (x_train, y_train), "validation": (x_val, y_val), "test": (x_test, y_test)}
    image_size = tuple(config.image_size) if config.image_size else tuple(x_train.shape[1:3])
    splits = {split: _array_dataset(x, y, image_size) for split, (x, y) in arrays.items()}
    return ImageData(name=name, class_names=class_names, input_shape=(*image_size, x_train.shape[-1]),
                     counts={split: len(y) for split, (_, y) in arrays.items()}, arrays=arrays, **splits)


def _deduplicate(x_train, y_train, x_test, y_test, name: str):
    """`data.deduplicate` for arrays: the first of each set of identical images, and no test image that
    equals a training image."""
    hashes = [array_hash(image) for image in x_train]
    keep = first_of_each(hashes)
    dropped = int((~keep).sum())
    x_train, y_train = x_train[keep], y_train[keep]
    if x_test is not None:
        seen = {h for h, k in zip(hashes, keep) if k}
        test_hashes = [array_hash(image) for image in np.asarray(x_test)]
        fresh = first_of_each(test_hashes) & np.array([h not in seen for h in test_hashes], bool)
        dropped += int((~fresh).sum())
        x_test, y_test = np.asarray(x_test)[fresh], np.asarray(y_test)[fresh]
    if dropped:
        log.warning("data.deduplicate: dropped %d duplicate images of %s", dropped, name)
    return x_train, y_train, x_test, y_test


def _array_dataset(x: np.ndarray, y: np.ndarray, image_size: tuple[int, int]) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    needs_resize = tuple(x.shape[1:3]) != tuple(image_size)

    def to_pixels(image, label):
        image = tf.cast(image, tf.float32)
        if needs_resize:
            image = tf.image.resize(image, image_size)
        return image, label

    return ds.map(to_pixels, num_parallel_calls=tf.data.AUTOTUNE)


def load_data(config: DataConfig | str = "digits", seed: int = 42) -> ImageData:
    """Load a dataset by name, `tfds:<name>`, folder path or label CSV, split into train/validation/test.

    Args:
        config: a DataConfig or just the dataset string (default "digits").
        seed: seed of the stratified splits (default 42).

    Example:
        data = load_data("digits"); print(data.counts, data.class_names)
    """
    if isinstance(config, str):
        config = DataConfig(dataset=config)
    dataset = config.dataset
    if table_path(config) is not None:
        return load_table(config, seed)
    if dataset.startswith("tfds:"):
        return load_tfds(dataset[len("tfds:"):], config, seed)
    if dataset in DATASETS:
        x_train, y_train, x_test, y_test, names = DATASETS[dataset].loader()
        return from_arrays(x_train, y_train, x_test, y_test, names, config, seed, name=dataset)
    if "/" in dataset or Path(dataset).exists() or dataset.startswith("."):
        return load_folder(Path(dataset), config, seed)
    hint = suggest(dataset, DATASETS, cutoff=0.6)
    raise DataError(f"unknown dataset {dataset!r}{hint}; use one of {', '.join(DATASETS)}, tfds:<name>, or the "
                    f"path of an image folder")
