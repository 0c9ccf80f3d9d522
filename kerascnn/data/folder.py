"""Image-folder datasets: `root/<class>/<image>`, streamed from disk through tf.data.

Layout rule: each immediate sub-folder of the root is a class (sorted by name); every image file
below it, in nested folders too, belongs to that class. Class folders without images are skipped
with a warning. Files are split stratified (scikit-learn, seeded) into train/validation/test and
decoded on the fly by `kerascnn.data.decode` (the decoding serving uses too), so the images
never sit in memory all at once (unless `data.cache` keeps the decoded tensors after the first epoch).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from kerascnn.config import DataConfig
from kerascnn.data.decode import decode_encoded_image
from kerascnn.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
DEFAULT_FOLDER_IMAGE_SIZE = (64, 64)
GRAYSCALE_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")
log = logging.getLogger(__name__)


@dataclasses.dataclass
class FolderScan:
    """What a scan of an image folder found: image paths, their labels and the class names."""

    root: Path
    paths: list[str]
    labels: np.ndarray
    class_names: list[str]


def scan_folder(root: Path) -> FolderScan:
    """List the images of `root/<class>/...` by extension, one label per class folder."""
    if not root.exists():
        raise DataError(f"dataset folder {str(root)!r} does not exist; pass a folder laid out as root/<class>/<image>")
    if not root.is_dir():
        raise DataError(f"dataset path {str(root)!r} is not a folder; pass a folder laid out as root/<class>/<image>")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels, class_names = [], [], []
    for class_dir in class_dirs:
        files = sorted(str(p) for p in class_dir.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        if not files:
            log.warning("class folder %s has no images and is skipped", class_dir)
            continue
        paths += files
        labels += [len(class_names)] * len(files)
        class_names.append(class_dir.name)
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}; "
                        f"expected root/<class>/<image>")
    if len(class_names) < 2:
        raise DataError(f"{str(root)!r} has images for one class only ({class_names[0]!r}); a classifier needs "
                        f"at least 2 class folders")
    return FolderScan(root, paths, np.asarray(labels, np.int64), class_names)


def guess_channels(paths: list[str], sample: int = 64) -> int:
    """1 if the first `sample` images are all grayscale, else 3 (read from headers only)."""
    for path in paths[:sample]:
        try:
            with Image.open(path) as image:
                if image.mode not in GRAYSCALE_MODES:
                    return 3
        except OSError:
            continue
    return 1


def decode_image(path: tf.Tensor, channels: int, image_size: tuple[int, int]) -> tf.Tensor:
    """Read and decode one file to float32 pixels (0..255) of `image_size` x `channels`."""
    return decode_encoded_image(tf.io.read_file(path), channels, image_size)


def file_dataset(paths, labels, channels: int, image_size: tuple[int, int]) -> tf.data.Dataset:
    """(pixels, label) pairs decoded from disk in parallel."""
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=str), np.asarray(labels, np.int32)))
    return ds.map(lambda p, y: (decode_image(p, channels, image_size), y), num_parallel_calls=tf.data.AUTOTUNE)


def load_folder(root: Path, config: DataConfig, seed: int):
    """An ImageData over an image folder, split stratified into train/validation/test."""
    from kerascnn.data.datasets import ImageData, _stratified_split, cap_examples, select_classes

    scan = scan_folder(root)
    keep, labels, class_names = select_classes(scan.labels, config.classes, scan.class_names)
    paths = np.asarray(scan.paths)[keep]
    labels = labels[keep]
    train_idx, test_idx = _stratified_split(labels, config.test_split, seed, "test")
    fit_idx, val_idx = _stratified_split(labels[train_idx], config.validation_split, seed, "validation")
    fit_idx = fit_idx[cap_examples(labels[train_idx][fit_idx], config.max_train_examples, seed)]
    split_index = {"train": train_idx[fit_idx], "validation": train_idx[val_idx], "test": test_idx}
    image_size = tuple(config.image_size or DEFAULT_FOLDER_IMAGE_SIZE)
    channels = guess_channels(list(paths))
    splits = {split: file_dataset(paths[idx], labels[idx], channels, image_size) for split, idx in split_index.items()}
    return ImageData(name=str(root), class_names=class_names, input_shape=(*image_size, channels),
                     counts={split: len(idx) for split, idx in split_index.items()}, **splits)
