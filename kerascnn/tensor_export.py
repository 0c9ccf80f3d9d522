"""Export models whose output is a tensor (pixels, images), not class probabilities, with parity on outputs.

The autoencoder (pixels in, pixels out) and the DCGAN generator (latent in, image out) go through
the same steps as a classifier's export (`kerascnn.export`): artifacts are written into a staging
folder with Keras' own writers (`model.save` for .keras and legacy .h5, `ExportArchive` for the
SavedModel, `TFLiteConverter` for float32 TFLite), reloaded through `kerascnn.predict`'s runtimes
(Keras with safe_mode, the SavedModel's `serving_default`, LiteRT), compared output for output with
the in-memory model, and only then moved into place. What differs is the parity: the largest
absolute difference of the outputs (in the model's output units, 0..255 pixels here) instead of
top-1 agreement, so it lives here rather than as options of the classifier's exporter.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kerascnn.errors import ExportError
from kerascnn.export import file_digest, publish_version, write_h5, write_keras
from kerascnn.predict import runtime_for
from kerascnn.rundir import SAVED_MODEL_DIR, move_into_place

FORMATS = ("keras", "h5", "saved_model", "tflite")
FORMAT_FILES = {"keras": "model.keras", "h5": "model.h5", "saved_model": SAVED_MODEL_DIR, "tflite": "model.tflite"}
# Float32 artifacts reproduce the model up to rounding: measured <= 2e-3 of a 0..255 pixel on the
# autoencoder and generator (TFLite fuses ops differently); 0.05 leaves room without hiding a real error.
PIXEL_TOLERANCE = 0.05


def write_saved_model(model: keras.Model, path: Path, input_name: str, output_name: str) -> None:
    """A SavedModel whose `serving_default` maps `input_name` (float32, batch first) to `output_name`."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def serving_default(inputs):
        return {output_name: model(inputs, training=False)}

    archive.add_endpoint("serving_default", serving_default)
    archive.write_out(str(path), verbose=False)


def write_tflite(model: keras.Model, path: Path, scratch: Path) -> None:
    """A float32 TFLite flatbuffer, converted from the model's plain SavedModel."""
    plain = scratch / "plain_saved_model"
    model.export(str(plain), verbose=False)
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(plain)).convert())


def output_parity(expected: np.ndarray, runtime, inputs: np.ndarray, batch_size: int = 256) -> dict:
    """How far an artifact's outputs are from the model's on the same inputs."""
    got = np.concatenate([np.asarray(runtime(inputs[i:i + batch_size])) for i in range(0, len(inputs), batch_size)])
    if got.shape != expected.shape:
        return {"n": len(inputs), "max_abs_diff": None, "mean_abs_diff": None, "shape": list(got.shape),
                "criterion": "outputs", "passed": False}
    difference = np.abs(got.astype(np.float64) - expected)
    max_diff = float(difference.max())
    return {"n": len(inputs), "max_abs_diff": max_diff, "mean_abs_diff": float(difference.mean()),
            "tolerance": PIXEL_TOLERANCE, "criterion": "outputs", "passed": max_diff <= PIXEL_TOLERANCE}


def export_tensor_model(model: keras.Model, run_dir: str | Path, inputs: np.ndarray, input_name: str = "images",
                        output_name: str = "pixels", formats=FORMATS) -> dict:
    """Write, reload and verify `formats` of `model` in `run_dir`; return the manifest's `artifacts`.

    Args:
        model: a functional Keras model with one input and one output.
        run_dir: the run directory; the SavedModel goes to its `saved_model/<next version>`.
        inputs: the inputs parity is checked on (e.g. the noisy test images, or a fixed latent batch).
        input_name, output_name: the SavedModel signature's input and output names.
        formats: any of keras, h5, saved_model, tflite (default all four).

    Raises ExportError, leaving existing files untouched, if an artifact's outputs differ from the
    model's by more than PIXEL_TOLERANCE.

    Example:
        artifacts = export_tensor_model(autoencoder, "saved_models/ae", noisy_test_images)
    """
    run_dir = Path(run_dir)
    inputs = np.asarray(inputs, np.float32)
    expected = np.concatenate([np.asarray(model(inputs[i:i + 256], training=False), np.float64)
                               for i in range(0, len(inputs), 256)])
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=run_dir))
    try:
        checks = {}
        for fmt in formats:
            name = FORMAT_FILES[fmt]
            path = staging / name
            if fmt == "keras":
                write_keras(model, path, None)
            elif fmt == "h5":
                write_h5(model, path, None)
            elif fmt == "saved_model":
                write_saved_model(model, path, input_name, output_name)
            else:
                write_tflite(model, path, staging / ".scratch")
            check = output_parity(expected, runtime_for(path), inputs)
            if not check["passed"]:
                raise ExportError(f"{name} does not reproduce the model's outputs (max |delta| "
                                  f"{check['max_abs_diff']}, tolerance {PIXEL_TOLERANCE}); nothing was written")
            size, sha = file_digest(path)
            checks[name] = {"bytes": size, "sha256": sha, "parity": check}
        artifacts = {}
        for name, entry in checks.items():
            if name == SAVED_MODEL_DIR:
                name = publish_version(staging / name, run_dir / SAVED_MODEL_DIR).relative_to(run_dir).as_posix()
            else:
                move_into_place(staging / name, run_dir / name)
            artifacts[name] = entry
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return artifacts
