"""BatchNormalization statistics after short runs: when they are stale, and their re-estimation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerascnn.models.batchnorm import FusedBatchNormalization, reestimate_batch_norm, stale_batch_norm, trained_batch_norms


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


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_trains_like_keras_batch_norm(policy):
    """Same outputs, moving statistics and gradients as Keras' layer: only the kernel differs."""
    images = tf.constant(np.random.default_rng(0).normal(2, 3, (8, 5, 5, 6)), "float32")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        ours, keras_layer = FusedBatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    finally:
        keras.config.set_dtype_policy(previous)
    for layer in (ours, keras_layer):
        layer.build(images.shape)
    ours.set_weights([weights + 0.1 for weights in keras_layer.get_weights()])
    keras_layer.set_weights(ours.get_weights())
    gradients = []
    for layer in (ours, keras_layer):
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = layer(images, training=True)
            loss = tf.reduce_sum(tf.cast(outputs, "float32") ** 2)
        gradients.append(tape.gradient(loss, [images, layer.gamma, layer.beta]))
        assert outputs.dtype == keras_layer.compute_dtype
    for ours_weight, keras_weight in zip(ours.get_weights(), keras_layer.get_weights()):
        np.testing.assert_allclose(ours_weight, keras_weight, rtol=1e-5, atol=1e-6)  # moving mean and variance
    for ours_gradient, keras_gradient in zip(*gradients):
        np.testing.assert_allclose(ours_gradient, keras_gradient, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ours(images, training=False), keras_layer(images, training=False), atol=1e-6)


def test_fused_batch_norm_round_trips_through_a_keras_file(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 3)), FusedBatchNormalization(momentum=0.8)])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[0], FusedBatchNormalization) and loaded.layers[0].momentum == 0.8
