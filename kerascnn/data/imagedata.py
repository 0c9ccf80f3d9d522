"""The dataset type every loader returns, and the split and selection helpers the loaders share.

`ImageData` is what training, evaluation and export take: three unbatched tf.data splits of
(raw pixels float32 HWC 0..255, int32 label), the class names and the input shape. The helpers
(stratified, seeded splits with scikit-learn; class selection; stratified caps) live here, below
every loader, so that the arrays, folder and TFDS sources share one implementation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split

from kerascnn.errors import DataError


@dataclasses.dataclass
class ImageData:
    """A dataset split three ways; every element is (pixels float32 HWC 0..255, label int32).

    Attributes:
        name: the dataset as the user named it.
        class_names: label index -> name.
        input_shape: (height, width, channels) of the images the model sees.
        train, validation, test: unbatched tf.data datasets.
        counts: number of images in each split.
        arrays: the numpy arrays behind each split for in-memory sources (None for streamed ones).
        files: the image paths and labels behind each split for image folders (None otherwise).
        folder_scan: for image folders and label tables, what the scan found and skipped (a
            `FolderScan`; None otherwise).
        multi_label: labels are float32 multi-hot rows (several classes an image) instead of int32
            class indices; the model then ends in sigmoids (default False).
    """

    name: str
    class_names: list[str]
    input_shape: tuple[int, int, int]
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    counts: dict[str, int]
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    files: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    folder_scan: "FolderScan | None" = None  # kerascnn.data.folder.FolderScan
    multi_label: bool = False

    def __repr__(self) -> str:  # the dataclass default prints every array and file list
        return (f"ImageData(name={self.name!r}, classes={len(self.class_names)}, input_shape={self.input_shape}, "
                f"counts={self.counts})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stratified_split(n_or_labels, fraction: float, seed: int, what: str):
    """Indices (kept, held_out) with `fraction` held out, stratified by label (scikit-learn)."""
    labels = np.asarray(n_or_labels)
    index = np.arange(len(labels))
    try:
        return train_test_split(index, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        counts = np.bincount(labels)
        raise DataError(f"cannot split off a stratified {what} set ({exc}); the smallest class has "
                        f"{counts[counts > 0].min()} images: add images or lower the split fraction") from None


def select_classes(labels: np.ndarray, classes: tuple[int, ...] | None, class_names: list[str]):
    """Boolean mask of kept examples, new labels 0..k-1 in `classes` order, and their names."""
    if classes is None:
        return np.ones(len(labels), bool), labels, class_names
    for c in classes:
        if c >= len(class_names):
            raise DataError(f"data.classes has index {c} but the dataset has {len(class_names)} classes "
                            f"(0..{len(class_names) - 1})")
    remap = np.full(max(len(class_names), int(labels.max()) + 1), -1)
    remap[list(classes)] = np.arange(len(classes))
    new_labels = remap[labels]
    return new_labels >= 0, new_labels, [class_names[c] for c in classes]


def cap_examples(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most `limit` examples, drawn stratified and seeded."""
    index = np.arange(len(labels))
    if limit is None or limit >= len(labels):
        return index
    kept, _ = train_test_split(index, train_size=limit, stratify=labels, random_state=seed)
    return np.sort(kept)


def check_classes(labels: np.ndarray, class_names: list[str], name: str) -> None:
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(f"dataset {name!r} has {len(present)} class with images; a classifier needs at least 2")
