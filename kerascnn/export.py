"""Write every deployable artifact of a trained model and prove each predicts what the model predicts.

Artifacts are written into a staging folder inside the run directory, reloaded through the same
`Predictor` a user would use, compared with the in-memory model on the whole test split
(top-1 agreement, max |delta p|), and only then moved into place. A failed or killed export
therefore never leaves a half-written artifact where a finished one is expected.

Writers use the ecosystem's own exporters: `model.save` (.keras, legacy .h5), Keras
`ExportArchive` (SavedModel with a `serving_default` signature), `tf.lite.TFLiteConverter`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from kerascnn.config import ExportConfig
from kerascnn.data.datasets import ImageData
from kerascnn.errors import ExportError
from kerascnn.evaluation import classification_metrics
from kerascnn.models.registry import model_input_shape
from kerascnn.predict import Predictor

FLOAT_TOLERANCE = 1e-4
SAVED_MODEL_DIR = "saved_model"


def write_keras(model: keras.Model, path: Path, **_) -> None:
    model.save(path)


def write_h5(model: keras.Model, path: Path, **_) -> None:
    model.save(path)  # the .h5 suffix selects Keras' legacy HDF5 writer


def write_saved_model(model: keras.Model, path: Path, class_names: list[str], **_) -> None:
    """A TF-Serving SavedModel whose `serving_default` maps raw pixels to probabilities, id and name."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    names = tf.constant(class_names)

    @tf.function(input_signature=[tf.TensorSpec([None, *model_input_shape(model)], tf.float32, name="images")])
    def serving_default(images):
        probabilities = model(images, training=False)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_id": class_id, "class_name": tf.gather(names, class_id)}

    archive.add_endpoint("serving_default", serving_default)
    archive.write_out(str(path), verbose=False)


def tflite_converter(model: keras.Model, workdir: Path) -> tf.lite.TFLiteConverter:
    """A converter over the model's plain SavedModel export (quiet, unlike from_keras_model)."""
    model.export(str(workdir), verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(str(workdir))


def write_tflite_float32(model: keras.Model, path: Path, **_) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        path.write_bytes(tflite_converter(model, Path(workdir) / "saved_model").convert())


# file name -> (writer, is a float artifact that must agree exactly). Each export format maps to
# the files it produces; TFLite variants are added per `export.tflite`.
FORMAT_FILES: dict[str, dict[str, tuple[Callable, bool]]] = {
    "keras": {"model.keras": (write_keras, True)},
    "h5": {"model.h5": (write_h5, True)},
    "saved_model": {f"{SAVED_MODEL_DIR}/1": (write_saved_model, True)},
}
TFLITE_FILES: dict[str, tuple[str, Callable, bool]] = {
    "float32": ("model.tflite", write_tflite_float32, True),
}


def planned_artifacts(config: ExportConfig) -> dict[str, tuple[Callable, bool]]:
    """Relative path -> (writer, must agree exactly) for the formats and variants `config` asks for."""
    planned = {}
    for fmt in config.formats:
        if fmt == "tflite":
            planned.update({name: (writer, exact) for name, writer, exact in
                            (TFLITE_FILES[v] for v in config.tflite)})
        else:
            planned.update(FORMAT_FILES[fmt])
    return planned


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


def parity(model: keras.Model, predictor: Predictor, data: ImageData, batch_size: int = 256) -> dict:
    """Agreement of an artifact with the in-memory model over the whole test split."""
    agree, max_diff, n = 0, 0.0, 0
    probabilities, labels = [], []
    for images, batch_labels in data.test.batch(batch_size).as_numpy_iterator():
        expected = np.asarray(model(images, training=False))
        got = predictor.predict_proba(images, batch_size)
        agree += int((expected.argmax(1) == got.argmax(1)).sum())
        max_diff = max(max_diff, float(np.abs(expected - got).max()))
        n += len(images)
        probabilities.append(got)
        labels.append(batch_labels)
    metrics = classification_metrics(np.concatenate(probabilities), np.concatenate(labels))
    return {"top1_agreement": agree / n, "max_abs_diff": max_diff, "n": n, "accuracy": metrics["accuracy"]}


def _move_into_place(source: Path, target: Path) -> None:
    """Replace `target` by `source` (file or folder) with renames on the same filesystem."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old)
    else:
        os.replace(source, target)


def export(model: keras.Model, run_dir: str | Path, data: ImageData, config: ExportConfig | None = None) -> dict:
    """Write, reload and verify every artifact `config` asks for; return the manifest's `artifacts`.

    Each entry: `bytes`, `sha256` and `parity` (`top1_agreement`, `max_abs_diff`, `n`, `accuracy`)
    measured against `model` on `data.test`. Raises ExportError, leaving the run directory's existing
    files untouched, if a float artifact disagrees with the model on any test image.

    Example:
        artifacts = export(model, "saved_models/my-run", data)
    """
    config = config or ExportConfig()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "labels.txt").write_text("\n".join(data.class_names) + "\n", encoding="utf-8")
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=run_dir))
    try:
        shutil.copy(run_dir / "labels.txt", staging / "labels.txt")
        artifacts = {}
        for relative, (writer, exact) in planned_artifacts(config).items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            writer(model, path, class_names=data.class_names, data=data)
            check = parity(model, Predictor(path), data)
            if exact and (check["top1_agreement"] < 1.0 or check["max_abs_diff"] > FLOAT_TOLERANCE):
                raise ExportError(f"{relative} does not predict what the trained model predicts (top-1 agreement "
                                  f"{check['top1_agreement']:.4f}, max |dp| {check['max_abs_diff']:.2e}); "
                                  f"nothing was written")
            size, sha = file_digest(path)
            artifacts[relative] = {"bytes": size, "sha256": sha, "parity": check}
        for relative in artifacts:
            _move_into_place(staging / relative, run_dir / relative)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return artifacts
