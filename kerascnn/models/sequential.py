"""The course notes' networks as `keras.Sequential` models: `mlp` (MNIST MLP) and `cnn` (CIFAR net)."""

from __future__ import annotations

import keras

from kerascnn.models.blocks import cnn_layers, mlp_layers
from kerascnn.models.registry import register_model


@register_model("mlp")
def mlp(input_shape, num_classes, hidden=(512, 256), dropout=0.2, kernel_initializer="glorot_uniform"):
    """Multilayer perceptron: Flatten, Dense+ReLU per `hidden` size with `dropout`, softmax.

    Args:
        hidden: sizes of the hidden layers (default (512, 256)).
        dropout: dropout rate after each hidden layer (default 0.2).
        kernel_initializer: Keras initializer name or `general_rule_uniform|normal` (default glorot_uniform).
    """
    return keras.Sequential([keras.Input(input_shape, name="images"),
                             *mlp_layers(num_classes, tuple(hidden), dropout, kernel_initializer)], name="mlp")


@register_model("cnn")
def cnn(input_shape, num_classes, filters=(16, 32, 64), dense=500, conv_dropout=0.25, dropout=0.25,
        kernel_initializer="glorot_uniform"):
    """Convolutional net: 3x3 conv + 2x2 max-pool blocks, dropout, Dense(`dense`), dropout, softmax.

    Args:
        filters: filters of each conv block (default (16, 32, 64)).
        dense: units of the hidden dense layer (default 500).
        conv_dropout: dropout after the conv blocks (default 0.25).
        dropout: dropout before the output layer (default 0.25).
        kernel_initializer: Keras initializer name or `general_rule_uniform|normal` (default glorot_uniform).
    """
    return keras.Sequential([keras.Input(input_shape, name="images"),
                             *cnn_layers(input_shape, num_classes, tuple(filters), dense, conv_dropout, dropout,
                                         kernel_initializer)], name="cnn")
