"""Class imbalance: per-class loss weights and balanced (oversampled) training batches, in tf.data.

`class_weights` turns `train.class_weight` into one weight a class: "balanced" is scikit-learn's
`compute_class_weight` (n_samples / (n_classes * count)), a table names classes. `with_class_weights`
adds them to batches as Keras sample weights, `(images, one-hot labels, weight of each image's class)`,
which is what `model.fit(class_weight=...)` does, and also works under kerascnn's custom
distributed loop. `balanced` draws every class equally often (`data.sampling = "balanced"`) with
`tf.data.Dataset.sample_from_datasets` over one repeated, shuffled stream per class, so rare classes
are oversampled; an epoch keeps the training split's size.

Example:
    weights = class_weights(labels, "balanced", class_names)   # e.g. [0.56, 4.9, 0.56]
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from kerascnn.errors import ConfigError, suggest


def class_weights(labels: np.ndarray, spec: str | Mapping[str, float], class_names: list[str]) -> np.ndarray:
    """One loss weight per class from integer `labels`: spec "balanced" (scikit-learn's formula) or
    {class name: weight} (classes not named keep weight 1)."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels).astype(int)
    if spec == "balanced":
        present = np.unique(labels)
        weights = np.ones(len(class_names))
        weights[present] = compute_class_weight("balanced", classes=present, y=labels)
        return weights
    weights = np.ones(len(class_names))
    for name, weight in spec.items():
        if name not in class_names:
            raise ConfigError(f"train.class_weight names class {name!r}, which this dataset does not have"
                              f"{suggest(name, class_names)}; classes: {', '.join(class_names)}")
        weights[class_names.index(name)] = float(weight)
    return weights


def with_class_weights(batches: tf.data.Dataset, weights: np.ndarray) -> tf.data.Dataset:
    """(images, one-hot labels) batches -> (images, labels, sample weights): each image weighs its class's weight."""
    table = tf.constant(np.asarray(weights, np.float32))
    return batches.map(lambda x, y: (x, y, tf.gather(table, tf.argmax(y, axis=-1))),
                       num_parallel_calls=tf.data.AUTOTUNE)


def balanced(ds: tf.data.Dataset, labels: np.ndarray, seed: int = 42, cache: bool = True) -> tf.data.Dataset:
    """An unbatched (image, label) stream of `len(labels)` elements an epoch drawing every present class with
    equal probability: oversampling, since a rare class's images repeat within an epoch.

    Args:
        ds: the unbatched training split.
        labels: its integer labels, in order (for the counts).
        seed: seed of the draws and the per-class shuffles.
        cache: cache the decoded images before filtering (each class stream reads the cache).
    """
    labels = np.asarray(labels).astype(int)
    ds = ds.cache() if cache else ds
    present = np.unique(labels)
    streams = [ds.filter(lambda x, y, k=int(k): tf.equal(tf.cast(y, tf.int64), k))
               .shuffle(int((labels == k).sum()), seed=seed + int(k), reshuffle_each_iteration=True).repeat()
               for k in present]
    mixed = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(present)] * len(present), seed=seed,
                                                 rerandomize_each_iteration=True)
    return mixed.take(len(labels))


def split_labels(data, split: str = "train") -> np.ndarray:
    """The labels of one split of an ImageData, in order: from its arrays or files, else read from the stream."""
    for source in (data.arrays, data.files):
        if source is not None:
            return np.asarray(source[split][1])
    return np.concatenate([y for _, y in getattr(data, split).batch(1024).as_numpy_iterator()])


def counts_per_class(data) -> dict[str, dict[str, int]]:
    """{split: {class name: images}} of an ImageData (for multi-label data: images carrying each class)."""
    counts = {}
    for split in ("train", "validation", "test"):
        labels = split_labels(data, split)
        per_class = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels.astype(int),
                                                                            minlength=data.num_classes)
        counts[split] = {name: int(n) for name, n in zip(data.class_names, per_class)}
    return counts
