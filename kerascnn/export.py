"""Write every deployable artifact of a trained model and prove each predicts what the model predicts.

Artifacts are written into a staging folder inside the run directory, reloaded through the same
`Predictor` a user would use, compared with the in-memory model on the whole test split
(accuracy, top-1 agreement, max |delta p|), and only then moved into place. A failed or killed
export therefore never leaves a half-written artifact where a finished one is expected.

Writers use the ecosystem's own exporters: `model.save` (.keras, legacy .h5), Keras
`ExportArchive` (SavedModel with a raw-pixel `serving_default` and an image-bytes signature),
`tf.lite.TFLiteConverter` (float32, float16, dynamic-range and full-integer variants), LiteRT's
`flatbuffer_utils` to embed kerascnn's own entry in each `.tflite` file and MediaPipe's metadata
writer for the standard TFLite Metadata (`kerascnn.tflite_metadata`), and optionally tf2onnx (ONNX).
Each `.tflite` file is also run by MediaPipe Tasks' `ImageClassifier`, held to the same bars.

Float artifacts must agree with the model on every test image (|delta p| <= 1e-4, or 4 times the model's own
graph-vs-eager difference where that is larger: `float_tolerance`) or they fail.
Quantized TFLite variants must agree on >= 99.5 % with <= 0.5 point accuracy drop; one that does
not is still written but flagged (`parity.passed: false` with a `warning`) and logged.

A failing artifact does not take the others with it: `model.keras` is written first, each artifact
is written and judged on its own, the ones that pass are moved into place, and `PartialExport`
then names the ones that failed. A format the model cannot be stored in (the legacy `.h5` format
cannot hold the Keras operations inside e.g. MobileNetV3's graph) is dropped beforehand with its
reason (`unsupported_artifacts`), not attempted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from kerascnn import __version__
from kerascnn.config import ExportConfig
from kerascnn.data.decode import decode_encoded_image
from kerascnn.data.imagedata import ImageData
from kerascnn.errors import ConfigError, DataError, ExportError, ModelLoadError, PartialExport, first_line
from kerascnn.evaluation import predict_split
from kerascnn.memory import available_bytes, return_freed_memory
from kerascnn.models.registry import model_input_shape
from kerascnn.predict import ARTIFACT_METADATA_FILE, ARTIFACT_METADATA_KEY, Predictor
from kerascnn.quiet import native_stderr
from kerascnn.rundir import H5_FILE, KERAS_FILE, LABELS_FILE, SAVED_MODEL_DIR, move_into_place
from kerascnn.tflite_input import takes_rgb_in_tflite, write_rgb_input_saved_model
from kerascnn.tflite_metadata import write_metadata

FLOAT_TOLERANCE = 1e-4
# A float artifact may differ from the model's eager call by this multiple of the model's own graph-vs-eager
# difference where that is the larger bar: efficientnet_v2_l (1,028 layers, random weights after one epoch)
# under tf.function differs from itself called eagerly by 1.35e-3, its SavedModel matches the tf.function call
# exactly, and its float32 TFLite file (XNNPACK's kernels) is at 2.9 times that difference from the eager call.
SELF_NOISE_MULTIPLE = 4
TIE_TOLERANCE = 1e-6
QUANTIZED_MIN_AGREEMENT = 0.995
QUANTIZED_MAX_ACCURACY_DROP = 0.005
BYTES_SIGNATURE = "serving_bytes"
CLASSIFY_SIGNATURE, CLASSIFY_FEATURE = "classify", "image"  # TF Serving's Classify API over tf.Example images
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
FLOAT32_TFLITE = "model.tflite"
TFLITE_INPUT_NAME = "images_raw_pixels_0_255"
log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExportContext:
    """What writers share: the model, class names, data for calibration, options, scratch space."""

    model: keras.Model
    class_names: list[str]
    data: ImageData
    config: ExportConfig
    scratch: Path
    run_name: str = ""
    thresholds: list[float] | None = None
    float_tolerance: float = FLOAT_TOLERANCE  # the max |dp| a float artifact may show (`float_tolerance`)

    @functools.cached_property
    def rgb_input(self) -> bool:
        """Whether the TFLite files take RGB images for a gray model (`kerascnn.tflite_input`)."""
        return takes_rgb_in_tflite(self.model, self.config.tflite_gray_input)

    @functools.cached_property
    def plain_saved_model(self) -> str:
        """The SavedModel every TFLite conversion starts from, made once: the model traced with
        `training=False`, or for a gray model its RGB-input wrapper (traced so too).

        Not `model.export()`: it traces the call with `training=None`, which for a from_scratch
        MobileNetV3 with re-estimated BatchNormalization statistics gave other probabilities than
        inference mode (max |dp| 0.54, measured).
        """
        path = str(self.scratch / "plain_saved_model")
        if self.rgb_input:
            write_rgb_input_saved_model(self.model, path)
            return path
        archive = keras.export.ExportArchive()
        archive.track(self.model)
        spec = tf.TensorSpec([None, *model_input_shape(self.model)], tf.float32, name="images")
        archive.add_endpoint("serving_default", tf.function(lambda images: self.model(images, training=False),
                                                            input_signature=[spec]))
        archive.write_out(path, verbose=False)
        return path

    def representative_dataset(self):
        """The first `calibration_images` images of the (already shuffled) training split, one a batch
        (gray ones repeated into RGB for an RGB-input file)."""
        for image, _ in self.data.train.take(self.config.calibration_images):
            yield [tf.expand_dims(tf.tile(image, [1, 1, 3]) if self.rgb_input else image, 0).numpy()]

    def tflite_metadata(self) -> dict:
        """`write_metadata`'s arguments for this model's standard TFLite Metadata (labels, normalisation,
        general information), plain values that travel to a converter's own process."""
        config, height, width = self.config, *self.data.input_shape[:2]
        names = ", ".join(self.class_names[:10]) + (", ..." if len(self.class_names) > 10 else "")
        description = config.description or (
            f"Image classifier trained with kerascnn {__version__}: {len(self.class_names)} classes ({names}); "
            f"takes a {height}x{width} {'gray' if self.data.input_shape[2] == 1 and not self.rgb_input else 'RGB'} "
            f"image, raw 0..255 pixels"
            + (" (converted to gray inside)" if self.rgb_input else "") + ".")
        return {"class_names": list(self.class_names), "name": config.model_name or self.run_name or "kerascnn",
                "description": description, "version": config.version, "author": config.author or "",
                "license": config.license or "", "gray_inside": self.rgb_input}


def write_keras(model: keras.Model, path: Path, context: ExportContext | None) -> None:
    """`model.save`, plus `kerascnn.json` (artifact_metadata) in the zip: Keras' loader ignores files it
    does not know, and `kerascnn.load` reads the class names from it."""
    model.save(path)
    if context is not None:  # a classifier's export; pixel-output models (kerascnn.tensor_export) name no classes
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(ARTIFACT_METADATA_FILE, artifact_metadata(context, "float32"))


def write_h5(model: keras.Model, path: Path, context: ExportContext | None) -> None:
    """Keras' legacy HDF5 file (chosen by the .h5 suffix), with artifact_metadata as a root attribute."""
    import h5py

    model.save(path)
    if context is not None:  # as in write_keras
        with h5py.File(path, "a") as file:
            file.attrs[ARTIFACT_METADATA_KEY] = artifact_metadata(context, "float32")


def write_saved_model(model: keras.Model, path: Path, context: ExportContext) -> None:
    """A TF-Serving SavedModel with two signatures returning `probabilities`, `class_id`, `class_name`,
    and a classify signature.

    `serving_default` takes raw pixels (`images`, float32 N x H x W x C, 0..255); `serving_bytes`
    takes encoded images (`image_bytes`, tf.string, PNG/JPEG/BMP/GIF of any size, gray or color) and
    decodes and resizes them in-graph exactly as training and `Predictor` do. `classify` (method
    `tensorflow/serving/classify`) takes serialized tf.Example with the encoded image in feature
    `image` and returns `classes` and `scores`, for TF Serving's Classify API.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    names = tf.constant(context.class_names)
    height, width, channels = model_input_shape(model)

    def named_outputs(images):
        probabilities = model(images, training=False)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_id": class_id, "class_name": tf.gather(names, class_id)}

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name="images")])
    def serving_default(images):
        return named_outputs(images)

    def decode(contents):
        return decode_encoded_image(contents, channels, (height, width))

    def decode_all(contents):
        return tf.map_fn(decode, contents, fn_output_signature=tf.TensorSpec((height, width, channels), tf.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_bytes(image_bytes):
        return named_outputs(decode_all(image_bytes))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs):
        """TF Serving's classify contract (classifier.cc): serialized tf.Example `inputs` with the encoded
        image in bytes feature `image`; `classes` (names) and `scores`, every class, best first."""
        features = tf.io.parse_example(inputs, {CLASSIFY_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        scores, order = tf.math.top_k(named_outputs(decode_all(features[CLASSIFY_FEATURE]))["probabilities"],
                                      k=len(context.class_names))
        return {"classes": tf.gather(names, order), "scores": scores}

    archive.add_endpoint("serving_default", serving_default)
    archive.add_endpoint(BYTES_SIGNATURE, serving_bytes)
    archive.add_endpoint(CLASSIFY_SIGNATURE, classify)
    archive.write_out(str(path), verbose=False)
    mark_classify_signature(path)
    # assets.extra/ is SavedModel's place for files the loader ignores: a version copied alone to a
    # server still names its classes for `kerascnn.load`.
    (path / "assets.extra").mkdir(exist_ok=True)
    (path / "assets.extra" / LABELS_FILE).write_text("\n".join(context.class_names) + "\n", encoding="utf-8")
    (path / "assets.extra" / ARTIFACT_METADATA_FILE).write_text(artifact_metadata(context, "saved_model"),
                                                                encoding="utf-8")


def mark_classify_signature(path: Path) -> None:
    """Give the `classify` signature TF Serving's classify method name, which its Classify API requires.

    `tf.saved_model.save` writes every signature as a predict signature; the method name is only a
    field of the SignatureDef in saved_model.pb, which TensorFlow's own loader ignores.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    graph_file = path / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(graph_file.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def[CLASSIFY_SIGNATURE].method_name = CLASSIFY_METHOD_NAME
    graph_file.write_bytes(saved_model.SerializeToString())


def artifact_metadata(context: ExportContext, variant: str) -> str:
    """JSON that single-file artifacts carry so they name their classes without labels.txt."""
    metadata = {"class_names": context.class_names, "input_shape": list(context.data.input_shape),
                "variant": variant, "kerascnn_version": __version__}
    if context.thresholds is not None:  # multi-label: the per-class decision thresholds travel with the file
        metadata.update(multi_label=True, thresholds=[float(t) for t in context.thresholds])
    return json.dumps(metadata)


def input_description(predictor: Predictor) -> dict:
    """`{"input": ...}` for a TFLite artifact: its input tensor's name and type and, when quantized, the
    scale and zero point as the file has them (raw pixel = scale x (q - zero_point)); {} otherwise."""
    runtime = predictor.runtime
    if not hasattr(runtime, "input_scale"):
        return {}
    details = runtime.interpreter.get_input_details()[0]
    entry = {"name": details["name"], "dtype": np.dtype(runtime.input_dtype).name, "range": "raw pixels 0..255"}
    if runtime.input_scale:
        entry.update(scale=float(runtime.input_scale), zero_point=int(runtime.input_zero_point))
    return {"input": entry}


def embed_metadata(flatbuffer: bytes, entry: str) -> bytearray:
    """The flatbuffer with `entry` (`artifact_metadata`'s JSON) in its `metadata` table (LiteRT's
    flatbuffer_utils); read back by `kerascnn.load`."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    tflite_model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)  # reads bytes in place: no copy
    graph = tflite_model.subgraphs[0]
    for index in graph.inputs:  # the name says what goes in: raw pixels, not pixels / 255
        graph.tensors[index].name = TFLITE_INPUT_NAME.encode()
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(entry.encode("utf-8"), np.uint8)
    tflite_model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = ARTIFACT_METADATA_KEY
    entry.buffer = len(tflite_model.buffers) - 1
    tflite_model.metadata = [*(tflite_model.metadata or []), entry]
    return flatbuffer_utils.convert_object_to_bytearray(tflite_model)


def tflite_writer(variant: str, quantize: Callable[[tf.lite.TFLiteConverter, list, str], None]) -> Callable:
    """A writer converting the plain SavedModel to TFLite after `quantize` has set the converter's options.

    A model with more than `TFLITE_IN_PROCESS_MAX_BYTES` of weights is converted in a fresh process: in place
    the converter needed about five times the weights at its peak and kept about three times of it afterwards
    (convnext_large), so a 1.4 GB backbone's second variant was killed for memory on a 24 GB machine; a
    process that ends gives all of it back. Smaller models convert in place, where starting a process
    (importing TensorFlow again) would cost more than it saves.
    """

    def write(model: keras.Model, path: Path, context: ExportContext) -> None:
        job = TFLiteJob(context.plain_saved_model, quantize,
                        # only full-integer conversion calibrates: its images travel to the converter as arrays
                        list(context.representative_dataset()) if quantize is _full_integer else [],
                        context.config.int8_io, artifact_metadata(context, variant), context.tflite_metadata())
        try:
            if weight_bytes(model) > TFLITE_IN_PROCESS_MAX_BYTES:
                convert_in_fresh_process(job, path)
            else:
                with native_stderr():  # the converter prints "fully_quantize: 0, ..." from C++
                    path.write_bytes(job.run())
        except ConverterKilled:
            raise ExportError(f"TFLite {variant} conversion was stopped: the system killed the converter's process, "
                              f"most likely for memory (it needs about {tflite_conversion_bytes(model, variant) / 1e9:.0f} "
                              f"GB free); drop {variant!r} from export.tflite or convert on a machine with more "
                              f"memory") from None
        except Exception as exc:  # the converter raises ConverterError or plain exceptions, e.g. an op without
            # an int8 kernel when only TFLITE_BUILTINS_INT8 is allowed: never fall back to float silently
            raise ExportError(f"TFLite {variant} conversion failed: {first_line(exc)}; drop {variant!r} from "
                              f"export.tflite") from None

    return write


@dataclasses.dataclass(frozen=True)
class TFLiteJob:
    """One `.tflite` file to make, in plain values (so it can run in another process): the SavedModel, the
    converter options (`quantize`, with `calibration` batches for full-integer conversion), kerascnn's
    metadata entry and the standard TFLite Metadata's arguments."""

    saved_model: str
    quantize: Callable
    calibration: list
    int8_io: str
    artifact_metadata: str
    standard_metadata: dict

    def run(self) -> bytes:
        """The finished file: converted, with both metadata (each copy freed once the next exists)."""
        converter = tf.lite.TFLiteConverter.from_saved_model(self.saved_model)
        self.quantize(converter, self.calibration, self.int8_io)
        flatbuffer = converter.convert()
        del converter  # it holds the loaded SavedModel: the weights once more
        flatbuffer = embed_metadata(flatbuffer, self.artifact_metadata)
        return write_metadata(flatbuffer, **self.standard_metadata)


TFLITE_IN_PROCESS_MAX_BYTES = 256 * 2**20
TENSORFLOW_BYTES = 800 * 10**6  # what a fresh process's TensorFlow, Keras and kerascnn take before converting
# A TFLite conversion's peak memory in its own process, over the model's weights, measured with convnext_xlarge
# (1.39 GB of weights, 2026-12-01): float32 10.2 GB, int8 13.6 GB (it also calibrates a float model); float16 and
# dynamic are not measured and taken as int8's. Meanwhile the exporting process holds what the artifacts before
# kept: 0.3 times the weights after MediaPipe Tasks ran a file (convnext_base), rounded up.
TFLITE_PEAK_FACTORS = {"float32": 6.7, "float16": 9.2, "dynamic": 9.2, "int8": 9.2}
EXPORTER_GROWTH_FACTOR = 0.5


def tflite_conversion_bytes(model: keras.Model, variant: str) -> int:
    """Free memory that converting `model` to the TFLite `variant` needs, by the factors measured above."""
    return int(TENSORFLOW_BYTES + (TFLITE_PEAK_FACTORS[variant] + EXPORTER_GROWTH_FACTOR) * weight_bytes(model))


def weight_bytes(model: keras.Model) -> int:
    """Bytes of the model's weights (trainable and not) in their own dtypes."""
    return sum(int(np.prod(weight.shape)) * np.dtype(weight.dtype).itemsize for weight in model.weights)


class ConverterKilled(Exception):
    """The converter's own process was ended by a signal (the kernel's out-of-memory killer, as a rule)."""


def convert_in_fresh_process(job: TFLiteJob, path: Path) -> None:
    """`job.run()` in a new Python process that writes the file to `path` and ends.

    The job travels as a pickle we write next to `path` (`quantize` by reference); the child sees this
    process's sys.path. A plain subprocess, not multiprocessing: spawning runs the caller's main script
    again in the child, which a script without an `if __name__ == "__main__"` guard does not survive. Its
    stderr (TensorFlow's start-up lines, the converter's) goes through `native_stderr`. Raises
    ConverterKilled if a signal ends it, RuntimeError with the child's error otherwise.
    """
    job_file, error = path.with_name(path.name + ".job"), path.with_name(path.name + ".error")
    job_file.write_bytes(pickle.dumps((job, str(path), str(error))))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry)}
    try:
        with native_stderr():
            command = f"import kerascnn.export as e; e.run_conversion_job({str(job_file)!r})"
            code = subprocess.run([sys.executable, "-c", command], env=environment, stdin=subprocess.DEVNULL).returncode
        if code < 0:
            raise ConverterKilled(f"signal {-code}")
        if code != 0:
            raise RuntimeError(error.read_text() if error.is_file() else f"the converter's process exited with {code}")
    finally:
        job_file.unlink(missing_ok=True)
        error.unlink(missing_ok=True)


def run_conversion_job(job_file: str) -> None:
    """The converter's process: offer itself first to the kernel's out-of-memory killer (the exporting process
    holds the trained model and everything exported so far), convert, write; on failure write the error's
    first line where `convert_in_fresh_process` reads it, and exit 1."""
    job, path, error = pickle.loads(Path(job_file).read_bytes())
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    try:
        Path(path).write_bytes(job.run())
    except Exception as exc:  # whatever the converter raises is the parent's to report
        Path(error).write_text(first_line(exc))
        sys.exit(1)


def _float32(converter, calibration, int8_io) -> None:
    """No options: the float32 model as it is."""


def _float16(converter, calibration, int8_io) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic_range(converter, calibration, int8_io) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _full_integer(converter, calibration, int8_io) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.as_dtype(int8_io)


ONNX_OPSET = 17


def write_onnx(model: keras.Model, path: Path, context: ExportContext) -> None:
    """An ONNX model (tf2onnx over the model's call) with `artifact_metadata` in its metadata_props."""
    import onnx
    import tf2onnx

    spec = (tf.TensorSpec([None, *model_input_shape(model)], tf.float32, name="images"),)

    @tf.function(input_signature=spec)
    def probabilities(images):
        return {"probabilities": model(images, training=False)}

    onnx_model, _ = tf2onnx.convert.from_function(probabilities, input_signature=spec, opset=ONNX_OPSET)
    onnx_model.doc_string = "input images: raw pixels 0..255 (float32, NHWC); output: class probabilities"
    onnx.helper.set_model_props(onnx_model, {ARTIFACT_METADATA_KEY: artifact_metadata(context, "float32")})
    onnx.save(onnx_model, str(path))


@dataclasses.dataclass(frozen=True)
class ArtifactSpec:
    """How one artifact is written and judged: `exact` ones must match the model, others are quantized."""

    writer: Callable
    exact: bool


FORMAT_FILES: dict[str, dict[str, ArtifactSpec]] = {
    "keras": {KERAS_FILE: ArtifactSpec(write_keras, True)},
    "h5": {H5_FILE: ArtifactSpec(write_h5, True)},
    "saved_model": {SAVED_MODEL_DIR: ArtifactSpec(write_saved_model, True)},
    "onnx": {"model.onnx": ArtifactSpec(write_onnx, True)},
}
TFLITE_FILES: dict[str, tuple[str, ArtifactSpec]] = {
    "float32": (FLOAT32_TFLITE, ArtifactSpec(tflite_writer("float32", _float32), True)),
    "float16": ("model_float16.tflite", ArtifactSpec(tflite_writer("float16", _float16), False)),
    "dynamic": ("model_dynamic.tflite", ArtifactSpec(tflite_writer("dynamic", _dynamic_range), False)),
    "int8": ("model_int8.tflite", ArtifactSpec(tflite_writer("int8", _full_integer), False)),
}


def planned_artifacts(config: ExportConfig) -> dict[str, ArtifactSpec]:
    """Staged name -> spec for the formats and variants `config` asks for (SavedModel staged as `saved_model`),
    `model.keras` first: whatever fails later, the trained model is kept in its native format."""
    planned = {}
    for fmt in sorted(config.formats, key=lambda fmt: fmt != "keras"):
        if fmt == "tflite":
            planned.update(TFLITE_FILES[variant] for variant in config.tflite)
        else:
            planned.update(FORMAT_FILES[fmt])
    return planned


def _operations(model: keras.Model):
    """Every operation of a functional model's graph, nested models' included."""
    for operation in getattr(model, "operations", ()):
        yield operation
        if isinstance(operation, keras.Model):
            yield from _operations(operation)


def _found_by_name(layer_class) -> bool:
    """Whether a loader that knows only a layer's class name finds `layer_class`: a public Keras layer or
    model, or one registered with `keras.saving.register_keras_serializable` (as kerascnn's are)."""
    if layer_class.__module__.startswith("keras.src.models") or getattr(keras.layers, layer_class.__name__, None) \
            is layer_class:
        return True
    return keras.saving.get_registered_object(keras.saving.get_registered_name(layer_class)) is layer_class


def unsupported_artifacts(model: keras.Model, config: ExportConfig) -> dict[str, str]:
    """Planned artifact name -> why this model cannot be stored in that format (dropped, not attempted).

    A TFLite variant is dropped when the machine has less free memory now than converting it needs
    (`tflite_conversion_bytes`): a converter killed for memory would take the whole run with it.

    The legacy HDF5 format stores layers only, by class name: a graph that applies Keras operations
    directly (MobileNetV3's hard-swish `x + 3.0`, for example) is written but does not load again
    ("Only input tensors may be passed as positional arguments"), and neither does a layer class that is
    neither public nor registered (InceptionResNetV2's `CustomScaleLayer`: "Unknown layer"), which the
    `.keras` format finds by its module instead.
    """
    dropped, planned, available = {}, planned_artifacts(config), available_bytes()
    if "model.h5" in planned:
        operations = list(_operations(model))
        ops = sorted({type(op).__name__ for op in operations if not isinstance(op, keras.layers.Layer)})
        unnamed = sorted({type(op).__name__ for op in operations
                          if isinstance(op, keras.layers.Layer) and not _found_by_name(type(op))})
        if ops:
            dropped["model.h5"] = (f"the legacy .h5 format cannot store the Keras operations ({', '.join(ops)}) "
                                   f"in {model.name}'s graph; model.keras holds the same model")
        elif unnamed:
            dropped["model.h5"] = (f"the legacy .h5 format finds layers by class name only and cannot load "
                                   f"{', '.join(unnamed)} (not a public or registered Keras layer) in {model.name}; "
                                   f"model.keras holds the same model")
    for variant, (name, _) in TFLITE_FILES.items():
        needed = tflite_conversion_bytes(model, variant)
        if name in planned and available is not None and needed > available:
            dropped[name] = (f"converting {model.name}'s {weight_bytes(model) / 1e9:.1f} GB of weights to {variant} "
                             f"TFLite needs about {needed / 1e9:.1f} GB of free memory and {available / 1e9:.1f} GB "
                             f"are available; export it later in a process that holds less, `kerascnn export RUN "
                             f"--set 'export.formats=[\"tflite\"]' --set 'export.tflite=[\"{variant}\"]'`, or "
                             f"on a machine with more memory")
    return dropped


def redo_command(run_dir: Path, failed: list[str]) -> str:
    """The `kerascnn export` command that writes only the `failed` artifacts again."""
    formats = sorted({_format_of(name) for name in failed})
    command = f"kerascnn export {run_dir} --set 'export.formats={json.dumps(formats)}'"
    variants = [variant for variant, (file, _) in TFLITE_FILES.items() if file in failed]
    if variants:
        command += f" --set 'export.tflite={json.dumps(variants)}'"
    return command


def _format_of(name: str) -> str:
    if any(name == file for file, _ in TFLITE_FILES.values()):
        return "tflite"
    return next(fmt for fmt, files in FORMAT_FILES.items() if name in files)


def file_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of a file, or of a folder's files in sorted order (names included)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    size = 0
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        size += file.stat().st_size
    return size, digest.hexdigest()


def parity(model: keras.Model, predictor: Predictor, data: ImageData, batch_size: int = 256,
           reference: tuple[np.ndarray, np.ndarray] | None = None, thresholds: list[float] | None = None) -> dict:
    """Agreement of an artifact with the in-memory model over the whole test split.

    Returns `top1_agreement`, `max_abs_diff`, `n`, `accuracy` and `accuracy_drop` (the model's test
    accuracy minus the artifact's). `reference`, the model's (probabilities, labels) from
    `predict_split`, saves recomputing them when several artifacts are checked. For multi-label data
    (multi-hot labels), the agreement is that of the label sets decided at `thresholds` (default 0.5
    each) and the accuracy is the subset accuracy at them.
    """
    expected, labels = reference or predict_split(lambda images: model(images, training=False), data, "test",
                                                  batch_size)
    got, _ = predict_split(lambda images: predictor.predict_proba(images, batch_size), data, "test", batch_size)
    expected = np.asarray(expected)
    if labels.ndim == 2:
        cut = np.asarray(thresholds if thresholds is not None else [0.5] * labels.shape[1], np.float32)[None, :]
        theirs, ours, truth = got >= cut, expected >= cut, labels >= 0.5
        # A score within TIE_TOLERANCE of its threshold is a numerical tie: either decision agrees.
        agrees = ((theirs == ours) | (np.abs(expected - cut) <= TIE_TOLERANCE)).all(axis=1)
        accuracy = float((theirs == truth).all(axis=1).mean())
        accuracy_drop = float((ours == truth).all(axis=1).mean()) - accuracy
    else:
        accuracy = float((got.argmax(1) == labels).mean())
        accuracy_drop = float((expected.argmax(1) == labels).mean()) - accuracy
        # A class the model itself scores within TIE_TOLERANCE of its top class is a numerical tie: an
        # artifact that picks it agrees (seen on barely trained models: flips at |dp| = 3e-8).
        their_pick = np.take_along_axis(expected, got.argmax(1)[:, None], axis=1)[:, 0]
        agrees = their_pick >= expected.max(1) - TIE_TOLERANCE
    return {"top1_agreement": float(agrees.mean()),
            "max_abs_diff": float(np.abs(expected - got).max()), "n": len(labels), "accuracy": accuracy,
            "accuracy_drop": accuracy_drop}


def float_tolerance(model: keras.Model, data: ImageData, reference: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """(the max |dp| a float artifact may show, the model's own graph-vs-eager max |dp| on the test split).

    Every float artifact runs the model as a graph; a deep network can disagree with itself that much between
    `model(x)` and `tf.function(model)(x)`, which no exporter can undo. The bar is FLOAT_TOLERANCE unless
    SELF_NOISE_MULTIPLE times that self-difference is larger."""
    graph = tf.function(lambda images: model(images, training=False))
    noise = float(np.abs(np.asarray(predict_split(graph, data)[0]) - np.asarray(reference[0])).max())
    return max(FLOAT_TOLERANCE, SELF_NOISE_MULTIPLE * noise), noise


def judge(name: str, check: dict, exact: bool, tolerance: float = FLOAT_TOLERANCE) -> dict:
    """Add `criterion` and `passed` to a parity result; fail on a float artifact (top-1 agreement 1 and max |dp|
    within `tolerance`, recorded), warn on a quantized one."""
    if exact:
        passed = check["top1_agreement"] == 1.0 and check["max_abs_diff"] <= tolerance
        if not passed:
            raise ExportError(f"{name} does not predict what the trained model predicts (top-1 agreement "
                              f"{check['top1_agreement']:.4f}, max |dp| {check['max_abs_diff']:.2e} > "
                              f"{tolerance:.1e})")
        return {**check, "criterion": "exact", "tolerance": tolerance, "passed": True}
    passed = (check["top1_agreement"] >= QUANTIZED_MIN_AGREEMENT
              and check["accuracy_drop"] <= QUANTIZED_MAX_ACCURACY_DROP)
    result = {**check, "criterion": "quantized", "passed": passed}
    if not passed:
        result["warning"] = (f"{name} agrees with the trained model on {check['top1_agreement']:.2%} of test images "
                             f"and loses {check['accuracy_drop'] * 100:.2f} accuracy points (needs >= "
                             f"{QUANTIZED_MIN_AGREEMENT:.1%} and <= {QUANTIZED_MAX_ACCURACY_DROP * 100:.1f}); "
                             f"use the float32 or float16 variant, or calibrate on more images "
                             f"(export.calibration_images)")
        log.warning(result["warning"])
    return result


def mediapipe_tasks_parity(name: str, model: keras.Model, path: Path, data: ImageData, exact: bool,
                           reference: tuple[np.ndarray, np.ndarray], thresholds: list[float] | None = None,
                           tolerance: float = FLOAT_TOLERANCE) -> dict:
    """`parity` of a `.tflite` file run by MediaPipe Tasks' `ImageClassifier`, judged like the file
    itself (`judge`), or `{"skipped": reason}` where MediaPipe cannot run it (a 1-channel input kept
    with export.tflite_gray_input, int8 I/O). MediaPipe takes uint8 images, so `reference` is the
    model's output on the test pixels rounded to uint8. Raises ExportError if MediaPipe names the
    classes differently from the model."""
    from kerascnn.mediapipe_tasks import MediaPipeClassifier

    try:
        classifier = MediaPipeClassifier(path)
    except ModelLoadError as exc:
        log.info("%s", exc)
        return {"skipped": str(exc)}
    with classifier:
        result = judge(f"{name} in MediaPipe Tasks", parity(model, classifier, data, reference=reference,
                                                            thresholds=thresholds), exact, tolerance)
        if classifier.class_names != list(data.class_names):
            raise ExportError(f"MediaPipe Tasks reads the classes of {name} as {classifier.class_names[:5]}..., not "
                              f"{list(data.class_names)[:5]}...; nothing was written")
    return result


def write_and_check(name: str, spec: ArtifactSpec, path: Path, context: ExportContext,
                    reference: tuple[np.ndarray, np.ndarray], uint8_reference: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """Write one artifact to `path`, reload it through `Predictor` (and MediaPipe Tasks for `.tflite`) and judge
    it against the model's `reference` output; return its manifest entry. Raises what the writer raises, or
    ExportError when a float artifact disagrees. The reloaded copy lives only as long as this call."""
    model, data, thresholds = context.model, context.data, context.thresholds
    spec.writer(model, path, context)
    predictor = Predictor(path)
    check = judge(name, parity(model, predictor, data, reference=reference, thresholds=thresholds), spec.exact,
                  context.float_tolerance)
    consumers = {"mediapipe_tasks": mediapipe_tasks_parity(name, model, path, data, spec.exact, uint8_reference,
                                                           thresholds, context.float_tolerance)} \
        if name.endswith(".tflite") else {}
    size, sha = file_digest(path)
    return {"bytes": size, "sha256": sha, "parity": check, **input_description(predictor), **consumers}


def publish_version(source: Path, serving_root: Path) -> Path:
    """Move a SavedModel folder into `serving_root/<next integer version>` and return that path.

    It is first moved beside the versions under a hidden name (TF Serving only loads integer
    folders), then renamed, so a server polling the root never sees a partial version. Existing
    versions are never touched; a version taken meanwhile by another export is skipped.
    """
    serving_root.mkdir(parents=True, exist_ok=True)
    incoming = serving_root / f".incoming-{uuid.uuid4().hex}"
    shutil.move(str(source), str(incoming))
    while True:
        version = 1 + max((int(p.name) for p in serving_root.iterdir() if p.name.isdigit()), default=0)
        target = serving_root / str(version)
        try:
            os.rename(incoming, target)  # atomic; refuses a version folder that has content
            return target
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise


def _check_inputs(planned: dict, data: ImageData, config: ExportConfig) -> None:
    if "model.onnx" in planned:
        import importlib.util

        if not all(importlib.util.find_spec(name) for name in ("tf2onnx", "onnxruntime")):
            raise ConfigError("export.formats includes onnx, which needs tf2onnx and onnxruntime: "
                              "pip install 'kerascnn[onnx]', or drop onnx from export.formats")
    if "model_int8.tflite" in planned and not data.counts.get("train"):
        raise DataError("export.tflite includes int8, which calibrates on training images, but the data has no "
                        "training images; load the run's dataset or drop int8 from export.tflite")
    if not data.counts.get("test"):
        raise DataError("exporting checks each artifact on the test split, but the data has no test images")


def _relative_sizes(artifacts: dict, run_dir: Path) -> None:
    """Add `size_vs_tflite_float32` (bytes / bytes of model.tflite) to every entry, where one exists."""
    base = artifacts.get(FLOAT32_TFLITE, {}).get("bytes")
    if base is None and (run_dir / FLOAT32_TFLITE).is_file():
        base = (run_dir / FLOAT32_TFLITE).stat().st_size
    for entry in artifacts.values():
        entry["size_vs_tflite_float32"] = round(entry["bytes"] / base, 4) if base else None


def export(model: keras.Model, run_dir: str | Path, data: ImageData, config: ExportConfig | None = None,
           thresholds: list[float] | None = None, dropped: dict[str, str] | None = None) -> dict:
    """Write, reload and verify every artifact `config` asks for; return the manifest's `artifacts`.

    Each entry (keyed by the path relative to `run_dir`, or absolute for a SavedModel in a serving
    root elsewhere): `bytes`, `sha256`, `size_vs_tflite_float32` and `parity` (`top1_agreement`,
    `max_abs_diff`, `n`, `accuracy`, `accuracy_drop`, `criterion`, `passed`, and `warning` when a
    quantized variant misses its bar); `.tflite` files also have `mediapipe_tasks`, the same parity
    for MediaPipe Tasks' `ImageClassifier` running the file (or `skipped` with MediaPipe's reason).
    A multi-label model's `thresholds` (one a class) are embedded in the .tflite/.onnx metadata and the
    SavedModel's assets.extra. The SavedModel goes to the next integer version of `config.serving_root` (default
    `run_dir/saved_model`). `dropped`: the artifacts not to attempt, as `unsupported_artifacts` found them for
    the caller's manifest (default: found here). Raises ExportError, leaving existing files
    untouched, if a float artifact disagrees with the model on any test image; DataError if int8 is
    asked for without training images to calibrate on.

    Example:
        artifacts = export(model, "saved_models/my-run", data, ExportConfig(tflite=("float32", "int8")))
    """
    config = config or ExportConfig()
    run_dir = Path(run_dir)
    planned = planned_artifacts(config)
    for name in unsupported_artifacts(model, config) if dropped is None else dropped:
        planned.pop(name, None)
    _check_inputs(planned, data, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    serving_root = Path(config.serving_root) if config.serving_root else run_dir / SAVED_MODEL_DIR
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=run_dir))
    try:
        (staging / LABELS_FILE).write_text("\n".join(data.class_names) + "\n", encoding="utf-8")
        reference = predict_split(lambda images: model(images, training=False), data)
        # the graph pass only where a float artifact is judged by it (an int8-only export needs none)
        tolerance, self_noise = float_tolerance(model, data, reference) if any(
            spec.exact for spec in planned.values()) else (FLOAT_TOLERANCE, 0.0)
        if tolerance > FLOAT_TOLERANCE:
            log.warning("%s gives other probabilities as a graph than called eagerly (max |dp| %.1e on the test "
                        "images): its float artifacts are held to |dp| <= %.1e instead of %.0e", model.name, self_noise,
                        tolerance, FLOAT_TOLERANCE)
        context = ExportContext(model, list(data.class_names), data, config, staging / ".scratch",
                                run_name=run_dir.resolve().name, thresholds=thresholds, float_tolerance=tolerance)
        uint8_reference = predict_split(lambda images: model(tf.clip_by_value(tf.round(images), 0, 255), training=False),
                                        data) if any(name.endswith(".tflite") for name in planned) else None
        checks, failed = {}, {}
        for name, spec in planned.items():
            try:
                checks[name] = write_and_check(name, spec, staging / name, context, reference, uint8_reference)
            except Exception as exc:  # writers raise whatever their library raises
                failed[name] = first_line(exc)
            finally:  # the artifact's converter and reloaded copy are gone: the next one starts without them
                return_freed_memory()
        move_into_place(staging / LABELS_FILE, run_dir / LABELS_FILE)
        artifacts = {}
        for name, entry in checks.items():
            if name == SAVED_MODEL_DIR:
                target = publish_version(staging / name, serving_root)
                name = target.relative_to(run_dir).as_posix() if target.is_relative_to(run_dir) else str(target)
            else:
                move_into_place(staging / name, run_dir / name)
            artifacts[name] = entry
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _relative_sizes(artifacts, run_dir)
    if failed:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
        kept = f"the other {len(artifacts)} artifacts were written" if artifacts else "nothing was written"
        raise PartialExport(f"export failed for {', '.join(failed)} ({reasons}); {kept}; write them again with "
                            f"`{redo_command(run_dir, list(failed))}`", artifacts, failed)
    return artifacts
