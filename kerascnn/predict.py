"""One Predictor over any artifact: `.keras`, `.h5`, a SavedModel directory, `.tflite` or `.onnx`.

All artifacts share the contract "raw pixels in (0..255, NHWC), probabilities out", so a
Predictor only has to turn file paths, PIL images or arrays into such pixels and run the
artifact's own runtime: Keras (with safe_mode), the SavedModel `serving_default` signature,
LiteRT's interpreter (`ai_edge_litert`, which replaces the deprecated tf.lite.Interpreter), or
onnxruntime.

Example:
    predictor = load("saved_models/digits-cnn/model.tflite")
    predictor.predict(["seven.png"], top_k=3)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from kerascnn.errors import ConfigError, DataError, ModelLoadError, first_line
from kerascnn.quiet import native_stderr
from kerascnn.rundir import LABELS_FILE, MANIFEST_FILE
from kerascnn.safety import load_keras_model

ARTIFACT_METADATA_KEY = "kerascnn"  # metadata entry (JSON) that export embeds in .tflite, .onnx and .h5 files
ARTIFACT_METADATA_FILE = "kerascnn.json"  # the same JSON in a SavedModel's assets.extra/ and inside a .keras zip


class KerasRuntime:
    """A `.keras` or legacy `.h5` model loaded with Keras safe_mode (unless unsafe=True)."""

    def __init__(self, path: Path, unsafe: bool = False):
        from kerascnn.models import registry  # registers kerascnn's layers with Keras (and imports TensorFlow)
        from kerascnn.models.subclassed import CUSTOM_OBJECTS

        self.model = load_keras_model(path, unsafe, CUSTOM_OBJECTS)
        self.input_shape = registry.model_input_shape(self.model)
        self.metadata = keras_file_metadata(path)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(images, training=False))


class SavedModelRuntime:
    """A SavedModel directory, called through its `serving_default` signature."""

    def __init__(self, path: Path):
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))
            self.signature = loaded.signatures["serving_default"]
        except Exception as exc:  # TF raises OSError, ValueError, protobuf's DecodeError, ... for broken folders
            raise ModelLoadError(f"cannot load {str(path)!r} as a SavedModel with a serving_default "
                                 f"signature ({type(exc).__name__})") from None
        self._loaded = loaded  # keeps the variables the signature captures alive
        (self.input_name, spec), = self.signature.structured_input_signature[1].items()
        self.input_shape = tuple(spec.shape[1:])
        outputs = list(self.signature.structured_outputs)
        # Classifiers return `probabilities` (beside class_id, class_name); pixel models one tensor.
        self.output_name = "probabilities" if "probabilities" in outputs or len(outputs) != 1 else outputs[0]
        labels = path / "assets.extra" / LABELS_FILE  # written there by kerascnn's export
        self.metadata = {"class_names": labels.read_text(encoding="utf-8").splitlines()} if labels.is_file() else {}
        embedded = path / "assets.extra" / ARTIFACT_METADATA_FILE
        if embedded.is_file():
            self.metadata.update(json.loads(embedded.read_text(encoding="utf-8")))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        outputs = self.signature(**{self.input_name: tf.constant(images, tf.float32)})
        return np.asarray(outputs[self.output_name])


class TFLiteRuntime:
    """A `.tflite` flatbuffer run by LiteRT; quantized inputs/outputs are (de)quantized here.

    Built for low batch-1 overhead: tensor indices, quantization parameters and the interpreter's
    bound methods are looked up once, and tensors are re-allocated only when the batch size changes.
    The file of a gray model that takes RGB images (`kerascnn.tflite_input`) still takes gray pixels
    here, as every other artifact of that model does: they are repeated into three channels.
    """

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(path))
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load {str(path)!r} as a TFLite model ({first_line(exc)})") from None
        (model_input,), (model_output,) = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self.file_input_shape = tuple(int(s) for s in model_input["shape"][1:])
        self.input_index, self.output_index = model_input["index"], model_output["index"]
        self.input_dtype = model_input["dtype"]
        self.input_scale, self.input_zero_point = model_input["quantization"]
        self.output_scale, self.output_zero_point = model_output["quantization"]
        self._set_tensor, self._invoke = self.interpreter.set_tensor, self.interpreter.invoke
        self._get_tensor = self.interpreter.get_tensor
        self.batch_size = None
        self.metadata = tflite_metadata(path)
        model_shape = tuple(self.metadata.get("input_shape", self.file_input_shape))
        self.gray_to_rgb = model_shape[-1] == 1 and self.file_input_shape[-1] == 3
        self.input_shape = model_shape if self.gray_to_rgb else self.file_input_shape

    def _resize(self, batch_size: int) -> None:
        self.interpreter.resize_tensor_input(self.input_index, [batch_size, *self.file_input_shape])
        with native_stderr():  # the first allocation prints "INFO: Created TensorFlow Lite XNNPACK delegate"
            self.interpreter.allocate_tensors()
        self.batch_size = batch_size

    def _quantize(self, images: np.ndarray) -> np.ndarray:
        # Array methods, not np.clip/np.round: ~3x less call overhead on the small arrays of batch 1.
        # The scale is the file's own: calibration sets it from the pixel range it saw (e.g. 0.99884 for
        # uint8 when the brightest calibration pixel was 254.7), so whole pixels still round to themselves.
        if self.input_scale != 1.0 or self.input_zero_point != 0:
            images = images * np.float32(1.0 / self.input_scale) + np.float32(self.input_zero_point)
        info = np.iinfo(self.input_dtype)
        return images.clip(info.min, info.max).round().astype(self.input_dtype)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self.batch_size:
            self._resize(len(images))
        if self.gray_to_rgb:
            images = np.repeat(images, 3, axis=-1)
        self._set_tensor(self.input_index, self._quantize(images) if self.input_scale else images)
        self._invoke()
        output = self._get_tensor(self.output_index)  # a copy, safe from the next invoke
        if not self.output_scale:
            return output
        if self.output_zero_point:
            output = output.astype(np.float32) - np.float32(self.output_zero_point)
        return output * np.float32(self.output_scale)  # integer array * float32 scalar -> float32


class OnnxRuntime:
    """A `.onnx` model run by onnxruntime on CPU (needs `pip install kerascnn[onnx]`)."""

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError:
            raise ModelLoadError(f"{str(path)!r} is an ONNX model, which needs onnxruntime: "
                                 f"pip install 'kerascnn[onnx]'") from None
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf exceptions
            raise ModelLoadError(f"cannot load {str(path)!r} as an ONNX model ({type(exc).__name__})") from None
        model_input, = self.session.get_inputs()
        self.input_name, self.input_shape = model_input.name, tuple(int(s) for s in model_input.shape[1:])
        embedded = self.session.get_modelmeta().custom_metadata_map.get(ARTIFACT_METADATA_KEY)
        self.metadata = json.loads(embedded) if embedded else {}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]


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
    if suffix == ".onnx":
        return OnnxRuntime(path)
    raise ModelLoadError(f"{str(path)!r} is not a model kerascnn can load; use a .keras, .h5, .tflite or .onnx "
                         f"file or a SavedModel folder")


def keras_file_metadata(path: Path) -> dict:
    """The metadata kerascnn's export puts into a `.keras` zip (a file) or `.h5` file (a root attribute), or {}."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if ARTIFACT_METADATA_FILE in archive.namelist():
                    return json.loads(archive.read(ARTIFACT_METADATA_FILE))
        else:
            import h5py

            with h5py.File(path, "r") as file:
                if ARTIFACT_METADATA_KEY in file.attrs:
                    return json.loads(file.attrs[ARTIFACT_METADATA_KEY])
    except (OSError, ValueError, zipfile.BadZipFile):  # a file from elsewhere: no metadata, not an error
        pass
    return {}


def tflite_metadata(path: Path) -> dict:
    """What a `.tflite` file says about itself: kerascnn's own entry (the model's input shape, variant),
    with `class_names` from the standard TFLite Metadata's labels where it has them; {} if neither."""
    from ai_edge_litert import schema_py_generated as schema

    from kerascnn.tflite_metadata import read_class_names

    content = path.read_bytes()
    found = {}
    try:
        model = schema.Model.GetRootAs(content, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == ARTIFACT_METADATA_KEY.encode():
                found = json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    except (ValueError, IndexError, AttributeError):  # a flatbuffer from elsewhere with odd metadata
        pass
    labels = read_class_names(content)
    return {**found, "class_names": labels} if labels else found


def find_class_names(path: Path, num_classes: int) -> list[str]:
    """Class names from labels.txt or manifest.json beside the artifact (or up to three folders up),
    else "0", "1", ..."""
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


def find_thresholds(path: Path, class_names: list[str]) -> list[float] | None:
    """A multi-label run's per-class thresholds from the manifest.json beside the artifact (or up to
    three folders up), or None for a single-label run."""
    for folder in [path.parent if path.is_file() else path, *list(path.parents)[:3]]:
        if (folder / MANIFEST_FILE).is_file():
            manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
            thresholds = manifest.get("thresholds")
            if thresholds and manifest.get("class_names") == list(class_names):
                return [float(thresholds[name]) for name in class_names]
            return None
    return None


@functools.lru_cache(maxsize=None)
def _decoder(channels: int, image_size: tuple[int, int]):
    """Compiled `decode_encoded_image` and `fit_image` for one model input (traced once, reused)."""
    import tensorflow as tf

    from kerascnn.data.decode import decode_encoded_image, fit_image

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode(contents):
        return decode_encoded_image(contents, channels, image_size)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
    def fit(image):
        return fit_image(image, channels, image_size)

    return decode, fit


def _pil_to_pixels(image: Image.Image, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A PIL image (first frame, any mode) through the same channel conversion and resize as encoded files."""
    from kerascnn.data.decode import pil_pixels

    _, fit = _decoder(input_shape[2], tuple(input_shape[:2]))
    return fit(pil_pixels(image)).numpy()


def _encoded_to_pixels(item, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A file path or encoded bytes (PNG/JPEG/BMP/GIF), decoded as training and serving decode them."""
    import tensorflow as tf

    what = "image bytes" if isinstance(item, bytes) else f"image {str(item)!r}"
    try:
        contents = item if isinstance(item, bytes) else Path(item).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what}: {exc.strerror or exc}") from None
    decode, _ = _decoder(input_shape[2], tuple(input_shape[:2]))
    try:
        return decode(tf.constant(contents)).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        raise DataError(f"cannot decode {what}: not a PNG, JPEG, BMP or GIF image, or damaged") from None


def to_pixels(images, input_shape: tuple[int, int, int]) -> np.ndarray:
    """Turn paths, encoded bytes, PIL images, one image array or a batch array into float32 NHWC raw pixels.

    Files, bytes and PIL images are decoded, converted to the model's channels and resized exactly as
    the folder loader and the SavedModel's `serving_bytes` signature do (`kerascnn.data.decode`).
    Arrays must already have the model's height, width and channels; float32 arrays are not copied.
    """
    if isinstance(images, np.ndarray):
        if images.dtype == np.float32 and images.shape[1:] == input_shape:  # a ready batch: the fast path
            return images
        input_shape = tuple(input_shape)
        batch = images[None] if images.ndim == 2 or images.shape == input_shape else images
        if batch.ndim == 3 and input_shape[-1] == 1:  # gray images without their channel axis
            batch = batch[..., None]
        if batch.shape[1:] != input_shape:
            raise DataError(f"images have shape {images.shape} but the model takes {input_shape} (height, width, "
                            f"channels) or a batch of them; pass file paths or PIL images to have them resized")
        return batch.astype(np.float32, copy=False)
    if isinstance(images, (str, Path, bytes, Image.Image)):
        images = [images]
    pixels = [_pil_to_pixels(item, input_shape) if isinstance(item, Image.Image)
              else _encoded_to_pixels(item, input_shape) for item in images]
    if not pixels:
        raise DataError("no images given")
    return np.stack(pixels)


class Predictor:
    """Class probabilities and names from any kerascnn artifact, with one input contract.

    Args:
        path: a `.keras`/`.h5` file, a SavedModel folder (or serving root), a `.tflite` or `.onnx` file.
        unsafe: allow Keras files to run code they carry (Lambda layers, unknown objects). Default False.
    """

    def __init__(self, path: str | Path, unsafe: bool = False):
        self.path = Path(path)
        self.runtime = runtime_for(self.path, unsafe)
        self.input_shape = self.runtime.input_shape
        probe = self.runtime(np.zeros((1, *self.input_shape), np.float32))
        num_classes = probe.shape[-1]
        embedded = getattr(self.runtime, "metadata", {}).get("class_names", [])  # carried by the artifact itself
        self.class_names = embedded if len(embedded) == num_classes else find_class_names(self.path, num_classes)
        carried = getattr(self.runtime, "metadata", {}).get("thresholds")
        self.thresholds = carried if carried and len(carried) == num_classes else find_thresholds(self.path,
                                                                                                   self.class_names)

    @property
    def multi_label(self) -> bool:
        """Whether the artifact is a multi-label model (it has per-class thresholds)."""
        return self.thresholds is not None

    def predict_proba(self, images, batch_size: int = 256) -> np.ndarray:
        """Probabilities (N x classes) for paths, encoded bytes, PIL images or raw-pixel arrays."""
        pixels = to_pixels(images, self.input_shape)
        if len(pixels) <= batch_size:  # the common case, without a concatenate copy
            return self.runtime(pixels)
        return np.concatenate([self.runtime(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)])

    def predict(self, images, top_k: int = 1) -> list[list[tuple[str, float]]]:
        """The `top_k` (class name, probability) pairs of each image, most likely first."""
        if not 1 <= top_k <= len(self.class_names):
            raise ConfigError(f"top_k must be between 1 and {len(self.class_names)} (the number of classes), "
                              f"got {top_k}")
        probabilities = self.predict_proba(images)
        order = np.argsort(-probabilities, axis=1)[:, :top_k]
        return [[(self.class_names[i], float(p[i])) for i in row] for p, row in zip(probabilities, order)]


    def predict_labels(self, images) -> list[list[tuple[str, float]]]:
        """For a multi-label artifact: each image's (class name, score) pairs over their class's threshold,
        highest score first (an empty list when no class reaches its threshold)."""
        if self.thresholds is None:
            raise ConfigError(f"{self.path} is not a multi-label model (it carries no per-class thresholds); use "
                              f"predict() for its top classes")
        scores = self.predict_proba(images)
        return [[(self.class_names[k], float(row[k])) for k in np.argsort(-row) if row[k] >= self.thresholds[k]]
                for row in scores]


def load(path: str | Path, unsafe: bool = False) -> Predictor:
    """A Predictor over the artifact at `path` (see `Predictor`)."""
    return Predictor(path, unsafe)


def image_paths(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand folders into the image files they contain (sorted), keeping files as given."""
    from kerascnn.data.decode import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            paths.append(item)
    return paths


__all__: Sequence[str] = ["Predictor", "load", "to_pixels", "image_paths"]
