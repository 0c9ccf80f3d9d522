"""Class imbalance: class weights change the loss as computed by hand; balanced sampling balances batches."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerascnn.config import TrainConfig
from kerascnn.data.datasets import from_arrays
from kerascnn.data.pipeline import batches
from kerascnn.data.sampling import balanced, class_weights, with_class_weights
from kerascnn.errors import ConfigError
from kerascnn.models import build_model
from kerascnn.training import compile_model, train


def _imbalanced(counts=(60, 6, 30), seed=0):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    images = (rng.uniform(0, 255, (len(labels), 4, 4, 1)) * 0.3 + labels[:, None, None, None] * 60).astype(np.float32)
    return images, labels


def test_balanced_weights_are_scikit_learns_and_a_table_names_classes():
    _, labels = _imbalanced()
    weights = class_weights(labels, "balanced", ["a", "b", "c"])
    np.testing.assert_allclose(weights, len(labels) / (3 * np.bincount(labels)))
    np.testing.assert_allclose(class_weights(labels, {"b": 5.0}, ["a", "b", "c"]), [1.0, 5.0, 1.0])
    with pytest.raises(ConfigError, match="class 'bb'.*did you mean 'b'"):
        class_weights(labels, {"bb": 2.0}, ["a", "b", "c"])


def test_class_weights_change_the_loss_as_computed_by_hand():
    images, labels = _imbalanced()
    keras.utils.set_random_seed(0)
    model = build_model("mlp", (4, 4, 1), 3, hidden=(8,))
    compile_model(model, TrainConfig(), steps_per_epoch=1)
    weights = class_weights(labels, "balanced", ["a", "b", "c"])
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    plain = batches(ds, len(labels), num_classes=3, cache=False)
    weighted_loss = model.evaluate(with_class_weights(plain, weights), verbose=0, return_dict=True)["loss"]
    plain_loss = model.evaluate(plain, verbose=0, return_dict=True)["loss"]
    probabilities = np.asarray(model(images, training=False))
    per_image = -np.log(probabilities[np.arange(len(labels)), labels])
    np.testing.assert_allclose(plain_loss, per_image.mean(), rtol=1e-4)
    # Keras' sum-over-batch-size reduction: sum of weight x loss over the number of images.
    np.testing.assert_allclose(weighted_loss, (weights[labels] * per_image).sum() / len(labels), rtol=1e-4)
    assert abs(weighted_loss - plain_loss) > 1e-3


def test_balanced_sampling_gives_balanced_batches():
    images, labels = _imbalanced((80, 4, 16))
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    drawn = np.concatenate([y for _, y in balanced(ds, labels, seed=1).batch(50).as_numpy_iterator()])
    assert len(drawn) == len(labels)  # an epoch keeps the split's size
    counts = np.bincount(drawn, minlength=3)
    assert counts.min() >= 20, counts  # each class ~1/3 of 100 draws; the rare one (4 images) oversampled
    again = np.concatenate([y for _, y in balanced(ds, labels, seed=1).batch(50).as_numpy_iterator()])
    np.testing.assert_array_equal(drawn, again)  # seeded


def test_training_with_class_weight_and_sampling():
    images, labels = _imbalanced()
    data = from_arrays(images, labels, class_names=["a", "b", "c"])
    keras.utils.set_random_seed(0)
    model = build_model("mlp", data.input_shape, 3, hidden=(8,))
    result = train(model, data, TrainConfig(epochs=1, verbose=0, class_weight="balanced", tensorboard=False),
                   sampling="balanced")
    assert np.isfinite(result.history["loss"]).all()


def test_class_weight_and_sampling_settings_are_checked():
    from kerascnn.config import load_config

    assert load_config(overrides=["train.class_weight=balanced"]).train.class_weight == "balanced"
    assert load_config(overrides=["train.class_weight={cat = 2.0}"]).train.class_weight == {"cat": 2.0}
    with pytest.raises(ConfigError, match="did you mean 'balanced'"):
        load_config(overrides=["train.class_weight=balancd"])
    with pytest.raises(ConfigError, match="data.sampling: unknown sampling 'balance'.*did you mean 'balanced'"):
        load_config(overrides=["data.sampling=balance"])
    with pytest.raises(ConfigError, match="weights >= 0"):
        load_config(overrides=["train.class_weight={cat = -1}"])
