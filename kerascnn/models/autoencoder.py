"""Convolutional autoencoder: an encoder of strided convolutions, a decoder of transpose convolutions.

Pixels in, pixels out: the model takes raw pixels (0..255, NHWC) and returns its reconstruction in
the same range, so every artifact keeps kerascnn's "raw pixels in" contract. Its top-level layers are
the encoder's convolutional part (a functional model named `backbone`, as kerascnn's transfer models
name theirs), an optional dense bottleneck (`latent`), and the decoder (`decoder`). Because the
encoder is named `backbone`, a run's model.keras serves as `--backbone autoencoder --weights
RUN/model.keras` for a classifier (the notes' "same logic as transfer learning").

Example:
    model = build_model("autoencoder", (28, 28, 1), latent_dim=32)
"""

from __future__ import annotations

import math

import keras

from kerascnn.errors import ConfigError
from kerascnn.models.registry import register_model

BACKBONE_LAYER = "backbone"  # the name kerascnn.models.transfer looks for in a saved model
LATENT_LAYER = "latent"
DECODER_LAYER = "decoder"


def _check_filters(filters) -> tuple[int, ...]:
    filters = tuple(int(f) for f in filters)
    if not filters or min(filters) <= 0:
        raise ConfigError(f"autoencoder filters must be one or more positive integers, got {list(filters)}")
    return filters


def autoencoder_backbone(include_top=False, weights=None, input_shape=None, filters=(32, 64), kernel_size=3):
    """The encoder's convolutional part: rescale 0..255 to 0..1, then one stride-2 ReLU convolution a filter.

    The signature is that of a `keras.applications` constructor, so the backbone table can build it;
    its weights come from an autoencoder run's model.keras (`weights=PATH`), never from ImageNet.
    """
    filters = _check_filters(filters)
    images = keras.Input(input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(images)
    for i, width in enumerate(filters):
        x = keras.layers.Conv2D(width, kernel_size, strides=2, padding="same", activation="relu",
                                name=f"encode_{i}")(x)
    return keras.Model(images, x, name=BACKBONE_LAYER)


def _decoder(code_shape, feature_shape, channels: int, filters, kernel_size: int) -> keras.Model:
    """Transpose convolutions mirroring the encoder, ending in a sigmoid scaled back to 0..255 pixels."""
    code = keras.Input(code_shape, name="code")
    x = code
    if tuple(code_shape) != tuple(feature_shape):  # a dense bottleneck: project back to the feature map
        x = keras.layers.Dense(math.prod(feature_shape), activation="relu", name="expand")(x)
        x = keras.layers.Reshape(feature_shape, name="unflatten")(x)
    for i, width in enumerate(reversed(filters)):
        x = keras.layers.Conv2DTranspose(width, kernel_size, strides=2, padding="same", activation="relu",
                                         name=f"decode_{i}")(x)
    x = keras.layers.Conv2D(channels, kernel_size, padding="same", activation="sigmoid", name="reconstruct")(x)
    pixels = keras.layers.Rescaling(255.0, name="to_pixels")(x)
    return keras.Model(code, pixels, name=DECODER_LAYER)


@register_model("autoencoder", task="autoencode")
def autoencoder(input_shape, filters=(32, 64), latent_dim=None, kernel_size=3):
    """Convolutional autoencoder taking and returning raw pixels (0..255).

    Args:
        input_shape: (height, width, channels); height and width must be multiples of 2 ** len(filters).
        filters: filters of each stride-2 encoder convolution; the decoder mirrors them (default (32, 64)).
        latent_dim: size of a dense bottleneck after the convolutions; None keeps the last feature map
            as the code (default None).
        kernel_size: side of every convolution kernel (default 3).
    """
    filters = _check_filters(filters)
    height, width, channels = input_shape
    stride = 2 ** len(filters)
    if height % stride or width % stride:
        raise ConfigError(f"the autoencoder halves the image {len(filters)} times, so its sides must be multiples "
                          f"of {stride}, got {height}x{width}; set data.image_size (e.g. --image-size "
                          f"{math.ceil(height / stride) * stride}) or use fewer filters")
    if latent_dim is not None and int(latent_dim) <= 0:
        raise ConfigError(f"latent_dim must be a positive integer or None, got {latent_dim}")
    images = keras.Input(input_shape, name="images")
    backbone = autoencoder_backbone(input_shape=input_shape, filters=filters, kernel_size=kernel_size)
    features = backbone(images)
    feature_shape = tuple(features.shape[1:])
    code = features
    if latent_dim is not None:
        code = keras.layers.Flatten(name="flatten")(code)
        code = keras.layers.Dense(int(latent_dim), name=LATENT_LAYER)(code)
    outputs = _decoder(tuple(code.shape[1:]), feature_shape, channels, filters, kernel_size)(code)
    return keras.Model(images, outputs, name="autoencoder")


def encoder(model: keras.Model) -> keras.Model:
    """The encoder of an `autoencoder` model, sharing its layers: raw pixels in, the flattened code out."""
    images = keras.Input(tuple(model.input_shape[1:]), name="images")
    code = model.get_layer(BACKBONE_LAYER)(images)
    if LATENT_LAYER in {layer.name for layer in model.layers}:
        code = model.get_layer(LATENT_LAYER)(model.get_layer("flatten")(code))
    else:
        code = keras.layers.Flatten(name="code")(code)
    return keras.Model(images, code, name="encoder")


def bottleneck_size(model: keras.Model) -> int:
    """Numbers in the code of one image (what compression keeps of the input)."""
    return int(math.prod(encoder(model).output.shape[1:]))
