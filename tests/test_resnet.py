"""The `resnet_small` builder, its in-model flips, and the Fashion-MNIST presets that use it."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from kerascnn.config import DataConfig, ExportConfig, RunConfig, RunSection, TrainConfig, load_config
from kerascnn.errors import ConfigError
from kerascnn.flops import training_flops_per_image, training_record
from kerascnn.models import build_model, list_models
from kerascnn.models.resnet import ProgressiveResize, TrainingOnly
from kerascnn.predict import load
from kerascnn.runner import run
from kerascnn.training import make_callbacks, resized_epochs, train
from kerascnn.data.datasets import from_arrays

TINY = {"stem": 8, "widths": [16, 32], "blocks": [1, 1]}


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(0, 255, (6, 28, 28, 1)).astype("float32")


def test_resnet_small_is_registered_and_returns_probabilities(images):
    assert "resnet_small" in list_models()
    model = build_model("resnet_small", (28, 28, 1), 10, **TINY)
    probabilities = np.asarray(model(images))
    assert probabilities.shape == (6, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 2


@pytest.mark.parametrize("stem_stride, sizes", [(1, [(14, 14), (7, 7)]), (2, [(14, 14), (7, 7)])])
def test_each_stage_halves_the_resolution(stem_stride, sizes):
    model = build_model("resnet_small", (28, 28, 1), 10, stem_stride=stem_stride, **TINY)
    assert [model.get_layer(f"stage{i}_widen_conv").output.shape[1:3] for i in range(2)] == sizes


def test_stages_stop_pooling_on_tiny_images():
    model = build_model("resnet_small", (4, 4, 3), 3, stem=4, widths=[8, 8, 8], blocks=[0, 0, 0])
    assert model.get_layer("stage2_widen_conv").output.shape[1:3] == (1, 1)
    assert model(np.zeros((2, 4, 4, 3), "float32")).shape == (2, 3)


def test_bn_momentum_reaches_every_batch_norm():
    model = build_model("resnet_small", (28, 28, 1), 10, bn_momentum=0.8, **TINY)
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.8}


def test_test_time_flip_predicts_the_mean_of_an_image_and_its_mirror(images):
    model = build_model("resnet_small", (28, 28, 1), 10, test_time_flip=True, **TINY)
    mirrored = images[:, :, ::-1]
    np.testing.assert_allclose(np.asarray(model(images)), np.asarray(model(mirrored)), atol=1e-6)
    assert model(images, training=True).shape == (6, 10)  # no doubled batch in training


def test_training_only_augmentation_is_inactive_at_inference(images):
    model = build_model("resnet_small", (28, 28, 1), 10, random_flip=True, random_shift=0.2, **TINY)
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(model(images)))
    shift = TrainingOnly(keras.layers.RandomTranslation(0.3, 0.3, seed=1))
    np.testing.assert_array_equal(np.asarray(shift(images, training=False)), images)
    assert not np.array_equal(np.asarray(shift(images, training=True)), images)


def test_training_shifts_move_whole_pixels(images):
    model = build_model("resnet_small", (28, 28, 1), 10, random_shift=0.2, **TINY)
    shift = model.get_layer("random_shift")
    shifted = np.asarray(shift(images, training=True))
    assert not np.array_equal(shifted, images)
    for original, moved in zip(images, shifted):  # no blurred values: each pixel is an input pixel or the fill
        assert np.isin(moved, np.append(original, 0.0)).all()


@pytest.mark.parametrize("options, message", [
    ({"blocks": [1]}, "blocks must give a count"),
    ({"widths": []}, "positive stem and widths"),
    ({"stem_stride": 3}, "stem_stride must be 1 or 2"),
    ({"dropout": 1.5}, "dropout must be in"),
    ({"bn_momentum": 1.0}, "bn_momentum must be in"),
    ({"random_shift": 0.7}, "random_shift must be a fraction"),
    ({"depth": 18}, "has no option 'depth'"),
    ({"progressive_resizing": [[2, 3]]}, "sizes >= 4"),
    ({"progressive_resizing": [20]}, r"\[\[size, epochs\], ...\]"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        build_model("resnet_small", (28, 28, 1), 10, **options)


def test_every_artifact_agrees_with_the_trained_model(tmp_path):
    options = {**TINY, "random_flip": True, "random_shift": 0.1, "test_time_flip": True,
               "progressive_resizing": [[4, 1]]}  # digits are 8x8: its one epoch trains at 4x4
    config = RunConfig(run=RunSection(name="resnet", output=str(tmp_path)), data=DataConfig(dataset="digits"),
                       train=TrainConfig(epochs=1, verbose=0, tensorboard=False),
                       export=ExportConfig(tflite=("float32",)))
    result = run(config.replace("model", name="resnet_small", options=options))
    artifacts = result.manifest["artifacts"]
    assert set(artifacts) == {"model.keras", "model.h5", "saved_model/1", "model.tflite"}
    assert all(a["parity"]["top1_agreement"] == 1.0 for a in artifacts.values())
    reloaded = load(result.run_dir / "model.keras")  # safe mode: kerascnn's layers are registered
    images = result.data.arrays["test"][0][:4].astype("float32")
    np.testing.assert_allclose(reloaded.predict_proba(images), np.asarray(result.model(images)), atol=1e-6)


@pytest.mark.parametrize("preset", ["fashion_mnist", "fashion_mnist_quick", "fashion_mnist_half"])
def test_fashion_mnist_presets_resolve(preset):
    config = load_config(preset=preset)
    assert config.data.dataset == "fashion_mnist"
    build_model(config.model.name, (28, 28, 1), 10, **config.model.options)


def test_progressive_resizing_trains_the_first_epochs_small_and_counts_their_flops(tmp_path, images):
    model = build_model("resnet_small", (28, 28, 1), 2, progressive_resizing=[[12, 1], [20, 1]], **TINY)
    resize = model.get_layer("progressive_resize")
    seen = []  # the training size at the first batch of each epoch

    class StemShape(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                seen.append(int(resize.size.numpy()))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (32, 28, 28, 1)).astype("uint8"), np.arange(32) % 2
    config = TrainConfig(epochs=3, batch_size=16, verbose=0, tensorboard=False, early_stopping_patience=0,
                         precision="float32")
    train(model, from_arrays(x, y, x[:8], y[:8]), config, extra_callbacks=[StemShape()])
    assert seen == [12, 20, 0]  # 0: full size
    assert resized_epochs(model) == 2  # early stopping watches val_loss (at full size) from the third epoch
    callbacks = make_callbacks(dataclasses.replace(config, early_stopping_patience=3), None, monitor_from_epoch=2)
    assert [c.start_from_epoch for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)] == [2]
    resize.set_epoch(0)
    assert resize(images, training=True).shape == (6, 12, 12, 1)
    assert resize(images).shape == (6, 28, 28, 1)  # inference is always at full size
    per_image = training_flops_per_image(model)
    assert training_record(model, 32, 3, 1.0, None)["train_flops"] == round(per_image * 32 * (144 + 400 + 784) / 784)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")  # kerascnn's layer is registered
    assert reloaded.get_layer("progressive_resize").schedule == [[12, 1], [20, 1]]
    np.testing.assert_allclose(np.asarray(reloaded(images)), np.asarray(model(images)), atol=1e-6)
