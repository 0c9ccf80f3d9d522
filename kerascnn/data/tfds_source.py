"""`tfds:<name>` datasets through tensorflow-datasets.

The dataset's own test and validation splits are used where it has them; otherwise they are cut
from `train` with tfds's percentage slicing. Data are read from tfds's data dir (TFDS_DATA_DIR),
downloaded there by tfds on first use.
"""

from __future__ import annotations

import tensorflow as tf

from kerascnn.config import DataConfig
from kerascnn.data.imagedata import ImageData
from kerascnn.errors import DataError, first_line


def _split_names(splits, config: DataConfig) -> dict[str, str]:
    """tfds split strings for train/validation/test, slicing `train` where a split is missing."""
    if "train" not in splits:
        raise DataError(f"the tfds dataset has no 'train' split (it has {', '.join(splits)})")
    test = "test" if "test" in splits else None
    validation = "validation" if "validation" in splits else None
    train_end = 100
    if test is None:
        train_end -= round(config.test_split * 100)
        test = f"train[{train_end}%:]"
    if validation is None:
        val_start = round(train_end * (1 - config.validation_split))
        validation = f"train[{val_start}%:{train_end}%]"
        train_end = val_start
    train = "train" if train_end == 100 else f"train[:{train_end}%]"
    return {"train": train, "validation": validation, "test": test}


def _count(ds: tf.data.Dataset) -> int:
    known = int(ds.cardinality())
    return known if known >= 0 else int(ds.reduce(0, lambda n, _: n + 1))


def load_tfds(name: str, config: DataConfig, seed: int) -> ImageData:
    """An ImageData over a tensorflow-datasets image classification dataset."""
    import tensorflow_datasets as tfds  # heavy: imported only when a tfds: dataset is asked for

    try:
        builder = tfds.builder(name)
    except Exception as exc:  # tfds raises DatasetNotFoundError and friends, all with long messages
        raise DataError(f"tfds dataset {name!r} is unknown to tensorflow-datasets: {first_line(exc)}") from None
    info = builder.info
    if "label" not in info.features or "image" not in info.features:
        raise DataError(f"tfds dataset {name!r} has no 'image' and 'label' features; kerascnn needs an image "
                        f"classification dataset")
    class_names = list(info.features["label"].names)
    height, width, channels = info.features["image"].shape
    image_size = tuple(config.image_size) if config.image_size else (height, width)
    if None in image_size:
        raise DataError(f"tfds dataset {name!r} has images of varying size; set data.image_size = [height, width]")
    try:
        builder.download_and_prepare()
        # tfds's mock_data (used by the tests) and some community builders expose no split metadata:
        # the conventional train/test pair is assumed then.
        split_names = _split_names(list(info.splits) or ["train", "test"], config)
        datasets = tfds.load(name, split=list(split_names.values()), as_supervised=True,
                             shuffle_files=False, read_config=tfds.ReadConfig(shuffle_seed=seed))
    except Exception as exc:  # download and preparation errors
        raise DataError(f"tfds dataset {name!r} could not be loaded ({type(exc).__name__}: "
                        f"{first_line(exc)}); download it once with network access") from None
    keep = None if config.classes is None else tf.constant(list(config.classes), tf.int64)

    def prepare(ds: tf.data.Dataset) -> tf.data.Dataset:
        if keep is not None:
            ds = ds.filter(lambda x, y: tf.reduce_any(tf.equal(tf.cast(y, tf.int64), keep)))
            ds = ds.map(lambda x, y: (x, tf.argmax(tf.cast(tf.equal(tf.cast(y, tf.int64), keep), tf.int32))))

        def to_pixels(image, label):
            image = tf.image.resize(tf.cast(image, tf.float32), image_size)
            image.set_shape((*image_size, channels))
            return image, tf.cast(label, tf.int32)

        return ds.map(to_pixels, num_parallel_calls=tf.data.AUTOTUNE)

    splits = dict(zip(split_names, (prepare(ds) for ds in datasets)))
    if config.max_train_examples is not None:
        splits["train"] = splits["train"].take(config.max_train_examples)
    counts = {split: _count(ds) for split, ds in splits.items()}
    if keep is not None:
        class_names = [class_names[c] for c in config.classes]
    return ImageData(name=f"tfds:{name}", class_names=class_names, input_shape=(*image_size, channels),
                     counts=counts, **splits)
