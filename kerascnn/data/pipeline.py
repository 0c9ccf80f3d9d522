"""The tf.data input pipeline: cache, shuffle, batch, one-hot, augment, prefetch.

Following the tf.data performance guide: cache decoded images before shuffling, batch before
mapping vectorised work (augmentation runs on whole batches), and prefetch at the end.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf


def batches(ds: tf.data.Dataset, batch_size: int, num_classes: int | None = None, training: bool = False,
            seed: int = 42, cache: bool = True, shuffle_buffer: int = 10000,
            augment: Callable | None = None) -> tf.data.Dataset:
    """Batch an unbatched (pixels, label) dataset for Keras.

    Args:
        batch_size: images per batch.
        num_classes: if given, labels become one-hot vectors (what label smoothing needs).
        training: shuffle (seeded, reshuffled each epoch) and apply `augment`.
        cache: keep the decoded elements in memory after the first pass.
        augment: a function (images, labels) -> (images, labels) applied to training batches; one with
            `augmented_batches(ds, batch_size)` (FastAugment) batches and augments the training set itself,
            and its `mixing` (MixUp / CutMix), if not None, maps the batches once their labels are vectors.
    """
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if training and hasattr(augment, "augmented_batches"):  # FastAugment: per-image work on chunks of batches
        ds = augment.augmented_batches(ds, batch_size)
    else:
        ds = ds.batch(batch_size)
        if training and augment is not None:
            ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    if num_classes is not None:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    mixing = getattr(augment, "mixing", None)  # FastAugment's MixUp / CutMix, on one-hot or multi-hot labels
    if training and mixing is not None:
        ds = ds.map(mixing, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
