"""The input a grayscale model's TFLite files take: an RGB image, converted to gray inside the graph.

MediaPipe Tasks' `ImageClassifier` (like most on-device image pipelines) only feeds 3- or 4-channel
images, so a model trained on gray images gets, in its `.tflite` files, a first step that turns RGB
pixels into gray ones. `export.tflite_gray_input = true` keeps the 1-channel input instead.

The weights are ITU-R BT.601's luma coefficients, 0.299 / 0.587 / 0.114, which sum to exactly 1:
a gray image repeated into three channels (what `kerascnn predict` and the export's parity check
feed these files) comes back as the same gray pixels, so the float file still matches the model to
float rounding. `tf.image.rgb_to_grayscale`, which kerascnn's decoder uses on colour files, has the
same coefficients rounded to 4 digits (0.2989, summing to 0.9999): a colour image converted inside
the file and by the decoder differs by under 0.03 of a pixel level.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kerascnn.models.registry import model_input_shape

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def takes_rgb_in_tflite(model: keras.Model, gray_input: bool) -> bool:
    """Whether the model's TFLite files get the RGB-to-gray first step: a 1-channel model, unless
    `gray_input` (export.tflite_gray_input) keeps its own input."""
    return model_input_shape(model)[2] == 1 and not gray_input


def write_rgb_input_saved_model(model: keras.Model, path: str) -> None:
    """A SavedModel whose `serving_default` takes N x H x W x 3 raw pixels, converts them to gray (one
    1x1 convolution with `GRAY_WEIGHTS`, an op every TFLite kernel set has in float and int8) and
    returns the 1-channel model's probabilities."""
    height, width, _ = model_input_shape(model)
    kernel = tf.constant(GRAY_WEIGHTS, tf.float32, shape=(1, 1, 3, 1))
    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")])
    def serving_default(images):
        gray = tf.nn.conv2d(images, kernel, strides=1, padding="VALID")
        return model(gray, training=False)

    archive.add_endpoint("serving_default", serving_default)
    archive.write_out(path, verbose=False)
