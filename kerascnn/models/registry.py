"""Name -> builder registry, in the manner of timm's `@register_model`.

A builder is a function `(input_shape, num_classes, **options) -> keras.Model` whose model takes raw
pixels (0..255, NHWC) and returns class probabilities. Its keyword options are what `[model.options]`
in a config may set; they are checked against the builder's signature before any work starts.
"""

from __future__ import annotations

import inspect
from typing import Callable

from kerascnn.errors import ConfigError, suggest

_BUILDERS: dict[str, Callable] = {}


def register_model(name: str):
    """Decorator: make a builder available to `build_model(name, ...)` and the CLI."""

    def decorate(builder: Callable) -> Callable:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Names accepted by `build_model` and `--model`."""
    _load_builders()
    return sorted(_BUILDERS)


def _load_builders() -> None:
    import kerascnn.models  # noqa: F401  (its imports register every builder)


def get_builder(name: str) -> Callable:
    _load_builders()
    if name not in _BUILDERS:
        hint = suggest(name, _BUILDERS, cutoff=0.6)
        raise ConfigError(f"unknown model {name!r}{hint}; models: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name]


def builder_options(name: str) -> list[str]:
    """Keyword options a builder accepts (everything after input_shape and num_classes)."""
    params = list(inspect.signature(get_builder(name)).parameters.values())[2:]
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_builder_options(name: str, options: dict) -> None:
    valid = builder_options(name)
    for key in options:
        if key not in valid:
            hint = suggest(key, valid, cutoff=0.6)
            raise ConfigError(f"model {name!r} has no option {key!r}{hint}; options: {', '.join(valid)}")


def build_model(name: str, input_shape, num_classes: int, **options):
    """Build a registered model.

    Args:
        name: a name from `list_models()`, e.g. "cnn".
        input_shape: (height, width, channels) of the raw images.
        num_classes: number of output probabilities.
        **options: the builder's keyword options (see its docstring).

    Example:
        model = build_model("cnn", (28, 28, 1), 10, filters=(32, 64))
    """
    check_builder_options(name, options)
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or min(input_shape) <= 0:
        raise ConfigError(f"input_shape must be (height, width, channels), got {input_shape}")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    return _BUILDERS[name](input_shape, num_classes, **options)


def model_input_shape(model) -> tuple[int, ...]:
    """(height, width, channels) a model takes: from its Input, or the `image_shape` a subclassed model keeps."""
    try:
        return tuple(model.input_shape[1:])
    except AttributeError:  # subclassed models have no symbolic input
        return tuple(model.image_shape)
