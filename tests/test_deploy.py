"""Export of a digits run: SavedModel signatures and versions, TFLite variants, parity report, atomicity."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kerascnn.cli import MEDIAPIPE_ROW, main, print_artifacts
from kerascnn.config import ExportConfig, load_config
from kerascnn.errors import ConfigError, DataError, ExportError, PartialExport
from kerascnn.export import TFLITE_FILES, ArtifactSpec, ExportContext, _dynamic_range, export, file_digest, \
    tflite_writer
from kerascnn.predict import load, to_pixels
from kerascnn.runner import run

ALL_VARIANTS = 'export.tflite=["float32","float16","dynamic","int8"]'
FLOAT_ARTIFACTS = ["model.keras", "model.h5", "saved_model/1", "model.tflite"]
QUANTIZED_ARTIFACTS = ["model_float16.tflite", "model_dynamic.tflite", "model_int8.tflite"]
SAVED_MODEL_CLI = str(Path(sys.executable).parent / "saved_model_cli")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The digits preset, trained as shipped and exported with every TFLite variant."""
    config = load_config(preset="digits", overrides=[
        "train.verbose=0", "train.tensorboard=false", ALL_VARIANTS,
        f"run.output='{tmp_path_factory.mktemp('runs')}'", "run.name='digits'"])
    return run(config)


def snapshot(folder: Path) -> dict:
    """Relative path -> (bytes, sha256) of everything under `folder`."""
    return {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_has_a_parity_report_for_every_artifact(digits_run):
    artifacts = json.loads((digits_run.run_dir / "manifest.json").read_text())["artifacts"]
    assert list(artifacts) == FLOAT_ARTIFACTS + QUANTIZED_ARTIFACTS
    model_accuracy = digits_run.test_metrics["accuracy"]
    for name, entry in artifacts.items():
        assert (entry["bytes"], entry["sha256"]) == file_digest(digits_run.run_dir / name)
        parity = entry["parity"]
        assert parity["n"] == digits_run.data.counts["test"]
        assert parity["accuracy_drop"] == pytest.approx(model_accuracy - parity["accuracy"])
        assert entry["size_vs_tflite_float32"] == pytest.approx(entry["bytes"] / artifacts["model.tflite"]["bytes"],
                                                                abs=1e-4)
    for name in FLOAT_ARTIFACTS:
        parity = artifacts[name]["parity"]
        assert (parity["criterion"], parity["passed"], parity["top1_agreement"]) == ("exact", True, 1.0)
        assert parity["max_abs_diff"] <= 1e-4
    for name in QUANTIZED_ARTIFACTS:
        parity = artifacts[name]["parity"]
        assert parity["criterion"] == "quantized"
        assert parity["passed"] == (parity["top1_agreement"] >= 0.995 and parity["accuracy_drop"] <= 0.005)
        assert ("warning" in parity) != parity["passed"]
        assert parity["top1_agreement"] >= 0.99
    assert artifacts["model_int8.tflite"]["size_vs_tflite_float32"] < 0.5


def test_int8_variant_is_full_integer_with_uint8_input_and_output(digits_run):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(digits_run.run_dir / "model_int8.tflite"))
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    float_tensors = [t["name"] for t in interpreter.get_tensor_details() if t["dtype"] == np.float32]
    assert float_tensors == []  # nothing silently left in float


def test_train_prints_the_parity_table(digits_run, capsys):
    print_artifacts(digits_run.manifest["artifacts"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["artifact", "bytes", "vs", "tflite", "accuracy", "top-1", "agree", "max", "|dp|",
                                "check"]
    rows = [line for line in lines[1:] if not line.startswith(MEDIAPIPE_ROW)]
    assert [line.split()[0] for line in rows[:7]] == FLOAT_ARTIFACTS + QUANTIZED_ARTIFACTS
    assert rows[3].split()[2] == "1.00x"
    tflite_rows = [i for i, line in enumerate(lines) if line.split()[0].endswith(".tflite")]
    assert all(lines[i + 1].startswith(MEDIAPIPE_ROW) for i in tflite_rows)  # MediaPipe Tasks under each


def encoded(pixels: np.ndarray, fmt: str, size=None, mode="L") -> bytes:
    import io

    image = Image.fromarray(pixels).convert(mode)
    image = image.resize(size) if size else image
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_bytes_signature_matches_raw_pixels_for_any_format_size_and_channels(digits_run):
    saved_model = tf.saved_model.load(str(digits_run.run_dir / "saved_model/1"))
    by_pixels, by_bytes = saved_model.signatures["serving_default"], saved_model.signatures["serving_bytes"]
    assert by_bytes.structured_input_signature[1]["image_bytes"].dtype == tf.string
    test_images = next(digits_run.data.test.batch(4).as_numpy_iterator())[0].astype(np.uint8)[..., 0]
    contents = [encoded(test_images[0], "PNG"), encoded(test_images[1], "BMP", (20, 20), "RGB"),
                encoded(test_images[2], "GIF", (12, 16), "RGB"), encoded(test_images[3], "JPEG", (32, 32), "RGB")]
    got = by_bytes(image_bytes=tf.constant(contents))
    expected = by_pixels(images=tf.constant(to_pixels(contents, digits_run.data.input_shape)))
    np.testing.assert_allclose(got["probabilities"].numpy(), expected["probabilities"].numpy(), atol=1e-6)
    assert list(got["class_name"].numpy()) == list(expected["class_name"].numpy())
    # an image at the model's size decodes to exactly the pixels the test split holds
    np.testing.assert_array_equal(to_pixels([contents[0]], digits_run.data.input_shape)[0, ..., 0], test_images[0])


def test_saved_model_cli_lists_both_signatures_and_agrees_with_kerascnn_predict(digits_run, tmp_path, capsys):
    saved_model = digits_run.run_dir / "saved_model/1"
    shown = subprocess.run([SAVED_MODEL_CLI, "show", "--all", "--dir", str(saved_model)], capture_output=True,
                           text=True, check=True).stdout
    assert "signature_def['serving_default']" in shown and "signature_def['serving_bytes']" in shown
    assert "DT_STRING" in shown.split("signature_def['serving_bytes']")[1].split("signature_def")[0]
    image = next(digits_run.data.test.skip(5).take(1).as_numpy_iterator())[0].astype(np.uint8)[..., 0]
    Image.fromarray(image).resize((30, 30)).save(tmp_path / "digit.png")
    np.save(tmp_path / "digit.npy", np.array([(tmp_path / "digit.png").read_bytes()], dtype=object))
    ran = subprocess.run([SAVED_MODEL_CLI, "run", "--dir", str(saved_model), "--tag_set", "serve", "--signature_def",
                          "serving_bytes", "--inputs", f"image_bytes={tmp_path / 'digit.npy'}"],
                         capture_output=True, text=True, check=True).stdout
    served_class = ran.split("Result for output key class_name:")[1].split()[0]  # e.g. [b'7']
    assert main(["predict", str(saved_model), str(tmp_path / "digit.png"), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)[0]["predictions"][0]["class"]
    assert served_class == f"[b'{predicted}']"


def test_export_into_a_serving_root_adds_versions_and_keeps_old_ones(digits_run, tmp_path, capsys):
    root = tmp_path / "serving" / "digits"
    args = ["export", str(digits_run.run_dir), "--serving-root", str(root), "--set", 'export.formats=["saved_model"]']
    assert main(args) == 0
    first = snapshot(root / "1")
    assert main(args) == 0
    assert sorted(p.name for p in root.iterdir()) == ["1", "2"]  # no staging folders left behind
    assert snapshot(root / "1") == first
    artifacts = json.loads((digits_run.run_dir / "manifest.json").read_text())["artifacts"]
    assert {str(root / "1"), str(root / "2"), "saved_model/1"} <= set(artifacts)
    assert load(root).predict_proba(np.zeros((1, 8, 8, 1))).shape == (1, 10)  # the newest version serves
    assert str(root / "2") in capsys.readouterr().out


def test_a_float_artifact_that_disagrees_fails_alone_and_is_not_written(digits_run, monkeypatch):
    before = snapshot(digits_run.run_dir)
    # model.tflite written with dynamic-range quantization can no longer match the model exactly
    monkeypatch.setitem(TFLITE_FILES, "float32",
                        ("model.tflite", ArtifactSpec(tflite_writer("float32", _dynamic_range), True)))
    with pytest.raises(PartialExport, match="model.tflite does not predict what the trained model predicts") as error:
        export(digits_run.model, digits_run.run_dir, digits_run.data,
               ExportConfig(formats=("keras", "saved_model", "tflite"), tflite=("float32",)))
    assert list(error.value.failed) == ["model.tflite"] and "kerascnn export" in str(error.value)
    after = snapshot(digits_run.run_dir)
    assert after["model.tflite"] == before["model.tflite"]  # the failed artifact never replaces the old file
    kept = set(error.value.artifacts)  # what worked is kept, with parity
    assert "model.keras" in kept and any(name.startswith("saved_model/") for name in kept)
    assert all(entry["parity"]["passed"] for entry in error.value.artifacts.values())
    assert not list(digits_run.run_dir.glob(".*"))


def test_an_int8_model_that_misses_its_bar_is_flagged_loudly(digits_run, tmp_path, monkeypatch, caplog, capsys):
    def blank_calibration(context):
        height, width, channels = context.data.input_shape
        for _ in range(8):  # a gray model's TFLite files take RGB images (kerascnn.tflite_input)
            yield [np.zeros((1, height, width, 3 if context.rgb_input else channels), np.float32)]

    monkeypatch.setattr(ExportContext, "representative_dataset", blank_calibration)
    with caplog.at_level(logging.WARNING, logger="kerascnn.export"):
        artifacts = export(digits_run.model, tmp_path, digits_run.data,
                           ExportConfig(formats=("tflite",), tflite=("int8",)))
    parity = artifacts["model_int8.tflite"]["parity"]
    assert parity["passed"] is False and "model_int8.tflite agrees with the trained model on" in parity["warning"]
    assert parity["warning"] in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kerascnn"):
        print_artifacts(artifacts)
    out = capsys.readouterr().out
    assert "FAILED" in out and parity["warning"] in caplog.text  # the table flags it, the warning is said
    assert (tmp_path / "model_int8.tflite").is_file()  # written, but flagged


def test_int8_io_option_and_missing_calibration_data(digits_run, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    config = ExportConfig(formats=("tflite",), tflite=("int8",), int8_io="int8")
    no_training = dataclasses.replace(digits_run.data, train=digits_run.data.train.take(0),
                                      counts={**digits_run.data.counts, "train": 0})
    with pytest.raises(DataError, match="int8, which calibrates on training images"):
        export(digits_run.model, tmp_path / "run", no_training, config)
    assert not (tmp_path / "run").exists()
    export(digits_run.model, tmp_path / "run", digits_run.data, config)
    interpreter = Interpreter(model_path=str(tmp_path / "run" / "model_int8.tflite"))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert load(tmp_path / "run" / "model_int8.tflite").predict_proba(np.zeros((2, 8, 8))).shape == (2, 10)


def test_export_config_refuses_unknown_variants_and_io_types():
    with pytest.raises(ConfigError, match="did you mean 'int8'"):
        load_config(overrides=['export.tflite=["int4"]'])
    with pytest.raises(ConfigError, match="export.int8_io must be one of uint8, int8"):
        load_config(overrides=["export.int8_io='float32'"])
    with pytest.raises(ConfigError, match="export.calibration_images must be positive"):
        ExportConfig(calibration_images=0)
