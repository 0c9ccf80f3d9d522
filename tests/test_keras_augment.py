"""Keras 3's own batch augmentation in `[augment]`: MixUp and CutMix mix training images and their labels
exactly as they claim (the image mix and the label mix agree), RandAugment changes each training image within
the pixel range, validation batches are never touched, bad values are one-line errors, a run trains and exports
without any of it in the model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kerascnn.config import AugmentConfig, load_config
from kerascnn.data.augment import make_augment
from kerascnn.data.pipeline import batches
from kerascnn.errors import ConfigError
from kerascnn.runner import run

CLASSES = 10
SIZE = 8


def class_images(count: int = 64, size: int = SIZE):
    """Each image is one constant grey level that names its class (class k: 20 k + 10), so a pixel says which
    image of the batch it came from."""
    labels = (np.arange(count) % CLASSES).astype(np.int32)
    images = np.broadcast_to((20.0 * labels + 10)[:, None, None, None], (count, size, size, 1)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((images, labels))


def training_batches(config: AugmentConfig, training: bool = True, size: int = SIZE):
    ds = batches(class_images(size=size), 32, CLASSES, training=training, shuffle_buffer=64, augment=make_augment(config, 3))
    images, labels = zip(*ds.as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels)


def test_mixup_blends_each_image_with_the_weights_of_its_label():
    images, labels = training_batches(AugmentConfig(mixup=0.4))
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
    mixed = (labels > 1e-6).sum(axis=1) == 2
    assert mixed.sum() >= len(labels) // 2  # Beta(0.4, 0.4) weights are rarely exactly 0 or 1
    grey_of_class = 20.0 * np.arange(CLASSES) + 10
    # the blended grey level is the label-weighted mean of the two images' grey levels
    np.testing.assert_allclose(images[:, 0, 0, 0], labels @ grey_of_class, rtol=1e-4, atol=1e-3)
    assert np.ptp(images.reshape(len(images), -1), axis=1).max() < 1e-3  # blended, not pasted


def test_cutmix_pastes_a_box_of_another_image_and_mixes_the_labels_by_its_area():
    size = 28
    images, labels = training_batches(AugmentConfig(cutmix=1.0), size=size)
    grey_of_class = (20.0 * np.arange(CLASSES) + 10).tolist()
    # Keras weighs the labels by the box's area in fractional corners, the pixels it pastes are whole: a
    # share may differ from its weight by one row and one column of the box, (2 size + 1) / size^2 at most.
    border = (2 * size + 1) / size ** 2
    differences, pasted = [], 0
    for image, label in zip(images[..., 0], labels):
        levels, counts = np.unique(image, return_counts=True)
        assert len(levels) <= 2  # the image's own pixels and the box's
        shares = np.zeros(CLASSES)
        for level, count in zip(levels, counts):
            shares[grey_of_class.index(level)] = count / image.size
        assert np.abs(label - shares).max() <= border, (shares, label)
        differences.append(np.abs(label - shares).max())
        pasted += len(levels) == 2
    assert pasted >= len(labels) // 4 and np.mean(differences) < border / 2


def test_mixup_and_cutmix_together_give_each_batch_one_of_them():
    ds = batches(class_images(320), 32, CLASSES, training=True, shuffle_buffer=320,
                 augment=make_augment(AugmentConfig(mixup=0.4, cutmix=1.0), 5))
    grey_of_class = 20.0 * np.arange(CLASSES) + 10
    kinds = set()
    for images, labels in ds.as_numpy_iterator():
        flat = images.reshape(len(images), -1)
        blended = np.abs(flat[:, :1] - grey_of_class).min(axis=1) > 1e-2  # a grey level between two classes'
        boxed = np.ptp(flat, axis=1) > 1e-3
        assert not (blended.any() and boxed.any())  # never both in one batch
        kinds.add("mixup" if blended.any() else "cutmix" if boxed.any() else "none")
    assert {"mixup", "cutmix"} <= kinds


def test_rand_augment_changes_training_images_within_the_pixel_range_and_keeps_labels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 16, 16, 1)).astype(np.float32)
    labels = (np.arange(64) % CLASSES).astype(np.int32)
    source = tf.data.Dataset.from_tensor_slices((images, labels))
    augment = make_augment(AugmentConfig(rand_augment=2, rand_augment_factor=0.8), 1)
    out_images, out_labels = zip(*batches(source, 32, CLASSES, training=True, shuffle_buffer=1,
                                          augment=augment).as_numpy_iterator())
    out_images, out_labels = np.concatenate(out_images), np.concatenate(out_labels)
    assert out_images.shape == images.shape and out_images.dtype == np.float32
    assert out_images.min() >= 0 and out_images.max() <= 255
    np.testing.assert_array_equal(out_labels.argmax(axis=1), labels)  # labels untouched, one-hot
    assert not np.allclose(out_images, images)
    assert augment.augment_images(images[:4]).shape == (4, 16, 16, 1)  # the preview's path


@pytest.mark.parametrize("config", [AugmentConfig(mixup=0.4), AugmentConfig(cutmix=1.0), AugmentConfig(rand_augment=2)])
def test_validation_batches_are_never_augmented(config):
    images, labels = training_batches(config, training=False)
    expected_images, expected_labels = zip(*batches(class_images(), 32, CLASSES).as_numpy_iterator())
    np.testing.assert_array_equal(images, np.concatenate(expected_images))
    np.testing.assert_array_equal(labels, np.concatenate(expected_labels))


@pytest.mark.parametrize("override, named", [
    ("augment.mixup=-0.2", "augment.mixup must be a Beta distribution parameter > 0 (0: off)"),
    ("augment.cutmix=-1", "augment.cutmix must be in (0, 1] (0: off)"),
    ("augment.cutmix=2", "augment.cutmix must be in (0, 1] (0: off)"),
    ("augment.rand_augment=-1", "augment.rand_augment must be a number of operations >= 0"),
    ("augment.rand_augment_factor=0", "augment.rand_augment_factor must be in (0, 1]"),
    ("augment.rand_augment_factor=1.5", "augment.rand_augment_factor must be in (0, 1]"),
    ("augment.mix_up=0.2", "did you mean 'mixup'"),
])
def test_bad_values_are_one_line_errors(override, named):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert named in str(error.value) and "\n" not in str(error.value)


def test_the_legacy_backend_refuses_the_keras_layers_up_front():
    with pytest.raises(ConfigError, match="set augment.backend = 'fast'"):
        load_config(overrides=["augment.backend=\"legacy\"", "augment.mixup=0.2"])


def test_a_run_with_mixup_cutmix_and_rand_augment_trains_and_exports_without_them(tmp_path):
    config = load_config(overrides=[f"run.output=\"{tmp_path}\"", "run.name=\"mixed\"", "train.epochs=2",
                                    "train.learning_rate=0.003",
                                    "train.verbose=0", "train.tensorboard=false", "model.name=\"mlp\"",
                                    "model.options={hidden=[32]}", "export.formats=[\"keras\", \"tflite\"]",
                                    "export.tflite=[\"float32\"]", "augment.mixup=0.2", "augment.cutmix=1.0",
                                    "augment.rand_augment=1"])
    result = run(config)
    assert result.manifest["epochs_run"] == 2 and result.manifest["test_metrics"]["accuracy"] > 0.3  # 10 classes
    assert not [layer for layer in result.model._flatten_layers() if "Mix" in type(layer).__name__
                or "RandAugment" in type(layer).__name__]
    for artifact in ("model.keras", "model.tflite"):
        assert result.manifest["artifacts"][artifact]["parity"]["top1_agreement"] == 1.0
