"""BatchNormalization statistics after short runs: when they are stale, and their re-estimation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerascnn.models.batchnorm import reestimate_batch_norm, stale_batch_norm, trained_batch_norms


def _model(momentum):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="features")(inputs)
    x = keras.layers.BatchNormalization(momentum=momentum, name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="out")(x))


def test_stale_after_few_steps_of_a_high_momentum():
    assert stale_batch_norm(_model(0.999), steps=80)  # 0.999 ** 80 = 0.92 of the initial values left
    assert not stale_batch_norm(_model(0.99), steps=1000)  # 0.99 ** 1000 = 4e-5
    frozen = _model(0.999)
    frozen.get_layer("bn").trainable = False  # feature_extraction / fine_tune keep pre-trained statistics
    assert trained_batch_norms(frozen) == [] and not stale_batch_norm(frozen, steps=1)


def test_reestimation_sets_the_average_batch_statistics_and_no_weight_changes():
    model = _model(0.999)
    images = np.random.default_rng(0).normal(5.0, 3.0, (96, 4)).astype("float32")
    weights = [np.asarray(w) for w in model.trainable_weights]
    assert reestimate_batch_norm(model, tf.data.Dataset.from_tensor_slices(images).batch(32)) == 3
    features = np.asarray(model.get_layer("features")(images)).reshape(3, 32, 3)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(np.asarray(bn.moving_mean), features.mean(axis=1).mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), features.var(axis=1).mean(axis=0), rtol=1e-3)
    assert bn.momentum == 0.999
    for before, after in zip(weights, model.trainable_weights):
        np.testing.assert_array_equal(before, np.asarray(after))


def test_an_interrupted_reestimation_restores_the_statistics():
    model = _model(0.999)
    bn = model.get_layer("bn")

    def batches():
        yield np.full((8, 4), 7.0, "float32")  # moves the statistics, then the data source fails
        raise ValueError("unreadable batch")

    dataset = tf.data.Dataset.from_generator(batches, output_signature=tf.TensorSpec((8, 4), tf.float32))
    with pytest.raises(tf.errors.OpError):
        reestimate_batch_norm(model, dataset)
    np.testing.assert_array_equal(np.asarray(bn.moving_mean), np.zeros(3))
    np.testing.assert_array_equal(np.asarray(bn.moving_variance), np.ones(3))
    assert bn.momentum == 0.999
