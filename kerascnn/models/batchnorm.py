"""BatchNormalization moving statistics that match the trained weights, even after a short run.

Keras' BatchNormalization keeps exponential moving averages of each batch's mean and variance,
with `momentum` 0.99 (0.999 in MobileNetV3). After `steps` training steps the averages still hold
`momentum ** steps` of their initial values (mean 0, variance 1): MobileNetV3 after 80 steps keeps
92 % of them, so in inference mode it is at chance while its training accuracy rises.

`stale_batch_norm` says when that is the case; `reestimate_batch_norm` then replaces the averages
by the plain mean over batches of the training data, computed with the trained weights in a pass
in training mode that updates no weight (the recipe of PyTorch's `torch.optim.swa_utils.update_bn`).

`FusedBatchNormalization` is Keras' layer with a faster training step (see its docstring).

Example:
    if stale_batch_norm(model, steps=80):
        reestimate_batch_norm(model, data.train.batch(32))
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# The moving averages count as converged when their initial values weigh less than this.
STALE_INITIAL_WEIGHT = 0.01
DEFAULT_BATCHES = 100


@keras.saving.register_keras_serializable(package="kerascnn")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization whose training step is TensorFlow's fused kernel (FusedBatchNormV3).

    Keras 3 computes batch statistics with separate mean/variance/normalise ops and upcasts
    bfloat16 inputs to float32 and back around them; in the `fashion_mnist` network those
    memory-bound ops and their gradients took about a fifth of a training step on the CPU, and the
    casts ate much of what bfloat16 convolutions gain. The fused kernel (oneDNN on CPU) normalises
    bfloat16 or float32 inputs in one pass, with float32 statistics. Keras has no fused option, so
    the training branch is written here; everything else (inference, weights, config, the moving
    averages' meaning) is Keras' own layer, so exported graphs are unchanged.

    Only 4-D channels-last inputs without a mask take the fused branch; others fall back to Keras.
    """

    def call(self, inputs, training=None, mask=None):
        if not training or mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3) \
                or not self.trainable:
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        offset = tf.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, scale, offset, epsilon=self.epsilon, is_training=True)
        # The kernel returns the unbiased variance; Keras' moving average uses the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        variance = variance * (count - 1) / tf.maximum(count, 2.0)
        momentum = float(self.momentum)
        self.moving_mean.assign(self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype) * (1 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum
                                    + tf.cast(variance, self.moving_variance.dtype) * (1 - momentum))
        return tf.cast(outputs, self.compute_dtype)


def trained_batch_norms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The model's trainable BatchNormalization layers, nested models included: those `fit` ran in
    training mode. Frozen ones (feature_extraction, fine_tune) keep their pre-trained statistics."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.trainable:
                layers.append(layer)
        elif isinstance(layer, keras.Model) and layer.trainable:
            layers.extend(trained_batch_norms(layer))
    return layers


def stale_batch_norm(model: keras.Model, steps: int) -> bool:
    """Whether `steps` training steps left some trained BatchNormalization layer's moving statistics
    weighing their initial values by more than 1 %."""
    return any(float(layer.momentum) ** steps > STALE_INITIAL_WEIGHT for layer in trained_batch_norms(model))


def reestimate_batch_norm(model: keras.Model, batches: tf.data.Dataset, max_batches: int = DEFAULT_BATCHES) -> int:
    """Set each trained BatchNormalization layer's moving mean and variance to their average over the
    first `max_batches` batches of `batches` (images, or (images, labels) pairs). Returns the number
    of batches used (0: nothing to do).

    With momentum 0 a call in training mode leaves each layer's batch statistics in its moving
    variables; they are read after every batch and averaged. No trainable weight changes.
    """
    layers = trained_batch_norms(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    before = [(np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)) for layer in layers]
    sums = [[np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)] for layer in layers]
    step = tf.function(lambda images: model(images, training=True))
    count = 0
    try:
        for layer in layers:
            layer.momentum = 0.0
        for batch in batches.take(max_batches):
            step(batch[0] if isinstance(batch, tuple) else batch)
            for total, layer in zip(sums, layers):
                total[0] += np.asarray(layer.moving_mean)
                total[1] += np.asarray(layer.moving_variance)
            count += 1
    except BaseException:  # interrupted or failed: put the trained statistics back as they were
        count = 0
        for (mean, variance), layer in zip(before, layers):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        raise
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count:
        for (mean, variance), layer in zip(sums, layers):
            layer.moving_mean.assign(mean / count)
            layer.moving_variance.assign(variance / count)
    return count
