"""Refuse Keras model files that carry code, before Keras deserializes anything from them.

Every kerascnn load uses Keras' `safe_mode`, which refuses Python lambdas, `TFSMLayer` and classes
nobody registered. kerascnn also reads the model's config first and refuses any `Lambda` layer,
including one wrapping a named function (which safe_mode lets through when that function can be
found), so the user gets one line naming the layer. The check covers both formats: `.keras`
(`config.json` inside the zip) and legacy `.h5` (the `model_config` attribute of the HDF5 file).
Keras 3.15.1's legacy H5 loader honours safe_mode too (it deserializes inside a SafeModeScope; the
tests prove it), so for `.h5` this check is a second lock with a clearer message, not the only one.

`load_keras_model` is the one way kerascnn opens a Keras file (the Predictor, `--weights PATH` and
resume all use it). kerascnn's own layers and models are registered with
`keras.saving.register_keras_serializable(package="kerascnn")` where they are defined, so Keras finds
them by name once `kerascnn.models` is imported; only legacy `.h5` files, which name a class without
its package, need the `custom_objects` table the Predictor passes.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from kerascnn.errors import ModelLoadError, first_line

CODE_LAYERS = ("Lambda", "TFSMLayer")  # layers whose config makes Keras run code or load a graph from a path
SERIALIZED_LAMBDA = "__lambda__"  # how Keras stores a Python lambda's bytecode anywhere in a config


def stored_config(path: Path) -> dict | None:
    """The architecture config stored in a `.keras` or `.h5` file; None if it cannot be read (Keras then reports)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            return json.loads(raw.decode("utf-8") if hasattr(raw, "decode") else raw) if raw is not None else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def code_objects(config) -> list[str]:
    """`class_name 'name'` of every object in a model config that would run code it carries."""
    found = []
    if isinstance(config, dict):
        class_name = config.get("class_name")
        if class_name in CODE_LAYERS or class_name == SERIALIZED_LAMBDA:
            inner = config.get("config")
            name = inner.get("name") if isinstance(inner, dict) else None
            found.append(f"{class_name} {name!r}" if name else str(class_name))
        for value in config.values():
            found += code_objects(value)
    elif isinstance(config, list):
        for value in config:
            found += code_objects(value)
    return found


def check_model_file(path: Path, unsafe: bool = False) -> None:
    """Raise ModelLoadError if the Keras file at `path` holds a layer that runs stored code (unless `unsafe`)."""
    if unsafe:
        return
    found = code_objects(stored_config(path))
    if found:
        raise ModelLoadError(f"refusing to load {str(path)!r}: it holds {', '.join(dict.fromkeys(found))}, which "
                             f"runs code stored in the file; pass --unsafe (unsafe=True) only if you trust its source")


def load_keras_model(path: Path, unsafe: bool = False, custom_objects: dict | None = None):
    """The model in a `.keras` or `.h5` file, loaded uncompiled with Keras safe_mode after `check_model_file`.

    Raises ModelLoadError (one line) for a refused, missing or broken file.
    """
    import keras  # heavy: this module is also used by code that must not import TensorFlow

    check_model_file(Path(path), unsafe)
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises ValueError/TypeError/OSError for refused or broken files
        raise ModelLoadError(f"cannot load {str(path)!r} as a Keras model: {first_line(exc)}") from None
