"""One Predictor over any artifact: `.keras`, `.h5`, a SavedModel directory, or `.tflite`.

All artifacts share the contract "raw pixels in (0..255, NHWC), probabilities out", so a
Predictor only has to turn file paths, PIL images or arrays into such pixels and run the
artifact's own runtime: Keras (with safe_mode), the SavedModel `serving_default` signature, or
LiteRT's interpreter (`ai_edge_litert`, which replaces the deprecated tf.lite.Interpreter).

Example:
    predictor = load("saved_models/digits-cnn/model.tflite")
    predictor.predict(["seven.png"], top_k=3)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from kerascnn.errors import ModelLoadError

LABELS_FILE = "labels.txt"
MANIFEST_FILE = "manifest.json"


class KerasRuntime:
    """A `.keras` or legacy `.h5` model loaded with Keras safe_mode (unless unsafe=True)."""

    def __init__(self, path: Path, unsafe: bool = False):
        import keras

        from kerascnn.models import registry
        from kerascnn.models.subclassed import CUSTOM_OBJECTS
        from kerascnn.safety import check_model_file

        check_model_file(path, unsafe)
        try:
            self.model = keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False,
                                                 safe_mode=not unsafe)
        except Exception as exc:  # Keras raises ValueError/TypeError/OSError for refused or broken files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load {str(path)!r} as a Keras model: {first_line}") from None
        self.input_shape = registry.model_input_shape(self.model)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(images, training=False))


class SavedModelRuntime:
    """A SavedModel directory, called through its `serving_default` signature."""

    def __init__(self, path: Path):
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))
            self.signature = loaded.signatures["serving_default"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"cannot load {str(path)!r} as a SavedModel with a serving_default "
                                 f"signature ({type(exc).__name__})") from None
        self._loaded = loaded  # keeps the variables the signature captures alive
        (self.input_name, spec), = self.signature.structured_input_signature[1].items()
        self.input_shape = tuple(spec.shape[1:])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        outputs = self.signature(**{self.input_name: tf.constant(images, tf.float32)})
        return np.asarray(outputs["probabilities"])


class TFLiteRuntime:
    """A `.tflite` flatbuffer run by LiteRT; quantized inputs/outputs are (de)quantized here."""

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(path))
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load {str(path)!r} as a TFLite model ({str(exc).splitlines()[0]})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.input_shape = tuple(int(s) for s in self.input["shape"][1:])
        self.batch_size = None

    def _resize(self, batch_size: int) -> None:
        if batch_size != self.batch_size:
            self.interpreter.resize_tensor_input(self.input["index"], [batch_size, *self.input_shape])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self.batch_size = batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self._resize(len(images))
        scale, zero_point = self.input["quantization"]
        if scale:
            info = np.iinfo(self.input["dtype"])
            images = np.clip(np.round(images / scale + zero_point), info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], images.astype(self.input["dtype"]))
        self.interpreter.invoke()
        output = self.interpreter.get_tensor(self.output["index"])
        scale, zero_point = self.output["quantization"]
        return (output.astype(np.float32) - zero_point) * scale if scale else output.astype(np.float32)


def runtime_for(path: Path, unsafe: bool = False):
    """The runtime that can run the artifact at `path`, chosen by its file type."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return SavedModelRuntime(path)
        versions = sorted((p for p in path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()),
                          key=lambda p: int(p.name))
        if versions:  # a serving root: take the highest version, as TF Serving does
            return SavedModelRuntime(versions[-1])
        raise ModelLoadError(f"{str(path)!r} is a folder but not a SavedModel (no saved_model.pb)")
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5", ".hdf5"):
        return KerasRuntime(path, unsafe)
    if suffix == ".tflite":
        return TFLiteRuntime(path)
    raise ModelLoadError(f"{str(path)!r} is not a model kerascnn can load; use a .keras, .h5 or .tflite file "
                         f"or a SavedModel folder")


def find_class_names(path: Path, num_classes: int) -> list[str]:
    """Class names from labels.txt or manifest.json beside the artifact (or up to two folders up)."""
    for folder in [path.parent if path.is_file() else path, *list(path.parents)[:3]]:
        if (folder / LABELS_FILE).is_file():
            names = (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines()
            if len(names) == num_classes:
                return names
        if (folder / MANIFEST_FILE).is_file():
            names = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8")).get("class_names", [])
            if len(names) == num_classes:
                return names
    return [str(i) for i in range(num_classes)]


def _image_to_pixels(image: Image.Image, input_shape: tuple[int, int, int]) -> np.ndarray:
    height, width, channels = input_shape
    image.seek(0)  # the first frame of an animated GIF
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, np.float32)
    return pixels[..., None] if channels == 1 else pixels


def to_pixels(images, input_shape: tuple[int, int, int]) -> np.ndarray:
    """Turn paths, PIL images, one image array or a batch array into float32 NHWC raw pixels."""
    from kerascnn.errors import DataError

    if isinstance(images, np.ndarray):
        batch = images[None] if images.ndim == len(input_shape) else images
        if batch.ndim == 3 and input_shape[-1] == 1:
            batch = batch[..., None]
        if tuple(batch.shape[1:]) != tuple(input_shape):
            raise DataError(f"images have shape {tuple(batch.shape[1:])} but the model takes {tuple(input_shape)} "
                            f"(height, width, channels); pass file paths or PIL images to have them resized")
        return batch.astype(np.float32)
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    pixels = []
    for item in images:
        if isinstance(item, Image.Image):
            pixels.append(_image_to_pixels(item, input_shape))
            continue
        try:
            with Image.open(item) as image:
                pixels.append(_image_to_pixels(image, input_shape))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {str(item)!r}: {exc}") from None
    return np.stack(pixels)


class Predictor:
    """Class probabilities and names from any kerascnn artifact, with one input contract.

    Args:
        path: a `.keras`/`.h5` file, a SavedModel folder (or serving root) or a `.tflite` file.
        unsafe: allow Keras files to run code they carry (Lambda layers, unknown objects). Default False.
    """

    def __init__(self, path: str | Path, unsafe: bool = False):
        self.path = Path(path)
        self.runtime = runtime_for(self.path, unsafe)
        self.input_shape = self.runtime.input_shape
        probe = self.runtime(np.zeros((1, *self.input_shape), np.float32))
        self.class_names = find_class_names(self.path, probe.shape[-1])

    def predict_proba(self, images, batch_size: int = 256) -> np.ndarray:
        """Probabilities (N x classes) for paths, PIL images or raw-pixel arrays."""
        pixels = to_pixels(images, self.input_shape)
        return np.concatenate([self.runtime(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)])

    def predict(self, images, top_k: int = 1) -> list[list[tuple[str, float]]]:
        """The `top_k` (class name, probability) pairs of each image, most likely first."""
        probabilities = self.predict_proba(images)
        order = np.argsort(-probabilities, axis=1)[:, :top_k]
        return [[(self.class_names[i], float(p[i])) for i in row] for p, row in zip(probabilities, order)]


def load(path: str | Path, unsafe: bool = False) -> Predictor:
    """A Predictor over the artifact at `path` (see `Predictor`)."""
    return Predictor(path, unsafe)


def image_paths(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand folders into the image files they contain (sorted), keeping files as given."""
    from kerascnn.data.folder import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            paths.append(item)
    return paths


__all__: Sequence[str] = ["Predictor", "load", "to_pixels", "image_paths"]
