"""DCGAN: train_step updates both nets, a run killed mid-training resumes to the end, the generator's
artifacts turn latent vectors into the same images, and the quality measures compute what they say."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import tensorflow as tf

from kerascnn.cli import main
from kerascnn.gan import frechet_distance, histogram_entropy
from kerascnn.models.registry import build_model
from kerascnn.tensor_export import PIXEL_TOLERANCE

ROOT = Path(__file__).resolve().parents[1]
GAN_ARGS = ["gan", "--dataset", "digits", "--image-size", "16", "16", "--epochs", "3", "--latent-dim", "16",
            "--filters", "32", "16", "--batch-size", "16", "--fd-samples", "200", "--classifier-epochs", "1", "--max-train-examples", "480",
            "--verbose", "0"]


def test_train_step_updates_the_generator_and_the_discriminator():
    gan = build_model("dcgan", (16, 16, 1), latent_dim=8, filters=(16, 8), seed=0)
    gan.compile(learning_rate=1e-3)
    gan.build()
    assert gan.generator(np.zeros((2, 8), np.float32)).shape == (2, 16, 16, 1)
    assert gan.discriminator(np.zeros((2, 16, 16, 1), np.float32)).shape == (2, 1)
    before_g = [w.copy() for w in gan.generator.get_weights()]
    before_d = [w.copy() for w in gan.discriminator.get_weights()]
    images = tf.data.Dataset.from_tensor_slices(np.random.default_rng(0).uniform(0, 255, (32, 16, 16, 1))
                                                .astype(np.float32)).batch(16)
    history = gan.fit(images, epochs=1, verbose=0)
    assert {"d_loss", "g_loss"} <= set(history.history)
    assert any(not np.array_equal(a, b) for a, b in zip(before_g, gan.generator.get_weights()))
    assert any(not np.array_equal(a, b) for a, b in zip(before_d, gan.discriminator.get_weights()))


def _rows(history: Path) -> int:
    try:
        return len(pd.read_csv(history))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def test_a_killed_gan_run_resumes_and_exports_its_generator(tmp_path):
    run_dir = tmp_path / "gan"
    command = [sys.executable, "-m", "kerascnn", *GAN_ARGS, "--output", str(tmp_path), "--name", "gan"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    backup = run_dir / "checkpoints" / "backup" / "training_metadata.json"  # written after the epoch's CSV row
    while not (backup.is_file() and _rows(run_dir / "history.csv") >= 1) and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # a real kill, mid-way through the second epoch
    process.wait()
    assert not (run_dir / "manifest.json").exists(), "the run finished before it could be killed"
    assert (run_dir / "checkpoints" / "generator.keras").is_file()

    assert main(["gan", "--resume", str(run_dir)]) == 0
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]  # no epoch lost or repeated
    assert np.isfinite(history[["d_loss", "g_loss", "frechet_distance", "class_entropy"]].to_numpy()).all()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["resumed"] and manifest["epochs_run"] == 3
    assert sorted(p.name for p in (run_dir / "samples").glob("epoch_*.png")) == [
        "epoch_001.png", "epoch_002.png", "epoch_003.png"]
    metrics = manifest["test_metrics"]
    assert metrics["frechet_distance_epoch_1"] == pytest.approx(history["frechet_distance"].iloc[0])
    assert 0.0 <= metrics["class_entropy"] <= math.log(10) + 1e-9
    assert "not the ImageNet-Inception FID" in manifest["quality"]["measure"]

    from kerascnn.bench.predict import raw_litert

    latent = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    generator = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    expected = np.asarray(generator(latent))
    assert expected.shape == (4, 16, 16, 1) and 0.0 <= expected.min() and expected.max() <= 255.0
    signature = tf.saved_model.load(str(run_dir / "saved_model" / "1")).signatures["serving_default"]
    served = signature(latent=tf.constant(latent))["images"].numpy()
    lite = raw_litert(run_dir / "model.tflite", latent)()  # the bare LiteRT interpreter
    h5 = keras.saving.load_model(run_dir / "model.h5", compile=False, safe_mode=True)
    for got in (served, lite, np.asarray(h5(latent))):
        assert got.shape == expected.shape and np.abs(got - expected).max() <= PIXEL_TOLERANCE
    assert all(entry["parity"]["passed"] for entry in manifest["artifacts"].values())
    assert main(["gan", "--resume", str(run_dir)]) == 2  # a finished run is not resumed again


def test_frechet_distance_and_class_entropy_measure_what_they_say():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Two Gaussians with equal covariance: the distance is the squared distance of the means.
    assert frechet_distance(a, rng.standard_normal((4000, 3)) + [2.0, 0.0, 0.0]) == pytest.approx(4.0, abs=0.2)
    b = rng.standard_normal((4000, 3)) @ np.array([[1.0, 0.5, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.3]])
    mean_part = np.sum((a.mean(0) - b.mean(0)) ** 2)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real  # the textbook formula on a well-conditioned case
    assert frechet_distance(a, b) == pytest.approx(mean_part + np.trace(cov_a + cov_b - 2 * root), rel=1e-6)
    assert histogram_entropy(np.arange(1000) % 10, 10)[0] == pytest.approx(math.log(10))
    assert histogram_entropy(np.zeros(50, int), 10) == (0.0, [50] + [0] * 9)


def test_resume_refuses_other_flags_and_other_runs(tmp_path, capsys):
    assert main(["gan", "--resume", str(tmp_path), "--epochs", "2"]) == 2
    assert "drop --epochs" in capsys.readouterr().err
    assert main(["gan", "--resume", str(tmp_path / "missing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_classifier_of_other_images_is_refused_before_anything_is_written(tmp_path, capsys):
    build_model("cnn", (8, 8, 1), 10).save(tmp_path / "small.keras")
    assert main(["gan", "--dataset", "digits", "--image-size", "16", "16", "--classifier", str(tmp_path / "small.keras"),
                 "--output", str(tmp_path), "--name", "g"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "takes (8, 8, 1)" in error
    assert not (tmp_path / "g").exists()
