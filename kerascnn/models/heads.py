"""The output head's switch between one class an image (softmax) and several (sigmoid).

Every builder and transfer model ends in a float32 `Dense(num_classes, activation="softmax")`.
For multi-label data `sigmoid_head` swaps that activation for a sigmoid, so each output is the
independent probability of one class; the change is in the layer's config, so the saved .keras
file and every artifact exported from it carry it.
"""

from __future__ import annotations

import keras

from kerascnn.errors import ConfigError


def output_layer(model: keras.Model):
    """The last layer of a model (its output Dense layer for every kerascnn builder)."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    return layers[-1] if layers else None


def sigmoid_head(model: keras.Model) -> keras.Model:
    """Make `model` multi-label: its softmax output layer becomes a sigmoid one (in place; returned).

    Raises ConfigError for a model whose last layer is not a softmax Dense layer (e.g. a subclassed
    model, whose saved form rebuilds its layers from code).
    """
    layer = output_layer(model)
    if not isinstance(layer, keras.layers.Dense) or layer.activation is not keras.activations.softmax \
            or not (isinstance(model, keras.Sequential) or hasattr(model, "inputs")):
        raise ConfigError(f"model {model.name!r} cannot be made multi-label: its last layer is not a softmax Dense "
                          f"layer of a Sequential or functional model; use mlp, cnn, resnet_small or a backbone")
    layer.activation = keras.activations.sigmoid
    return model


def is_multi_label(model) -> bool:
    """Whether a Keras model ends in sigmoids (several labels an image)."""
    layer = output_layer(model) if isinstance(model, keras.Model) else None
    return getattr(layer, "activation", None) is keras.activations.sigmoid
