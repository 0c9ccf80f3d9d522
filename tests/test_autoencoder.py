"""Convolutional autoencoders: denoising raises PSNR, every artifact reproduces the model's pixels,
the encoder serves as a classifier's backbone, and bad options fail in one line."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerascnn.autoencode import add_noise, autoencode, embed
from kerascnn.cli import main
from kerascnn.errors import ConfigError
from kerascnn.models.autoencoder import bottleneck_size
from kerascnn.models.registry import build_model
from kerascnn.tensor_export import PIXEL_TOLERANCE


@pytest.fixture(scope="module")
def denoising_run(tmp_path_factory):
    """`kerascnn autoencode` on 16x16 digits with Gaussian noise 0.3 and class 0 held out as the anomaly."""
    output = tmp_path_factory.mktemp("ae")
    code = main(["autoencode", "--dataset", "digits", "--image-size", "16", "16", "--noise", "0.3", "--epochs", "3",
                 "--anomaly-class", "0", "--output", str(output), "--name", "denoise", "--verbose", "0"])
    assert code == 0
    return output / "denoise"


def test_denoising_autoencoder_raises_psnr_over_the_noisy_input(denoising_run):
    manifest = json.loads((denoising_run / "manifest.json").read_text())
    metrics = manifest["test_metrics"]
    assert {"psnr_noisy", "psnr", "ssim", "mse", "ssim_noisy", "anomaly_auc"} <= set(metrics)
    assert metrics["psnr"] > metrics["psnr_noisy"] + 1.0
    assert 0.0 < metrics["ssim"] <= 1.0 and 0.0 <= metrics["anomaly_auc"] <= 1.0
    assert manifest["compression"] == {"input_size": 256, "bottleneck_size": 4 * 4 * 64, "ratio": 0.25}
    assert manifest["anomaly"]["class"] == "0" and manifest["anomaly"]["n_anomalies"] > 0
    for name in ("report.html", "report.md", "reconstructions.png", "tsne.png", "config.toml", "history.csv"):
        assert (denoising_run / name).is_file(), name


def test_every_artifact_takes_pixels_and_returns_the_models_pixels(denoising_run):
    from kerascnn.bench.predict import raw_litert

    images = np.random.default_rng(0).uniform(0, 255, (5, 16, 16, 1)).astype(np.float32)
    model = keras.saving.load_model(denoising_run / "model.keras", safe_mode=True)
    expected = np.asarray(model(images))
    assert expected.shape == (5, 16, 16, 1) and 0.0 <= expected.min() and expected.max() <= 255.0
    h5 = keras.saving.load_model(denoising_run / "model.h5", compile=False, safe_mode=True)
    signature = tf.saved_model.load(str(denoising_run / "saved_model" / "1")).signatures["serving_default"]
    served = signature(images=tf.constant(images))["pixels"].numpy()
    lite = raw_litert(denoising_run / "model.tflite", images)()  # the bare LiteRT interpreter
    for got in (np.asarray(h5(images)), served, lite):
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= PIXEL_TOLERANCE
    artifacts = json.loads((denoising_run / "manifest.json").read_text())["artifacts"]
    assert set(artifacts) == {"model.keras", "model.h5", "saved_model/1", "model.tflite"}
    assert all(entry["parity"]["passed"] and entry["parity"]["n"] > 0 for entry in artifacts.values())


def test_the_encoder_is_a_backbone_that_trains_a_classifier(denoising_run):
    from kerascnn.config import TrainConfig
    from kerascnn.data.datasets import load_data
    from kerascnn.config import DataConfig
    from kerascnn.models.transfer import build_transfer_model
    from kerascnn.training import train
    from kerascnn.evaluation import evaluate

    data = load_data(DataConfig(dataset="digits", image_size=(16, 16)))
    model = build_transfer_model("autoencoder", data.input_shape, data.num_classes, "feature_extraction",
                                 str(denoising_run / "model.keras"), dropout=0.0)
    autoencoder = keras.saving.load_model(denoising_run / "model.keras", safe_mode=True)
    for ours, theirs in zip(model.get_layer("backbone").get_weights(),
                            autoencoder.get_layer("backbone").get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert not model.get_layer("backbone").trainable
    train(model, data, TrainConfig(epochs=3, learning_rate=3e-3, verbose=0, tensorboard=False))
    assert evaluate(model, data)["accuracy"] > 0.6  # chance is 0.1; only the head trained


def test_a_dense_bottleneck_compresses_and_embeds():
    model = build_model("autoencoder", (16, 16, 1), latent_dim=8, filters=(8, 16))
    assert bottleneck_size(model) == 8
    images = np.zeros((3, 16, 16, 1), np.float32)
    assert model(images).shape == (3, 16, 16, 1)
    assert embed(model, images).shape == (3, 8)


def test_salt_and_pepper_noise_sets_the_asked_fraction_of_pixels():
    clean = tf.fill((20, 32, 32, 1), 128.0)
    noisy = add_noise(clean, "salt_pepper", 0.2, seed=tf.constant([1, 2])).numpy()
    changed = noisy != 128.0
    assert 0.17 < changed.mean() < 0.23 and set(np.unique(noisy[changed])) == {0.0, 255.0}
    gaussian = add_noise(clean, "gaussian", 0.1, seed=tf.constant([1, 2])).numpy()
    assert abs(float((gaussian - 128.0).std()) - 25.5) < 1.5


def test_bad_autoencoder_options_fail_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="multiples of 4"):
        build_model("autoencoder", (15, 15, 1))
    with pytest.raises(ConfigError, match="not a classifier; train it with `kerascnn autoencode`"):
        build_model("autoencoder", (16, 16, 1), 10)
    assert main(["autoencode", "--noise-type", "pepper", "--noise", "0.1", "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "did you mean 'salt_pepper'" in error
    assert main(["autoencode", "--anomaly-class", "cat", "--image-size", "16", "16", "--epochs", "1",
                 "--output", str(tmp_path), "--name", "bad"]) == 2
    assert "not a class of digits" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # bad input writes nothing
