"""Every builder through every export format: written, reloaded, and predicting what the model predicts."""

import json
import logging
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerascnn.config import DataConfig, ExportConfig
from kerascnn.data.datasets import load_data
from kerascnn.errors import ExportError
from kerascnn.evaluation import predict_split
from kerascnn.export import export, float_tolerance, judge
from kerascnn.models import build_model
from kerascnn.predict import load

ARTIFACTS = ["model.keras", "model.h5", "saved_model/1", "model.tflite", "model_int8.tflite"]
FLOAT_ARTIFACTS = ARTIFACTS[:4]


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits", classes=(0, 1, 2)))


@pytest.mark.parametrize("name", ["mlp", "cnn", "mlp_subclassed", "cnn_subclassed"])
def test_every_format_round_trips_with_full_parity(name, digits, tmp_path):
    model = build_model(name, digits.input_shape, digits.num_classes, **(
        {"hidden": [32]} if name.startswith("mlp") else {"filters": [8, 16], "dense": 32}))
    artifacts = export(model, tmp_path, digits)
    assert list(artifacts) == ARTIFACTS
    images = digits.arrays["test"][0][:16].astype(np.float32)
    expected = np.asarray(model(images, training=False))
    for relative, entry in artifacts.items():
        assert entry["parity"]["n"] == digits.counts["test"]
        if relative not in FLOAT_ARTIFACTS:
            check = entry["parity"]
            meets_bar = check["top1_agreement"] >= 0.995 and check["accuracy_drop"] <= 0.005
            assert check["criterion"] == "quantized" and check["passed"] is meets_bar
            assert ("warning" in check) is not meets_bar
            continue
        assert entry["parity"]["top1_agreement"] == 1.0
        assert entry["parity"]["max_abs_diff"] <= 1e-4
        assert entry["bytes"] > 0 and len(entry["sha256"]) == 64
        predictor = load(tmp_path / relative)
        assert predictor.class_names == ["0", "1", "2"]
        np.testing.assert_allclose(predictor.predict_proba(images), expected, atol=1e-5)
    assert (tmp_path / "labels.txt").read_text().split() == ["0", "1", "2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]


@pytest.mark.parametrize("agreement, drop, passed", [(1.0, 0.0, True), (0.995, 0.005, True), (0.994, 0.0, False),
                                                     (1.0, 0.006, False)])
def test_a_quantized_variant_below_the_bar_is_kept_but_flagged(agreement, drop, passed):
    check = {"top1_agreement": agreement, "max_abs_diff": 0.05, "n": 1000, "accuracy": 0.9, "accuracy_drop": drop}
    judged = judge("model_int8.tflite", check, exact=False)
    assert judged["criterion"] == "quantized" and judged["passed"] is passed
    assert ("warning" in judged) is not passed
    if not passed:
        assert judged["warning"].startswith(f"model_int8.tflite agrees with the trained model on {agreement:.2%}")


def test_a_float_artifact_that_disagrees_fails_the_export():
    check = {"top1_agreement": 1.0, "max_abs_diff": 2e-4, "n": 10, "accuracy": 1.0, "accuracy_drop": 0.0}
    with pytest.raises(ExportError, match="model.tflite does not predict what the trained model predicts"):
        judge("model.tflite", check, exact=True)
    assert judge("model.tflite", {**check, "max_abs_diff": 1e-4}, exact=True)["passed"] is True


class GraphOnlyNudge(keras.layers.Layer):
    """Adds 1e-3 to the first logit only when traced as a graph: a model that, like efficientnet_v2_l's 1,028
    layers, gives other probabilities under tf.function than called eagerly (there by 1.35e-3)."""

    def call(self, logits):
        return logits if tf.executing_eagerly() else logits + tf.constant([1e-3, 0.0, 0.0])


def test_a_float_artifact_is_held_to_the_models_own_graph_vs_eager_difference(digits, tmp_path, caplog):
    inputs = keras.Input(digits.input_shape)
    # zero logits: every probability 1/3, where the nudge moves them most (|dp| 2.2e-4), whatever the seed
    logits = GraphOnlyNudge()(keras.layers.Dense(3, kernel_initializer="zeros")(keras.layers.Flatten()(inputs)))
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    reference = predict_split(lambda images: model(images, training=False), digits)
    tolerance, noise = float_tolerance(model, digits, reference)
    assert 1e-4 < noise < 5e-4 and tolerance == pytest.approx(4 * noise)
    with caplog.at_level(logging.WARNING, logger="kerascnn.export"):
        artifacts = export(model, tmp_path, digits, ExportConfig(formats=("saved_model",)))
    parity = artifacts["saved_model/1"]["parity"]
    assert parity["passed"] and parity["tolerance"] == pytest.approx(tolerance) and parity["max_abs_diff"] > 1e-4
    assert "gives other probabilities as a graph than called eagerly" in caplog.text
    plain = build_model("mlp", digits.input_shape, 3, hidden=[8])  # an ordinary model keeps the 1e-4 bar
    assert float_tolerance(plain, digits, predict_split(lambda images: plain(images, training=False), digits))[0] == 1e-4


def test_sequential_artifacts_load_without_kerascnn(digits, tmp_path):
    model = build_model("cnn", digits.input_shape, digits.num_classes, filters=[8], dense=16)
    export(model, tmp_path, digits)
    images = digits.arrays["test"][0][:5].astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", np.asarray(model(images, training=False)))
    script = f"""
import sys, numpy as np, keras, tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
root = {str(tmp_path)!r}
x, expected = np.load(root + "/images.npy"), np.load(root + "/expected.npy")
outputs = [keras.saving.load_model(root + "/model.keras")(x), keras.saving.load_model(root + "/model.h5")(x),
           tf.saved_model.load(root + "/saved_model/1").signatures["serving_default"](images=x)["probabilities"]]
it = Interpreter(model_path=root + "/model.tflite")
rgb = np.repeat(x, 3, axis=-1)  # a gray model's TFLite file takes RGB images and converts them inside
it.resize_tensor_input(0, rgb.shape); it.allocate_tensors()
it.set_tensor(it.get_input_details()[0]["index"], rgb); it.invoke()
outputs.append(it.get_tensor(it.get_output_details()[0]["index"]))
assert "kerascnn" not in sys.modules
print(max(float(np.abs(np.asarray(o) - expected).max()) for o in outputs))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-4


def test_saved_model_signature_returns_named_outputs(digits, tmp_path):
    import tensorflow as tf

    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=[8])
    export(model, tmp_path, digits, ExportConfig(formats=("saved_model",)))
    signature = tf.saved_model.load(str(tmp_path / "saved_model/1")).signatures["serving_default"]
    outputs = signature(images=tf.constant(digits.arrays["test"][0][:4], tf.float32))
    assert set(outputs) == {"probabilities", "class_id", "class_name"}
    ids = outputs["class_id"].numpy()
    assert [n.decode() for n in outputs["class_name"].numpy()] == [digits.class_names[i] for i in ids]


def test_manifest_of_a_run(default_run):
    manifest = json.loads((default_run.run_dir / "manifest.json").read_text())
    for key in ("kerascnn_version", "tensorflow_version", "keras_version", "dataset", "class_names", "input_shape",
                "train_seconds"):
        assert key in manifest
    assert set(manifest["test_metrics"]) >= {"accuracy", "loss"}
    assert set(manifest["artifacts"]) == set(ARTIFACTS)
    for entry in manifest["artifacts"].values():
        assert set(entry) >= {"bytes", "sha256", "parity"}
        assert set(entry["parity"]) >= {"top1_agreement", "max_abs_diff", "n"}
