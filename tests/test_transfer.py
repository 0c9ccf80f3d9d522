"""Transfer learning: the backbone table, the four strategies' frozen/trainable layers, both weight paths,
fine-tuning's two phases in one history, offline ImageNet, and artifacts with perfect float parity."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from kerascnn import cli
from kerascnn.config import config_from_dict, load_config
from kerascnn.errors import ConfigError, ModelLoadError
from kerascnn.flops import forward_flops
from kerascnn.models import build_model
from kerascnn.models.transfer import BACKBONES, build_backbone, build_transfer_model, list_backbones, unfreeze_top
from kerascnn.runner import check_config, run

SMALL = {"alpha": 0.35}  # the smallest MobileNetV2, at its 32x32 minimum input: fast enough for tests
REPO = Path(__file__).resolve().parents[1]


def _pixels(n, shape=(8, 8, 1), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype("float32")


def _backbone_layers(model):
    return [layer for layer in model.get_layer("backbone").layers if not isinstance(layer, keras.layers.InputLayer)]


def test_backbones_json_lists_the_table(capsys):
    assert cli.main(["backbones", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 42  # every keras.applications network of Keras 3.15, kerascnn's cnn and its autoencoder
    assert len({row["name"] for row in rows}) == len(rows)
    assert {row["name"] for row in rows} >= {"vgg16", "resnet152_v2", "inception_resnet_v2", "xception", "densenet201",
                                             "mobilenet_v3_large", "efficientnet_b7", "efficientnet_v2_l",
                                             "convnext_xlarge", "nasnet_large", "cnn", "autoencoder"}
    assert [row["name"] for row in rows] == list(BACKBONES) == [row["name"] for row in list_backbones()]
    by_name = {row["name"]: row for row in rows}
    assert by_name["inception_v3"]["default_size"] == 299 and by_name["inception_v3"]["min_size"] == 75
    assert by_name["mobilenet_v2"]["preprocess_input"] == "keras.applications.mobilenet_v2.preprocess_input"
    assert "block_6_expand_relu" in by_name["mobilenet_v2"]["cut_points"]


# Building every backbone takes about 65 CPU seconds (2026-12-01, 2-core machine), mostly the deep variants:
# the price of checking every cut point of the table, not only those a bench happens to run.
@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_at_its_minimum_size_with_its_cut_points(name):
    """Random weights, built in a StatelessScope so that no weight is allocated: only the layer graph is made."""
    row = BACKBONES[name]
    with keras.StatelessScope():
        network = build_backbone(name, (max(row.min_size, 8),) * 2 + (row.channels or 1,))
    names = {layer.name for layer in network.layers}
    assert row.cut_points and set(row.cut_points) <= names
    keras.backend.clear_session()


def test_feature_extraction_adapts_raw_grayscale_and_freezes_the_backbone(mnv2_weights):
    model = build_transfer_model("mobilenet_v2", (8, 8, 1), 3, weights=mnv2_weights, **SMALL)
    assert model.input_shape == (None, 8, 8, 1)
    assert model.get_layer("gray_to_rgb").output.shape[-1] == 3
    assert model.get_layer("resize").output.shape[1:3] == (32, 32)
    assert isinstance(model.get_layer("preprocess"), keras.layers.Rescaling)  # Keras' own layer: x / 127.5 - 1
    body = _backbone_layers(model)
    assert len(body) == 153 and not any(layer.trainable for layer in body)
    assert [w.path for w in model.trainable_weights] == ["probabilities/kernel", "probabilities/bias"]
    assert isinstance(model.get_layer("pool"), keras.layers.GlobalAveragePooling2D)
    probabilities = np.asarray(model(_pixels(2), training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("cut_at, layers", [("block_3_expand_relu", 29), (30, 30)])
def test_truncate_cuts_the_backbone_by_name_or_index_and_freezes_it(cut_at, layers, mnv2_weights):
    model = build_transfer_model("mobilenet_v2", (8, 8, 1), 3, "truncate", mnv2_weights, cut_at, **SMALL)
    body = _backbone_layers(model)
    assert len(body) == layers
    if isinstance(cut_at, str):
        assert body[-1].name == cut_at
    assert not any(layer.trainable for layer in body)
    assert len(model.trainable_weights) == 2


def test_from_scratch_trains_every_layer_with_random_weights():
    model = build_transfer_model("mobilenet_v2", (8, 8, 1), 3, "from_scratch", **SMALL)
    body = _backbone_layers(model)
    assert all(layer.trainable for layer in body)
    assert len(model.trainable_weights) == len(model.get_layer("backbone").trainable_weights) + 2 > 100


def test_unfreeze_top_keeps_batch_normalization_frozen(mnv2_weights):
    model = build_transfer_model("mobilenet_v2", (8, 8, 1), 3, "fine_tune", mnv2_weights, **SMALL)
    top = _backbone_layers(model)[-20:]
    batch_norms = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in top)
    assert batch_norms > 0
    assert unfreeze_top(model, 20) == 20 - batch_norms
    assert [layer for layer in _backbone_layers(model) if layer.trainable] == [
        layer for layer in top if not isinstance(layer, keras.layers.BatchNormalization)]


def test_weights_file_written_here_loads_with_identical_outputs(tmp_path):
    network = build_backbone("mobilenet_v2", (32, 32, 3), "none", **SMALL)
    network.save_weights(tmp_path / "backbone.weights.h5")
    model = build_transfer_model("mobilenet_v2", (32, 32, 3), 3, weights=str(tmp_path / "backbone.weights.h5"),
                                 **SMALL)
    images = keras.applications.mobilenet_v2.preprocess_input(_pixels(4, (32, 32, 3)))
    np.testing.assert_array_equal(np.asarray(model.get_layer("backbone")(images)), np.asarray(network(images)))
    fresh = build_transfer_model("mobilenet_v2", (32, 32, 3), 3, "from_scratch", **SMALL)
    assert not np.array_equal(np.asarray(fresh.get_layer("backbone")(images)), np.asarray(network(images)))


def test_weights_file_of_another_architecture_is_refused_in_one_line(tmp_path):
    build_backbone("mobilenet", (32, 32, 3), "none", alpha=0.25).save_weights(tmp_path / "mobilenet.weights.h5")
    with pytest.raises(ModelLoadError, match="does not fit backbone 'mobilenet_v2'") as error:
        build_transfer_model("mobilenet_v2", (32, 32, 3), 3, weights=str(tmp_path / "mobilenet.weights.h5"), **SMALL)
    assert "\n" not in str(error.value)
    with pytest.raises(ModelLoadError, match="does not exist"):
        build_transfer_model("mobilenet_v2", (32, 32, 3), 3, weights=str(tmp_path / "missing.weights.h5"), **SMALL)


def test_cnn_backbone_reuses_a_kerascnn_model_file(cnn_weights):
    saved = keras.saving.load_model(cnn_weights)
    model = build_transfer_model("cnn", (8, 8, 1), 3, weights=cnn_weights, filters=(8, 16))
    features = keras.Model(saved.inputs[0], saved.get_layer("conv_dropout").output)
    images = _pixels(4)
    np.testing.assert_array_equal(np.asarray(model.get_layer("backbone")(images)), np.asarray(features(images)))
    truncated = build_transfer_model("cnn", (8, 8, 1), 3, "truncate", cnn_weights, "pool_0", filters=(8, 16))
    assert _backbone_layers(truncated)[-1].name == "pool_0"
    assert isinstance(truncated.get_layer("pool"), keras.layers.Flatten)  # the cnn's own head flattens
    assert truncated.get_layer("probabilities").kernel.shape == (4 * 4 * 8, 3)


def test_cnn_backbone_refuses_a_model_file_without_a_backbone(tmp_path, cnn_weights):
    build_model("mlp", (8, 8, 1), 4, hidden=(8,)).save(tmp_path / "mlp.keras")
    with pytest.raises(ModelLoadError, match="holds no backbone"):
        build_transfer_model("cnn", (8, 8, 1), 3, weights=str(tmp_path / "mlp.keras"))
    with pytest.raises(ModelLoadError, match="does not fit backbone 'cnn'"):  # default filters (16, 32, 64)
        build_transfer_model("cnn", (8, 8, 1), 3, weights=cnn_weights)


@pytest.mark.parametrize("values, message", [
    ({"model.transfer": "truncate"}, "needs model.cut_at"),
    ({"model.cut_at": "block_3_expand_relu"}, "only applies to model.transfer = truncate"),
    ({"model.unfreeze": 10}, "only applies to model.transfer = fine_tune"),
    ({"model.transfer": "from_scratch", "model.weights": "imagenet"}, "trains random weights"),
    ({"model.transfer": "finetune"}, "did you mean 'fine_tune'"),
    ({"model.backbone": "mobilenetv2"}, "unknown backbone 'mobilenetv2' \\(did you mean 'mobilenet_v2'"),
    ({"model.options": {"alpah": 0.35}}, "no option 'alpah' \\(did you mean 'alpha'"),
    ({"model.options": {"size": 16}}, "below mobilenet_v2's minimum input size 32"),
    ({"model.options": {"pooling": "mean"}}, "pooling must be one of avg, max, flatten"),
    ({"model.name": "mlp"}, "drop model.name"),
    ({"model.transfer": "fine_tune", "train.epochs": 1}, "train.epochs >= 2"),
])
def test_contradictory_or_impossible_options_are_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        check_config(load_config(values={"model.backbone": "mobilenet_v2", **values}))


def test_transfer_options_need_a_backbone():
    with pytest.raises(ConfigError, match="need model.backbone"):
        load_config(values={"model.transfer": "fine_tune"})


def test_cli_flags_and_toml_keep_cut_at_as_index_or_name():
    parser = cli.build_parser()
    for flag, expected in (("12", 12), ("block_3_expand_relu", "block_3_expand_relu")):
        args = parser.parse_args(["train", "--backbone", "mobilenet_v2", "--transfer", "truncate", "--cut-at", flag,
                                  "--weights", "none"])
        config = cli.config_from_args(args)
        assert config.model.cut_at == expected
        assert config_from_dict(tomllib.loads(config.to_toml())) == config


def test_unknown_cut_point_fails_before_anything_is_written(tiny_data, tmp_path, mnv2_weights):
    config = load_config(values={"run.output": str(tmp_path / "runs"), "model.backbone": "mobilenet_v2",
                                 "model.transfer": "truncate", "model.cut_at": "block_3_expand_rel",
                                 "model.weights": mnv2_weights, "model.options": SMALL})
    with pytest.raises(ConfigError, match="did you mean 'block_3_expand_relu'.*cut points: block_3_expand_relu"):
        run(config, tiny_data)
    assert not (tmp_path / "runs").exists()


def test_imagenet_offline_says_where_to_put_the_file(tmp_path):
    """The real keras.applications download path, made to fail by an unreachable proxy and an empty KERAS_HOME."""
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "PYTHONPATH": str(REPO),
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "kerascnn", "train", "--backbone", "mobilenet_v2",
                           "--output", str(tmp_path / "runs"), "--epochs", "1"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("kerascnn: error: ImageNet weights for 'mobilenet_v2'")
    assert f"put mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 into {tmp_path / 'keras' / 'models'}" \
        in message and "--weights PATH" in message
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("transfer", ["feature_extraction", "truncate", "fine_tune", "from_scratch"])
def test_every_strategy_exports_with_float_parity(transfer, tiny_data, cnn_weights, tmp_path):
    model = {"backbone": "cnn", "transfer": transfer, "options": {"filters": [8, 16]}}
    if transfer != "from_scratch":
        model["weights"] = cnn_weights
    if transfer == "truncate":
        model["cut_at"] = "pool_0"
    config = config_from_dict({"run": {"output": str(tmp_path), "name": transfer}, "model": model,
                               "train": {"epochs": 2, "batch_size": 16, "verbose": 0, "tensorboard": False},
                               "export": {"tflite": ["float32"]}})
    result = run(config, tiny_data)
    assert set(result.manifest["artifacts"]) == {"model.keras", "model.h5", "saved_model/1", "model.tflite"}
    for entry in result.manifest["artifacts"].values():
        assert entry["parity"]["top1_agreement"] == 1.0 and entry["parity"]["max_abs_diff"] <= 1e-4
    assert list(pd.read_csv(result.run_dir / "history.csv")["epoch"]) == [0, 1]
    # the nested backbone's convolutions are counted; a frozen one makes 3 x forward an overestimate, said so
    backbone = [layer for layer in result.model.layers if isinstance(layer, keras.Model)]
    assert result.manifest["flops_per_image"] == 3 * forward_flops(result.model) > 3 * forward_flops(backbone[0]) > 0
    if transfer in ("feature_extraction", "truncate", "from_scratch"):
        assert ("frozen layers" in result.manifest.get("flops_note", "")) == (transfer != "from_scratch")


def test_fine_tune_run_trains_two_phases_in_one_history_and_exports_with_float_parity(tiny_data, tmp_path,
                                                                                      mnv2_weights):
    """MobileNetV2 on 8x8 grayscale: the adaptation layers, both phases and every artifact, TFLite included."""
    config = load_config(values={"run.output": str(tmp_path), "run.name": "mnv2", "model.backbone": "mobilenet_v2",
                                 "model.weights": mnv2_weights, "model.transfer": "fine_tune", "model.unfreeze": 20,
                                 "model.options": SMALL, "train.epochs": 3, "train.learning_rate": 0.01,
                                 "train.batch_size": 16, "train.verbose": 0, "train.tensorboard": False,
                                 "export.tflite": ["float32"]})
    result = run(config, tiny_data)
    assert list(pd.read_csv(result.run_dir / "history.csv")["epoch"]) == [0, 1, 2]
    assert result.manifest["epochs_run"] == 3
    assert float(result.model.optimizer.learning_rate) == pytest.approx(0.001)  # phase 2: learning rate x 0.1
    top = _backbone_layers(result.model)[-20:]
    assert [layer for layer in _backbone_layers(result.model) if layer.trainable] == [
        layer for layer in top if not isinstance(layer, keras.layers.BatchNormalization)]
    for layer in _backbone_layers(result.model):  # BatchNormalization never left inference mode
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not np.asarray(layer.moving_mean).any() and (np.asarray(layer.moving_variance) == 1).all()
    assert set(result.manifest["artifacts"]) == {"model.keras", "model.h5", "saved_model/1", "model.tflite"}
    for name, entry in result.manifest["artifacts"].items():
        assert entry["parity"]["top1_agreement"] == 1.0 and entry["parity"]["max_abs_diff"] <= 1e-4, name
    assert config_from_dict(tomllib.loads((result.run_dir / "config.toml").read_text())) == config


# Issue 20: a random backbone is never frozen silently; preprocessing in Keras' own layers; portable files.

@pytest.mark.parametrize("transfer", ["feature_extraction", "truncate", "fine_tune"])
def test_frozen_strategy_with_random_weights_is_refused_before_data_is_read(transfer, tmp_path, capsys):
    cut = ["--cut-at", "block_3_expand_relu"] if transfer == "truncate" else []
    code = cli.main(["train", "--dataset", str(tmp_path / "missing-folder"), "--backbone", "mobilenet_v2",
                     "--transfer", transfer, "--weights", "none", "--output", str(tmp_path / "runs"), *cut])
    message = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in message  # the folder does not exist: the check came before the data
    assert f"model.transfer = {transfer}" in message and "--transfer from_scratch" in message
    assert "--weights PATH" in message and not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="stay near chance"):
        build_transfer_model("mobilenet_v2", (8, 8, 1), 3, transfer, "none", cut_at=cut[1] if cut else None, **SMALL)


@pytest.mark.parametrize("name", [name for name, row in BACKBONES.items() if row.preprocess_input is not None])
def test_preprocessing_layers_compute_the_backbones_preprocess_input(name):
    from kerascnn.models.transfer import preprocessing_layers

    row = BACKBONES[name]
    images = _pixels(2, (4, 4, 3))
    x = images
    for layer in preprocessing_layers(row.preprocessing, 3):
        x = layer(x)
    np.testing.assert_allclose(np.asarray(x), np.asarray(row.preprocess_input(images.copy())), atol=1e-4)


def test_transfer_model_file_loads_in_plain_keras_with_its_class_names(tiny_data, tmp_path):
    """A caffe-mode (BGR) and a tf-mode backbone: .keras and .h5 load in a process that never imports kerascnn,
    and kerascnn.load reads the class names from inside the files (no labels.txt beside them)."""
    from kerascnn.export import export
    from kerascnn.config import ExportConfig
    from kerascnn.predict import load

    model = build_transfer_model("mobilenet_v2", (8, 8, 1), 3, "from_scratch", **SMALL)
    export(model, tmp_path, tiny_data, ExportConfig(formats=("keras", "h5")))
    (tmp_path / "labels.txt").unlink()
    for file in ("model.keras", "model.h5"):
        assert load(tmp_path / file).class_names == ["dark", "mid", "light"]
    script = ("import sys, keras, numpy as np; m = keras.saving.load_model(sys.argv[1]); "
              "print(m.predict(np.full((1, 8, 8, 1), 128.0), verbose=0).shape); "
              "assert not any(name.startswith('kerascnn') for name in sys.modules)")
    for file in ("model.keras", "model.h5"):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / file)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert done.returncode == 0, done.stderr[-500:]
        assert done.stdout.strip().splitlines()[-1] == "(1, 3)"


def test_weights_of_a_grayscale_run_name_the_channel_difference(cnn_weights):
    """cnn_weights was trained on 8x8x1 images; 3-channel images cannot reuse its first convolution."""
    with pytest.raises(ModelLoadError, match="trained on 1-channel images but these are 3-channel; set "
                                             "data.color_mode = grayscale"):
        build_transfer_model("cnn", (8, 8, 3), 3, weights=cnn_weights, filters=(8, 16))


def test_fine_tune_says_its_phases_and_the_strategy_once(tiny_data, cnn_weights, capsys):
    from kerascnn.config import TrainConfig
    from kerascnn.training import fine_tune

    model = build_transfer_model("cnn", (8, 8, 1), 3, "fine_tune", cnn_weights, filters=(8, 16))
    fine_tune(model, tiny_data, TrainConfig(epochs=2, batch_size=16, verbose=2, tensorboard=False), unfreeze=2)
    out = capsys.readouterr().out
    assert out.count("strategy default:") == 1
    assert "fine_tune phase 1: the head, backbone frozen (epochs 1-1 of 2)" in out
    assert "fine_tune phase 2: 2 top backbone layers unfrozen, learning rate 0.0001 (epochs 2-2 of 2)" in out
