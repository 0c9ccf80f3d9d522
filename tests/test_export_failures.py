"""Exports that fail keep what worked; formats a model cannot be stored in are dropped with the reason."""

import json
import os
import signal

import keras
import pytest

from kerascnn import cli
from kerascnn.config import DataConfig, ExportConfig, load_config
from kerascnn.data.datasets import load_data
from kerascnn.errors import ConfigError, PartialExport
from kerascnn import export as export_module
from kerascnn.export import (FORMAT_FILES, TFLITE_FILES, ArtifactSpec, convert_in_fresh_process, export,
                             tflite_writer, unsupported_artifacts)
from kerascnn.models import build_model
from kerascnn.rundir import TRAINED_MODEL
from kerascnn.runner import run

FAST = ExportConfig(formats=("keras", "h5", "saved_model", "tflite"), tflite=("float32",))


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits", classes=(0, 1, 2)))


def _broken_saved_model(monkeypatch):
    def fail(model, path, context):
        raise RuntimeError("simulated SavedModel writer failure\nsecond line")

    monkeypatch.setitem(FORMAT_FILES, "saved_model", {"saved_model": ArtifactSpec(fail, True)})


def test_h5_is_dropped_with_its_reason_for_a_graph_of_keras_operations(digits, tmp_path):
    """MobileNetV3's hard-swish applies `x + 3.0` directly: legacy .h5 writes it but cannot load it again."""
    inputs = keras.Input(digits.input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.ReLU(6.0)(keras.layers.Dense(8)(x) + 3.0)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="hard_swish_net")
    reason = unsupported_artifacts(model, FAST)["model.h5"]
    assert "cannot store the Keras operations (Add) in hard_swish_net's graph" in reason
    artifacts = export(model, tmp_path, digits, FAST)
    assert list(artifacts) == ["model.keras", "saved_model/1", "model.tflite"]
    assert not (tmp_path / "model.h5").exists()
    assert unsupported_artifacts(build_model("mlp", digits.input_shape, 3, hidden=[8]), FAST) == {}


def test_h5_is_dropped_for_a_layer_class_a_loader_cannot_find_by_name(digits):
    """InceptionResNetV2's CustomScaleLayer is neither public nor registered: `.h5` finds layers by class name
    only, so its reload failed ("Unknown layer") in `kerascnn bench backbones --train`; now it is dropped."""

    class UnregisteredScale(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 0.5

    inputs = keras.Input(digits.input_shape)
    x = UnregisteredScale()(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="scaled_net")
    reason = unsupported_artifacts(model, FAST)["model.h5"]
    assert "cannot load UnregisteredScale (not a public or registered Keras layer) in scaled_net" in reason
    resnet = build_model("resnet_small", digits.input_shape, 3, stem=4, widths=[8], blocks=[1], random_flip=True,
                         test_time_flip=True)  # kerascnn's own layers are registered: .h5 stays
    assert unsupported_artifacts(resnet, FAST) == {}


def test_a_failing_format_keeps_the_others_and_says_how_to_redo_it(digits, tmp_path, monkeypatch):
    _broken_saved_model(monkeypatch)
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=[16])
    with pytest.raises(PartialExport) as error:
        export(model, tmp_path, digits, ExportConfig(formats=("tflite", "saved_model", "keras"), tflite=("float32",)))
    assert error.value.exit_code == 1
    assert error.value.failed == {"saved_model": "simulated SavedModel writer failure"}
    assert list(error.value.artifacts) == ["model.keras", "model.tflite"]  # model.keras first
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "model.tflite").is_file()
    message = str(error.value)
    assert "\n" not in message and "export failed for saved_model" in message
    assert f"`kerascnn export {tmp_path} --set 'export.formats=[\"saved_model\"]'`" in message


def test_a_run_with_a_failed_export_records_it_and_resumes_straight_to_export(tmp_path, monkeypatch, capsys):
    config = load_config(values={"run.output": str(tmp_path), "run.name": "r", "model.name": "mlp",
                                 "model.options": {"hidden": [16]}, "data.classes": [0, 1, 2], "train.epochs": 1,
                                 "train.verbose": 0, "train.tensorboard": False, "evaluate.report": False,
                                 "export.formats": ["keras", "saved_model"]})
    _broken_saved_model(monkeypatch)
    assert cli.main(["train", "--config", _write(tmp_path / "c.toml", config)]) == 1
    out, err = capsys.readouterr()
    run_dir = tmp_path / "r"
    assert "saved_model" in out and "FAILED: simulated SavedModel writer failure" in out  # the table names it
    assert err.startswith("kerascnn: error: export failed for saved_model") and err.count("\n") == 1
    assert f"kerascnn train --resume {run_dir}" in err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["failed_artifacts"] == {"saved_model": "simulated SavedModel writer failure"}
    assert list(manifest["artifacts"]) == ["model.keras"] and (run_dir / TRAINED_MODEL).is_file()
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="accepts --set export.\* only"):
        run(resume=run_dir, export_overrides=["train.epochs=3"])
    result = run(resume=run_dir, export_overrides=['export.formats=["keras", "tflite"]', 'export.tflite=["float32"]'])
    assert set(result.manifest["artifacts"]) == {"model.keras", "model.tflite"}
    assert result.manifest["failed_artifacts"] == {} and result.manifest["epochs_run"] == 1
    assert not (run_dir / TRAINED_MODEL).exists()
    assert 'formats = [\n    "keras",\n    "tflite",\n]' in (run_dir / "config.toml").read_text()


def _write(path, config):
    path.write_text(config.to_toml(), encoding="utf-8")
    return str(path)


def test_tflite_inputs_say_raw_pixels_and_the_manifest_states_the_int8_scale_as_the_file_has_it(digits, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=[16])
    artifacts = export(model, tmp_path, digits, ExportConfig(formats=("tflite",), tflite=("float32", "int8")))
    assert artifacts["model.tflite"]["input"] == {"name": "images_raw_pixels_0_255", "dtype": "float32",
                                                  "range": "raw pixels 0..255"}
    details = Interpreter(model_path=str(tmp_path / "model_int8.tflite")).get_input_details()[0]
    described = artifacts["model_int8.tflite"]["input"]
    assert described["name"] == details["name"] == "images_raw_pixels_0_255" and described["dtype"] == "uint8"
    assert (described["scale"], described["zero_point"]) == (float(details["quantization"][0]),
                                                             details["quantization"][1])


def _converter_killed(converter, calibration, int8_io):
    """Runs in the converter's own process: dies there as the out-of-memory killer would end it."""
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_large_model_converts_to_tflite_in_its_own_process_with_parity(digits, tmp_path, monkeypatch):
    """Above TFLITE_IN_PROCESS_MAX_BYTES the converter runs in a fresh process, which gives back the memory the
    converter keeps (convnext_xlarge was killed for memory on 24 GB without it): same files, same parity."""
    model = build_model("mlp", digits.input_shape, 3, hidden=[8])
    monkeypatch.setattr(export_module, "TFLITE_IN_PROCESS_MAX_BYTES", 0)
    spawned = []
    monkeypatch.setattr(export_module, "convert_in_fresh_process",
                        lambda job, path: spawned.append(job.quantize.__name__) or convert_in_fresh_process(job, path))
    artifacts = export(model, tmp_path, digits, ExportConfig(formats=("tflite",), tflite=("float32", "int8")))
    assert spawned == ["_float32", "_full_integer"]
    assert artifacts["model.tflite"]["parity"]["passed"] and artifacts["model.tflite"]["parity"]["max_abs_diff"] < 1e-5
    assert artifacts["model_int8.tflite"]["parity"]["top1_agreement"] >= 0.99
    assert artifacts["model_int8.tflite"]["input"]["dtype"] == "uint8"


def test_a_converter_process_killed_for_memory_fails_its_artifact_alone(digits, tmp_path, monkeypatch):
    model = build_model("mlp", digits.input_shape, 3, hidden=[8])
    monkeypatch.setattr(export_module, "TFLITE_IN_PROCESS_MAX_BYTES", 0)
    monkeypatch.setitem(TFLITE_FILES, "float32", ("model.tflite", ArtifactSpec(tflite_writer("float32",
                                                                                           _converter_killed), True)))
    with pytest.raises(PartialExport) as error:
        export(model, tmp_path, digits, ExportConfig(formats=("keras", "tflite"), tflite=("float32",)))
    assert list(error.value.failed) == ["model.tflite"] and list(error.value.artifacts) == ["model.keras"]
    assert "the system killed the converter's process, most likely for memory" in error.value.failed["model.tflite"]
    assert (tmp_path / "model.keras").is_file() and not (tmp_path / "model.tflite").exists()


def test_a_tflite_variant_the_machine_lacks_the_memory_for_is_dropped_with_the_reason(digits, tmp_path, monkeypatch):
    """convnext_xlarge's int8 conversion needs about 13.6 GB in its own process: on a machine without that much
    free, the variant is dropped beforehand with what it needs, instead of a converter killed mid-export."""
    model = build_model("mlp", digits.input_shape, 3, hidden=[8])
    config = ExportConfig(formats=("keras", "tflite"), tflite=("float32", "int8"))
    assert unsupported_artifacts(model, config) == {}
    monkeypatch.setattr(export_module, "available_bytes", lambda: 500 * 10**6)
    dropped = unsupported_artifacts(model, config)
    assert set(dropped) == {"model.tflite", "model_int8.tflite"}
    assert "to int8 TFLite needs about 0.8 GB of free memory and 0.5 GB are available" in dropped["model_int8.tflite"]
    assert """--set 'export.tflite=["int8"]'""" in dropped["model_int8.tflite"]
    artifacts = export(model, tmp_path, digits, config, dropped=dropped)
    assert list(artifacts) == ["model.keras"] and not list(tmp_path.glob("*.tflite"))
