"""Cached features for frozen backbones: the same training as without the cache, the backbone run once per
image, features spilled to disk and cleaned up, the whole network exported with parity, and caching off
(said in one line and in the manifest) wherever the backbone must see every epoch's images."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from kerascnn import cli, feature_cache
from kerascnn.config import TrainConfig, config_from_dict
from kerascnn.errors import ConfigError
from kerascnn.feature_cache import FeatureCache, plan_cache
from kerascnn.models import build_model
from kerascnn.models.transfer import build_transfer_model
from kerascnn.runner import check_config, run
from kerascnn.training import fine_tune, train
from tests.conftest import InterruptAt

CNN = {"filters": (8, 16)}
SMALL = {"alpha": 0.35}  # the smallest MobileNetV2, at its 32x32 minimum input
CUT = "pool_0"  # the cnn truncated before its Dropout: a feature network that is the same every epoch


def _count_backbone_images(model) -> tf.Variable:
    """A counter of the images the model's backbone layer is called on, in eager and graph mode alike."""
    backbone = model.get_layer("backbone")
    seen, call = tf.Variable(0, dtype=tf.int64, trainable=False), backbone.call

    def counting_call(inputs, *args, **kwargs):
        seen.assign_add(tf.cast(tf.shape(inputs)[0], tf.int64))
        return call(inputs, *args, **kwargs)

    backbone.call = counting_call
    return seen


def _test_images(data):
    return np.concatenate([x for x, _ in data.test.batch(64).as_numpy_iterator()]).astype("float32")


@pytest.mark.parametrize("backbone, transfer, imbalance", [
    ("mobilenet_v2", "feature_extraction", {}), ("cnn", "truncate", {}),
    ("cnn", "truncate", {"sampling": "balanced", "class_weight": {"dark": 2.0, "mid": 1.0, "light": 0.5}})])
def test_cached_features_train_the_same_head_with_one_backbone_pass(backbone, transfer, imbalance, tiny_data,
                                                                    cnn_weights, mnv2_weights):
    """Same seed, dropout on (and balanced sampling with class weights): the cache changes nothing the head
    learns, and the backbone sees each image once instead of once per epoch (training and validation images)."""
    trained = {}
    weights, options = (mnv2_weights, SMALL) if backbone == "mobilenet_v2" else (cnn_weights, CNN)
    for setting in (False, True):
        keras.utils.set_random_seed(7)
        model = build_transfer_model(backbone, (8, 8, 1), 3, transfer, weights, cut_at=CUT if transfer == "truncate"
                                     else None, dropout=0.5, **options)
        seen = _count_backbone_images(model)
        initial = model.get_layer("probabilities").get_weights()
        config = TrainConfig(epochs=3, batch_size=8, learning_rate=0.01, verbose=0, tensorboard=False,
                             cache_features=setting, class_weight=imbalance.get("class_weight"))
        result = train(model, tiny_data, config, sampling=imbalance.get("sampling", "none"))
        trained[setting] = result, int(seen.numpy()), model.predict(_test_images(tiny_data), verbose=0)
        moved = max(np.abs(now - then).max() for now, then in zip(model.get_layer("probabilities").get_weights(),
                                                                  initial))
        assert moved > 1e-3  # the head learned: the comparison is not of two no-ops
    images = tiny_data.counts["train"] + tiny_data.counts["validation"]
    assert trained[False][1] == 3 * images and trained[True][1] == images
    assert trained[True][0].feature_cache[0]["cached"] and not trained[False][0].feature_cache[0]["cached"]
    pd.testing.assert_frame_equal(trained[True][0].history, trained[False][0].history, rtol=1e-4)
    np.testing.assert_allclose(trained[True][2], trained[False][2], atol=1e-5)


def test_features_spilled_to_disk_in_chunks_read_back_as_in_memory_and_are_removed(tiny_data, cnn_weights, tmp_path,
                                                                                  monkeypatch):
    model = build_transfer_model("cnn", (8, 8, 1), 3, "truncate", cnn_weights, cut_at=CUT, **CNN)
    with FeatureCache(model, tiny_data, batch_size=8) as in_memory:
        expected = list(in_memory.train.as_numpy_iterator())
    monkeypatch.setattr(feature_cache, "CHUNK_BYTES", 2000)  # several chunks of a few batches each
    with FeatureCache(model, tiny_data, batch_size=8, run_dir=tmp_path, memory_limit=0) as on_disk:
        assert on_disk.storage == "disk" and on_disk.folder == tmp_path / feature_cache.STAGING_NAME
        assert len([p for p in on_disk.folder.iterdir() if p.name.startswith("train-")]) > 1
        spilled = list(on_disk.train.as_numpy_iterator())
        assert len(list(on_disk.validation)) == tiny_data.counts["validation"]
    assert not on_disk.folder.exists()
    assert in_memory.storage == "memory" and len(spilled) == len(expected) == tiny_data.counts["train"]
    for (features, label), (want_features, want_label) in zip(spilled, expected):
        np.testing.assert_array_equal(features, want_features)
        assert label == want_label


def test_a_cached_run_exports_the_whole_network_with_parity(tiny_data, cnn_weights, tmp_path, monkeypatch, capsys):
    """Features on disk in the run directory's staging area (removed after), one line saying so, the manifest's
    record, and artifacts that take raw pixels through the backbone with float parity."""
    monkeypatch.setattr(feature_cache, "MEMORY_LIMIT_BYTES", 0)
    config = config_from_dict({"run": {"output": str(tmp_path), "name": "cached"},
                               "model": {"backbone": "cnn", "transfer": "truncate", "cut_at": CUT,
                                         "weights": cnn_weights, "options": CNN},
                               "train": {"epochs": 2, "batch_size": 16, "verbose": 2, "tensorboard": False},
                               "export": {"formats": ["keras", "tflite"], "tflite": ["float32"]}})
    result = run(config, tiny_data)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("feature cache:")]
    assert len(lines) == 1 and lines[0].startswith("feature cache: on, the frozen backbone ran once over 48 images")
    assert f"on disk in {result.run_dir / feature_cache.STAGING_NAME}" in lines[0]
    assert not (result.run_dir / feature_cache.STAGING_NAME).exists()
    [record] = result.manifest["feature_cache"]
    assert record["cached"] and record["storage"] == "disk" and record["images"] == 48 and record["setting"] == "auto"
    assert set(result.manifest["artifacts"]) == {"model.keras", "model.tflite"}
    for entry in result.manifest["artifacts"].values():
        assert entry["parity"]["top1_agreement"] == 1.0 and entry["parity"]["max_abs_diff"] <= 1e-4
    exported = keras.saving.load_model(result.run_dir / "model.keras")
    assert exported.input_shape == (None, 8, 8, 1) and "backbone" in [layer.name for layer in exported.layers]
    pixels = _test_images(tiny_data)
    np.testing.assert_allclose(exported.predict(pixels, verbose=0), result.model.predict(pixels, verbose=0), atol=1e-6)


def test_augmentation_turns_caching_off_and_says_so(tiny_data, cnn_weights, tmp_path, capsys):
    settings = {"run": {"output": str(tmp_path), "name": "augmented"},
                "model": {"backbone": "cnn", "transfer": "truncate", "cut_at": CUT, "weights": cnn_weights,
                          "options": CNN},
                "augment": {"horizontal_flip": True},
                "train": {"epochs": 1, "batch_size": 16, "verbose": 2, "tensorboard": False},
                "export": {"formats": ["keras"]}}
    result = run(config_from_dict(settings), tiny_data)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("feature cache:")]
    assert lines == ["feature cache: off, augmentation is on, so the backbone must see every augmented image "
                     "(train.cache_features = auto)"]
    assert result.manifest["feature_cache"] == [{"cached": False, "setting": "auto", "reason": "augmentation is on, "
                                                 "so the backbone must see every augmented image"}]
    settings["train"]["cache_features"] = True  # insisting is refused before any data is read
    with pytest.raises(ConfigError, match=r"^train.cache_features = true, but \[augment\] is on"):
        check_config(config_from_dict(settings))


def test_fine_tune_caches_its_frozen_phase_only(tiny_data, mnv2_weights, capsys):
    model = build_transfer_model("mobilenet_v2", (8, 8, 1), 3, "fine_tune", mnv2_weights, **SMALL)
    seen = _count_backbone_images(model)
    result = fine_tune(model, tiny_data, TrainConfig(epochs=2, batch_size=16, verbose=2, tensorboard=False,
                                                     cache_features=True), unfreeze=3)
    assert [entry["cached"] for entry in result.feature_cache] == [True, False]
    assert result.feature_cache[1]["reason"].startswith("the backbone trains (")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("feature cache:")]
    assert len(lines) == 2 and lines[0].startswith("feature cache: on,") and lines[1].startswith("feature cache: off,")
    assert int(seen.numpy()) == 2 * (tiny_data.counts["train"] + tiny_data.counts["validation"])  # once a phase


def test_plan_says_when_the_features_would_change_between_epochs(tiny_data, cnn_weights):
    frozen = build_transfer_model("cnn", (8, 8, 1), 3, "truncate", cnn_weights, cut_at=CUT, **CNN)
    assert plan_cache(frozen, "auto").cached
    # Keras 3 runs the layers inside a frozen backbone in training mode during fit: the whole cnn's Dropout acts
    whole = build_transfer_model("cnn", (8, 8, 1), 3, "feature_extraction", cnn_weights, **CNN)
    assert plan_cache(whole, "auto").reason == "layer 'conv_dropout' before the head is random in training"
    assert not plan_cache(frozen, False).cached
    assert plan_cache(build_model("cnn", (8, 8, 1), 3, **CNN), "auto") is None  # no backbone: nothing to say
    with pytest.raises(ConfigError, match="needs a transfer model"):
        plan_cache(build_model("cnn", (8, 8, 1), 3, **CNN), True)
    scratch = build_transfer_model("cnn", (8, 8, 1), 3, "from_scratch", **CNN)
    assert plan_cache(scratch, "auto").reason.startswith("the backbone trains")
    # an in-model augmentation layer before a frozen backbone draws new images every epoch
    images = keras.Input((8, 8, 1))
    backbone = frozen.get_layer("backbone")
    x = backbone(keras.layers.RandomFlip(name="flip")(images), training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    flipped = keras.Model(images, keras.layers.Dense(3, activation="softmax")(x))
    assert plan_cache(flipped, "auto").reason == "layer 'flip' before the head is random in training"
    with pytest.raises(ConfigError, match="^train.cache_features = true, but layer 'flip'"):
        plan_cache(flipped, True)


def test_a_bad_setting_is_one_line_with_the_fix(tmp_path, capsys):
    code = cli.main(["train", "--set", "train.cache_features=yes", "--output", str(tmp_path)])
    message = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in message
    assert "train.cache_features must be auto, true or false, got 'yes'" in message
    assert not any(tmp_path.iterdir())


def test_bench_cache_times_both_paths_side_by_side(capsys):
    """`kerascnn bench cache` at a tiny size: both trainings end in the same model, and the figures it prints
    are the ones docs/benchmarks.md quotes."""
    code = cli.main(["bench", "cache", "--json", "--size", "32", "--images", "30", "--epochs", "2",
                     "--batch-size", "8"])
    results = json.loads(capsys.readouterr().out)
    assert code == 0 and results["backbone"] == "mobilenet_v3_small"
    assert results["speedup"] == pytest.approx(results["uncached.seconds_per_epoch"] /
                                               results["cached.seconds_per_epoch"], abs=0.01)
    assert results["cached.accuracy"] == results["uncached.accuracy"]
    assert results["max_abs_diff_probabilities"] <= 1e-5
    assert results["cached.feature_bytes"] == (results["train_images"] + results["validation_images"]) * 576 * 4


def test_an_interrupted_cached_fit_resumes_with_the_heads_optimizer_state(tiny_data, cnn_weights, tmp_path):
    config = TrainConfig(epochs=3, batch_size=8, verbose=0, tensorboard=False, backup_every=1)
    build = lambda: build_transfer_model("cnn", (8, 8, 1), 3, "truncate", cnn_weights, cut_at=CUT, **CNN)  # noqa
    with pytest.raises(KeyboardInterrupt):
        train(build(), tiny_data, config, tmp_path, extra_callbacks=[InterruptAt(1, 1)])
    model = build()
    result = train(model, tiny_data, config, tmp_path, resume=True)
    steps = -(-tiny_data.counts["train"] // 8)
    assert result.feature_cache[0]["cached"] and list(result.history["epoch"]) == [0, 1, 2]
    assert int(model.optimizer.iterations) > 2 * steps  # the backup's step count and moments came back
    best = keras.saving.load_model(tmp_path / "checkpoints" / "best.keras")
    assert best.input_shape == (None, 8, 8, 1) and "backbone" in [layer.name for layer in best.layers]
