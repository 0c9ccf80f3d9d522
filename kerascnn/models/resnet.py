"""`resnet_small`: a residual BatchNorm network for small images, with its training-time and test-time flips.

The network keeps the expensive full-resolution part to one cheap convolution (the stem) and does
its work at half resolution and below, which is what makes the `fashion_mnist` preset fit in ten
minutes on two CPU cores. Augmentation that only acts in training (random flips and shifts) and
test-time flip averaging live inside the model, so every exported artifact behaves the same.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from kerascnn.errors import ConfigError
from kerascnn.models.batchnorm import FusedBatchNormalization
from kerascnn.models.registry import register_model


@keras.saving.register_keras_serializable(package="kerascnn")
class TrainingOnly(layers.Wrapper):
    """Applies the wrapped layer (e.g. a Keras random augmentation layer) in training only.

    Keras' random layers still trace their random ops at inference, which TFLite cannot convert
    (keras-team/keras#19108); behind this Python-level branch the inference graph has none of them.
    """

    def call(self, inputs, training=False):
        return self.layer(inputs, training=True) if training else inputs

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="kerascnn")
class TestTimeFlip(layers.Layer):
    """At inference, appends the horizontally mirrored images to the batch; in training, passes through.

    Paired with `FlipAverage` at the output, the model predicts the mean of an image and its mirror.
    """

    def call(self, images, training=False):
        if training:
            return images
        return ops.concatenate([images, ops.flip(images, axis=2)], axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="kerascnn")
class FlipAverage(layers.Layer):
    """At inference, averages the predictions for the two halves of the batch `TestTimeFlip` made."""

    def call(self, probabilities, training=False):
        if training:
            return probabilities
        half = ops.shape(probabilities)[0] // 2
        return (probabilities[:half] + probabilities[half:]) / 2

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="kerascnn")
class ProgressiveResize(layers.Layer):
    """Progressive resizing (fastai; EfficientNetV2's progressive learning): the first epochs train on
    downscaled images, which costs fewer FLOPs (20x20 instead of 28x28: about half); inference and the
    last epochs are at full size.

    `schedule` is [[size, epochs], ...]: size x size images for that many epochs, in order, then full
    size. `kerascnn.training` calls `set_epoch` at every epoch start; the size is a variable, so the
    same traced training step serves every size (and a resumed run picks up where it was).
    """

    def __init__(self, schedule, **kwargs):
        super().__init__(**kwargs)
        try:
            self.schedule = [[int(size), int(epochs)] for size, epochs in schedule]
        except (TypeError, ValueError):
            self.schedule = []
        if not self.schedule or any(size < 4 or epochs < 1 for size, epochs in self.schedule):
            raise ConfigError(f"model option progressive_resizing must be [[size, epochs], ...] with sizes >= 4 and "
                              f"epochs >= 1, e.g. [[20, 4]], got {schedule!r}")
        self.size = self.add_weight(name="size", shape=(), dtype="int32", initializer="zeros", trainable=False)
        self.full_size = None

    def build(self, input_shape):
        self.full_size = (int(input_shape[1]), int(input_shape[2]))

    def size_at(self, epoch: int) -> int | None:
        """The training image size of `epoch` (0-based), or None for full size."""
        for size, epochs in self.schedule:
            if epoch < epochs:
                return size
            epoch -= epochs
        return None

    def pixel_fraction(self, epoch: int) -> float:
        """The share of full-size pixels `epoch` trains on; every conv's FLOPs scale with it (exactly where
        the size and the full size halve alike through the network's poolings, e.g. 20 or 24 for 28)."""
        size = self.size_at(epoch)
        return 1.0 if size is None else size * size / (self.full_size[0] * self.full_size[1])

    def set_epoch(self, epoch: int) -> None:
        self.size.assign(self.size_at(epoch) or 0)

    def call(self, images, training=False):
        if not training:
            return images
        size = self.size.value

        def resized():
            return tf.cast(tf.image.resize(images, tf.stack([size, size]), antialias=True), images.dtype)

        return tf.cond(size > 0, resized, lambda: images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "schedule": self.schedule}


def progressive_resizes(model: keras.Model) -> list[ProgressiveResize]:
    """The model's `ProgressiveResize` layers, nested models included (none for most models)."""
    return [layer for layer in model._flatten_layers() if isinstance(layer, ProgressiveResize)]


def _conv_bn_relu(x, filters: int, momentum: float, name: str, strides: int = 1, fused: bool = True):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, kernel_initializer="he_normal",
                      name=f"{name}_conv")(x)
    batch_norm = FusedBatchNormalization if fused else layers.BatchNormalization
    x = batch_norm(momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _check_options(stem, stem_stride, widths, blocks, dropout, bn_momentum, random_shift) -> None:
    if stem <= 0 or not widths or any(w <= 0 for w in widths):
        raise ConfigError(f"resnet_small needs positive stem and widths, got stem={stem}, widths={list(widths)}")
    if stem_stride not in (1, 2):
        raise ConfigError(f"model option stem_stride must be 1 or 2, got {stem_stride}")
    if len(blocks) != len(widths) or any(b < 0 for b in blocks):
        raise ConfigError(f"resnet_small blocks must give a count >= 0 for each of the {len(widths)} widths, "
                          f"got {list(blocks)}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model option dropout must be in [0, 1), got {dropout}")
    if not 0.0 <= bn_momentum < 1.0:
        raise ConfigError(f"model option bn_momentum must be in [0, 1), got {bn_momentum}")
    if not 0.0 <= random_shift < 0.5:
        raise ConfigError(f"model option random_shift must be a fraction of the size in [0, 0.5), got {random_shift}")


@register_model("resnet_small")
def resnet_small(input_shape, num_classes, stem=32, stem_stride=1, widths=(64, 128), blocks=(1, 1), dropout=0.0,
                 bn_momentum=0.9, random_flip=False, random_shift=0.0, test_time_flip=False, fused_batch_norm=True,
                 progressive_resizing=()):
    """Residual BatchNorm CNN: a stem, then one stage per width, each at half the resolution of the last.

    The stem is a 3x3 conv-BN-ReLU at full resolution (`stem_stride=1`) or strided (`stem_stride=2`,
    cheaper: nothing else runs at full resolution). Each stage first halves the resolution with a
    2x2 max-pool (while the map is at least 2 px; the first stage after a strided stem skips it),
    widens with a 3x3 conv-BN-ReLU and adds `blocks` residual blocks of two 3x3 conv-BN-ReLU.
    Global average pooling, dropout and a float32 softmax follow.

    Args:
        stem: filters of the 3x3 stem convolution (default 32).
        stem_stride: 1 (full-resolution stem) or 2 (strided stem) (default 1).
        widths: filters of each stage (default (64, 128)).
        blocks: residual blocks per stage (default (1, 1)).
        dropout: dropout rate before the classifier (default 0.0).
        bn_momentum: BatchNormalization momentum; 0.9 lets the moving statistics catch up within
            short trainings, where Keras' 0.99 leaves them far off (default 0.9).
        random_flip: mirror training images left-right at random (default False).
        random_shift: shift training images by whole pixels, up to this fraction of height and width
            (default 0.0).
        test_time_flip: predict the mean of each image and its mirror (default False).
        fused_batch_norm: train BatchNorm with TensorFlow's fused kernel (`FusedBatchNormalization`,
            same results, faster step); False uses Keras' own layer (default True).
        progressive_resizing: [[size, epochs], ...]: train the first epochs on size x size images
            (`ProgressiveResize`), then at full size; the run's `train_flops` counts the smaller
            epochs at their size (default none).

    Example:
        model = build_model("resnet_small", (28, 28, 1), 10, random_flip=True, test_time_flip=True)
    """
    widths, blocks = tuple(widths), tuple(blocks)
    _check_options(stem, stem_stride, widths, blocks, dropout, bn_momentum, random_shift)
    images = keras.Input(input_shape, name="images")
    x = images
    if random_flip:
        x = TrainingOnly(layers.RandomFlip("horizontal"), name="random_flip")(x)
    if random_shift:
        # Nearest sampling shifts by whole pixels: training images stay as sharp as the test images
        # (bilinear sampling blurs every shifted image, a train/test mismatch that costs accuracy).
        x = TrainingOnly(layers.RandomTranslation(random_shift, random_shift, fill_mode="constant",
                                                  interpolation="nearest"), name="random_shift")(x)
    if progressive_resizing:
        x = ProgressiveResize(progressive_resizing, name="progressive_resize")(x)
    if test_time_flip:
        x = TestTimeFlip(name="test_time_flip")(x)
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    height, width = input_shape[:2]
    x = _conv_bn_relu(x, stem, bn_momentum, "stem", strides=stem_stride, fused=fused_batch_norm)
    for stage, (filters, count) in enumerate(zip(widths, blocks)):
        if stage == 0 and stem_stride == 2:  # the strided stem already halved the resolution
            height, width = -(-height // 2), -(-width // 2)
        elif height >= 2 and width >= 2:
            x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
            height, width = height // 2, width // 2
        x = _conv_bn_relu(x, filters, bn_momentum, f"stage{stage}_widen", fused=fused_batch_norm)
        for block in range(count):
            name = f"stage{stage}_block{block}"
            shortcut = x
            x = _conv_bn_relu(x, filters, bn_momentum, f"{name}_a", fused=fused_batch_norm)
            x = _conv_bn_relu(x, filters, bn_momentum, f"{name}_b", fused=fused_batch_norm)
            x = layers.Add(name=f"{name}_add")([shortcut, x])
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    probabilities = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    if test_time_flip:
        probabilities = FlipAverage(name="flip_average", dtype="float32")(probabilities)
    return keras.Model(images, probabilities, name="resnet_small")
