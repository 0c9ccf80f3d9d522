"""Layer stacks shared by the Sequential builders and their subclassed twins.

Both forms are built from the same list of layers, so their architectures cannot drift apart.
The output layer is float32 even under mixed precision: a float16 softmax loses small probabilities.
"""

from __future__ import annotations

import keras

# The course notes' weight-initialisation chapter: the "general rule" draws weights with scale 1/sqrt(n),
# n = fan-in, either uniform in [-1/sqrt(n), 1/sqrt(n)] or normal with std 1/sqrt(n).
SEED_INITIALIZERS = {
    "general_rule_uniform": dict(scale=1.0 / 3.0, mode="fan_in", distribution="uniform"),
    "general_rule_normal": dict(scale=1.0, mode="fan_in", distribution="untruncated_normal"),
}


def initializer(name: str):
    """A Keras initializer by name; also accepts the course notes' `general_rule_uniform|normal`."""
    if name in SEED_INITIALIZERS:
        return keras.initializers.VarianceScaling(**SEED_INITIALIZERS[name])
    try:
        return keras.initializers.get(name)
    except ValueError:
        from kerascnn.errors import ConfigError

        raise ConfigError(f"unknown kernel_initializer {name!r}; use a Keras initializer name "
                          f"(glorot_uniform, he_normal, ...) or {', '.join(SEED_INITIALIZERS)}") from None


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        from kerascnn.errors import ConfigError

        raise ConfigError(f"model option {name} must be in [0, 1), got {value}")


def mlp_layers(num_classes: int, hidden: tuple[int, ...], dropout: float, kernel_initializer: str) -> list:
    """Rescaling, Flatten, [Dense(ReLU), Dropout] per hidden size, Dense(softmax)."""
    _check_rate("dropout", dropout)
    stack = [keras.layers.Rescaling(1.0 / 255, name="rescale"), keras.layers.Flatten(name="flatten")]
    for i, units in enumerate(hidden):
        stack += [keras.layers.Dense(units, activation="relu", kernel_initializer=initializer(kernel_initializer),
                                     name=f"dense_{i}"),
                  keras.layers.Dropout(dropout, name=f"dropout_{i}")]
    stack.append(keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32"))
    return stack


def cnn_layers(input_shape: tuple[int, int, int], num_classes: int, filters: tuple[int, ...], dense: int,
               conv_dropout: float, dropout: float, kernel_initializer: str) -> list:
    """Rescaling, conv blocks (3x3 same, ReLU, 2x2 max-pool while the map is >= 2 px), dropout,
    Flatten, Dense(ReLU), dropout, Dense(softmax): the course notes' CIFAR net, sized to any input."""
    _check_rate("conv_dropout", conv_dropout)
    _check_rate("dropout", dropout)
    height, width = input_shape[:2]
    stack = [keras.layers.Rescaling(1.0 / 255, name="rescale")]
    for i, n in enumerate(filters):
        stack.append(keras.layers.Conv2D(n, 3, padding="same", activation="relu",
                                         kernel_initializer=initializer(kernel_initializer), name=f"conv_{i}"))
        if height >= 2 and width >= 2:
            stack.append(keras.layers.MaxPooling2D(2, name=f"pool_{i}"))
            height, width = height // 2, width // 2
    stack += [keras.layers.Dropout(conv_dropout, name="conv_dropout"),
              keras.layers.Flatten(name="flatten"),
              keras.layers.Dense(dense, activation="relu", kernel_initializer=initializer(kernel_initializer),
                                 name="dense"),
              keras.layers.Dropout(dropout, name="dropout"),
              keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")]
    return stack
