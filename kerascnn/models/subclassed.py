"""`keras.Model` subclasses with the same layers as the Sequential `mlp` and `cnn`.

They show (and test) that subclassed models go through every export format: each implements
`call` and `get_config` and is registered serializable, so `.keras` and `.h5` files reload them.
"""

from __future__ import annotations

import keras

from kerascnn.models.blocks import cnn_layers, mlp_layers
from kerascnn.models.registry import register_model


class _StackClassifier(keras.Model):
    """Applies `self.stack` in order; subclasses say how the stack is made from their config."""

    def __init__(self, image_shape, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.stack = self.make_stack()
        # Built at construction so every loader (the legacy .h5 one included) finds the weights it restores.
        self.build((None, *self.image_shape))

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.stack:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def make_stack(self) -> list:
        raise TypeError(f"{type(self).__name__} must define make_stack()")

    def call(self, images, training=False):
        x = images
        for layer in self.stack:
            x = layer(x, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), "image_shape": list(self.image_shape), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="kerascnn")
class MLPClassifier(_StackClassifier):
    """The `mlp` builder's network as a subclassed model."""

    def __init__(self, image_shape, num_classes, hidden=(512, 256), dropout=0.2,
                 kernel_initializer="glorot_uniform", **kwargs):
        self.hidden, self.dropout, self.kernel_initializer = tuple(hidden), dropout, kernel_initializer
        super().__init__(image_shape, num_classes, **kwargs)

    def make_stack(self):
        return mlp_layers(self.num_classes, self.hidden, self.dropout, self.kernel_initializer)

    def get_config(self):
        return {**super().get_config(), "hidden": list(self.hidden), "dropout": self.dropout,
                "kernel_initializer": self.kernel_initializer}


@keras.saving.register_keras_serializable(package="kerascnn")
class CNNClassifier(_StackClassifier):
    """The `cnn` builder's network as a subclassed model."""

    def __init__(self, image_shape, num_classes, filters=(16, 32, 64), dense=500, conv_dropout=0.25,
                 dropout=0.25, kernel_initializer="glorot_uniform", **kwargs):
        self.filters, self.dense, self.conv_dropout = tuple(filters), dense, conv_dropout
        self.dropout, self.kernel_initializer = dropout, kernel_initializer
        super().__init__(image_shape, num_classes, **kwargs)

    def make_stack(self):
        return cnn_layers(self.image_shape, self.num_classes, self.filters, self.dense, self.conv_dropout,
                          self.dropout, self.kernel_initializer)

    def get_config(self):
        return {**super().get_config(), "filters": list(self.filters), "dense": self.dense,
                "conv_dropout": self.conv_dropout, "dropout": self.dropout,
                "kernel_initializer": self.kernel_initializer}


@register_model("mlp_subclassed")
def mlp_subclassed(input_shape, num_classes, hidden=(512, 256), dropout=0.2, kernel_initializer="glorot_uniform"):
    """`mlp` as a keras.Model subclass (same options)."""
    return MLPClassifier(input_shape, num_classes, hidden, dropout, kernel_initializer, name="mlp_subclassed")


@register_model("cnn_subclassed")
def cnn_subclassed(input_shape, num_classes, filters=(16, 32, 64), dense=500, conv_dropout=0.25, dropout=0.25,
                   kernel_initializer="glorot_uniform"):
    """`cnn` as a keras.Model subclass (same options)."""
    return CNNClassifier(input_shape, num_classes, filters, dense, conv_dropout, dropout, kernel_initializer,
                         name="cnn_subclassed")


# Legacy .h5 files name classes without the registration package: loaders pass these explicitly.
CUSTOM_OBJECTS = {cls.__name__: cls for cls in (MLPClassifier, CNNClassifier)}
