"""`gan(...)`: train a DCGAN into a run directory, with per-epoch samples, quality measures and resume.

The run directory is a kerascnn run directory: config.toml (model `dcgan` and its options),
gan.json (this operation's own settings, read back by `--resume`), history.csv (d_loss, g_loss,
frechet_distance, class_entropy per epoch), checkpoints/ (`generator.keras` after every epoch;
`backup/`, Keras' BackupAndRestore of both nets and both optimizers, which `gan(resume=RUN_DIR)`
continues from after a kill), samples/ (`epoch_NNN.png`, the generator's images of one fixed
latent batch, so epochs compare), the generator's artifacts (model.keras, model.h5,
saved_model/<version> and model.tflite: latent in, raw pixels out, each checked output for
output), classifier.keras and manifest.json.

Quality, measured every epoch on `fd_samples` generated images:
- `frechet_distance`: the Fréchet distance between Gaussians fitted to the penultimate-layer
  features of a kerascnn classifier trained on the same dataset, for generated and real test
  images. It is *not* the Inception FID of the literature (no ImageNet Inception network here): its
  values compare runs on the same dataset and classifier only.
- `class_entropy`: entropy (nats) of the classifier's class histogram over generated images;
  ln(10) = 2.30 when all ten classes are generated equally, 0 when one class is (mode collapse).

Example:
    result = gan("fashion_mnist", epochs=20, name="fm-dcgan", time_budget=600)
    print(result.test_metrics["frechet_distance"], result.test_metrics["class_entropy"])
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from kerascnn import generative_report, plots
from kerascnn.config import RunConfig, TrainConfig, load_config
from kerascnn.data.datasets import load_data
from kerascnn.data.imagedata import ImageData
from kerascnn.errors import ConfigError, DataError, TrainingError
from kerascnn.evaluation import trace_layers
from kerascnn.models.registry import build_model
from kerascnn.resume import AtomicBackupAndRestore, check_resumable, resume_state
from kerascnn.rundir import (BACKUP_DIR, CONFIG_FILE, HISTORY_FILE, KERAS_FILE, TRAINED_MODEL, read_run_config,
                             write_atomically, write_bytes_atomically, write_json_atomically, write_manifest,
                             write_text_atomically)
from kerascnn.runner import check_config, check_free_space, prepare_run_dir
from kerascnn.tensor_export import export_tensor_model
from kerascnn.safety import load_keras_model
from kerascnn.training import train

SETTINGS_FILE = "gan.json"
SAMPLES_DIR = "samples"
GENERATOR_CHECKPOINT = "checkpoints/generator.keras"
CLASSIFIER_FILE = "classifier.keras"
SAMPLE_COUNT = 64
NOT_INCEPTION = ("Fréchet distance on the penultimate-layer features of a kerascnn classifier trained on the same "
                 "dataset; not the ImageNet-Inception FID, so compare it only between runs on this dataset and "
                 "classifier")


@dataclasses.dataclass
class GanResult:
    """What `gan` produced: the run directory, the trained DCGAN, its quality metrics and the manifest."""

    run_dir: Path
    model: keras.Model
    test_metrics: dict
    manifest: dict
    report: Path | None = None


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to two feature sets.

    Written here because no installed library computes it on arbitrary features. Tr((S_a S_b)^(1/2)) is
    the sum of the square roots of the eigenvalues of S_a S_b, which are real and >= 0 (the product is
    similar to the PSD S_a^(1/2) S_b S_a^(1/2)); this stays exact where ReLU features with zero variance
    make the product singular, where a matrix square root (scipy.linalg.sqrtm) warns and loses accuracy.
    """
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    sigma_a, sigma_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    eigenvalues = np.linalg.eigvals(sigma_a @ sigma_b).real.clip(min=0.0)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.sqrt(eigenvalues).sum())


def histogram_entropy(class_ids: np.ndarray, num_classes: int) -> tuple[float, list[int]]:
    """Entropy in nats of the class histogram, and the histogram."""
    counts = np.bincount(class_ids, minlength=num_classes)
    p = counts[counts > 0] / counts.sum()
    return float(max(0.0, -(p * np.log(p)).sum())), counts.tolist()


class QualityProbe:
    """Fréchet distance and class-histogram entropy of a generator's images, from a kerascnn classifier.

    Args:
        classifier: a kerascnn classifier (raw pixels in, probabilities out) of the same dataset.
        real_images: real test images (0..255) whose features are the reference.
        latent: the fixed latent vectors the generator is probed with.
    """

    def __init__(self, classifier: keras.Model, real_images: np.ndarray, latent: np.ndarray):
        trace = trace_layers(classifier, real_images.shape[1:])
        self.network = trace.model(trace.features, trace.steps[-1][2])  # (penultimate features, probabilities)
        self.layer = trace.features_name
        self.latent = latent
        self.real_features, _ = self._features(real_images)

    def _features(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        features, classes = [], []
        for i in range(0, len(images), batch_size):
            f, p = self.network(images[i:i + batch_size], training=False)
            features.append(np.asarray(f).reshape(len(f), -1))
            classes.append(np.asarray(p).argmax(-1))
        return np.concatenate(features).astype(np.float64), np.concatenate(classes)

    def measure(self, generator: keras.Model, num_classes: int) -> dict:
        images = np.concatenate([np.asarray(generator(self.latent[i:i + 256], training=False))
                                 for i in range(0, len(self.latent), 256)])
        features, classes = self._features(images)
        entropy, histogram = histogram_entropy(classes, num_classes)
        return {"frechet_distance": frechet_distance(features, self.real_features), "class_entropy": entropy,
                "class_histogram": histogram}


class EpochEnd(keras.callbacks.Callback):
    """At each epoch end: quality into the logs (before CSVLogger writes them), the sample grid into
    samples/, the generator into checkpoints/, and a stop once the time budget is spent."""

    def __init__(self, run_dir: Path, probe: QualityProbe, sample_latent: np.ndarray, num_classes: int,
                 time_budget: float | None):
        super().__init__()
        self.run_dir, self.probe, self.sample_latent = run_dir, probe, sample_latent
        self.num_classes, self.time_budget = num_classes, time_budget
        self.start = time.perf_counter()
        self.histograms: dict[int, list[int]] = {}

    def on_epoch_end(self, epoch, logs=None):
        generator = self.model.generator
        quality = self.probe.measure(generator, self.num_classes)
        self.histograms[epoch] = quality.pop("class_histogram")
        logs.update(quality)
        images = np.asarray(generator(self.sample_latent, training=False))
        figure = generative_report.sample_grid_figure(
            images, f"epoch {epoch + 1}: Fréchet distance {quality['frechet_distance']:.1f}, "
                    f"class entropy {quality['class_entropy']:.2f} nats")
        write_bytes_atomically(self.run_dir / SAMPLES_DIR / f"epoch_{epoch + 1:03d}.png", plots.png_bytes(figure))
        write_atomically(self.run_dir / GENERATOR_CHECKPOINT, lambda temporary: generator.save(temporary))
        if self.time_budget is not None and time.perf_counter() - self.start >= self.time_budget:
            self.model.stop_training = True


def gan_config(dataset: str, epochs: int, output: str, name: str | None, latent_dim: int, filters, image_size,
               batch_size: int, learning_rate: float, seed: int, overwrite: bool, verbose: int,
               max_train_examples: int | None) -> RunConfig:
    """The RunConfig a DCGAN run stores in config.toml."""
    values = {"data.dataset": dataset, "train.epochs": epochs, "run.output": output, "run.name": name,
              "model.name": "dcgan", "model.options": {"latent_dim": latent_dim, "filters": list(filters)},
              "train.batch_size": batch_size, "train.learning_rate": learning_rate, "run.seed": seed,
              "run.overwrite": overwrite, "train.verbose": verbose,
              "data.image_size": list(image_size) if image_size else None,
              "data.max_train_examples": max_train_examples}
    return load_config(values={key: value for key, value in values.items() if value is not None})


def _classifier(run_dir: Path, data: ImageData, source: str | None, epochs: int, seed: int,
                resumed: bool) -> keras.Model:
    """The classifier whose features judge the generator: on resume the one the run kept, else `source`
    (a run directory or .keras file, checked against the data), else a new `cnn` trained for `epochs`."""
    if resumed and (run_dir / CLASSIFIER_FILE).is_file():
        return load_keras_model(run_dir / CLASSIFIER_FILE)
    if source is not None:
        source_path = Path(source) / KERAS_FILE if Path(source).is_dir() else Path(source)
        model = load_keras_model(source_path)
        if tuple(model.input_shape[1:]) != tuple(data.input_shape) or model.output_shape[-1] != data.num_classes:
            raise ConfigError(f"classifier {source!r} takes {tuple(model.input_shape[1:])} and predicts "
                              f"{model.output_shape[-1]} classes, but the GAN's images are {tuple(data.input_shape)} "
                              f"with {data.num_classes} classes; train one on the same dataset and image size")
        return model
    model = build_model("cnn", data.input_shape, data.num_classes)
    train(model, data, TrainConfig(epochs=epochs, verbose=0, early_stopping_patience=0, tensorboard=False), seed=seed)
    return model


def _real_images(data: ImageData, split: str, limit: int | None = None) -> np.ndarray:
    ds = getattr(data, split).map(lambda image, label: image)
    if limit is not None:
        ds = ds.take(limit)
    return np.concatenate(list(ds.batch(512).as_numpy_iterator())).astype(np.float32)


def gan(dataset: str = "digits", epochs: int = 20, output: str = "saved_models", name: str | None = None,
        latent_dim: int = 100, filters=(128, 64), image_size=None, batch_size: int = 128,
        learning_rate: float = 2e-4, classifier: str | None = None, classifier_epochs: int = 3,
        fd_samples: int = 2000, time_budget: float | None = None, seed: int = 42, overwrite: bool = False,
        verbose: int = 2, max_train_examples: int | None = None, backup_every: int = 50,
        resume: str | Path | None = None, unsafe: bool = False) -> GanResult:
    """Train a DCGAN on the training images of `dataset`, measure it every epoch, export its generator.

    Args:
        dataset: a name from `kerascnn datasets`, tfds:<name> or an image folder (default digits).
        epochs: most epochs to train (default 20); `time_budget` may stop earlier.
        output, name, seed, overwrite, verbose: as for `kerascnn train`.
        latent_dim, filters: the `dcgan` builder's options (default 100, (128, 64)).
        image_size: (height, width) to resize to; sides must be multiples of 2 ** len(filters).
        batch_size, learning_rate: batch and Adam step size of both nets (default 128, 0.0002).
        classifier: a kerascnn run directory or .keras classifier of the same dataset for the quality
            measures; None trains a `cnn` for `classifier_epochs` epochs (default None, 3).
        fd_samples: generated and real images the Fréchet distance compares (default 2000).
        time_budget: seconds of training after which no new epoch starts (default None: all epochs).
        max_train_examples: cap on training images (default all).
        backup_every: batches between crash-recovery backups (one is also written at each epoch end).
        resume: the directory of a killed or interrupted run to continue (then pass nothing else).
        unsafe: on resume, allow the run's Keras files to run code they carry (default False).
    """
    if resume is not None:
        run_dir = Path(resume)
        check_resumable(run_dir)
        if not (run_dir / SETTINGS_FILE).is_file():
            raise ConfigError(f"cannot resume {str(run_dir)!r}: it has no {SETTINGS_FILE}, so it is not a "
                              f"`kerascnn gan` run; resume classifier runs with `kerascnn train --resume`")
        config = read_run_config(run_dir)
        settings = json.loads((run_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
    else:
        config = check_config(gan_config(dataset, epochs, output, name, latent_dim, filters, image_size, batch_size,
                                         learning_rate, seed, overwrite, verbose, max_train_examples))
        settings = {"classifier": classifier, "classifier_epochs": classifier_epochs, "fd_samples": fd_samples,
                    "time_budget": time_budget, "backup_every": backup_every}
        if fd_samples < 2:
            raise ConfigError(f"fd_samples must be at least 2 (a covariance needs two images), got {fd_samples}")
        run_dir = prepare_run_dir(config)
    seed = config.run.seed
    keras.utils.set_random_seed(seed)
    data = load_data(config.data, seed=seed)
    if not data.counts["train"]:
        raise DataError(f"dataset {config.data.dataset!r} has no training images for the GAN")
    model = build_model("dcgan", data.input_shape, seed=seed, **config.model.options)
    model.compile(learning_rate=config.train.learning_rate)
    model.build()
    # Before anything is written: a classifier that does not fit the data fails here.
    classifier = _classifier(run_dir, data, settings["classifier"], settings["classifier_epochs"], seed,
                             resume is not None)
    if resume is None:
        check_free_space(run_dir, model)
        if run_dir.exists():  # --overwrite: the old run goes only now that the inputs are known good
            shutil.rmtree(run_dir)
        (run_dir / SAMPLES_DIR).mkdir(parents=True)
        (run_dir / "checkpoints").mkdir()
        write_text_atomically(run_dir / CONFIG_FILE, config.to_toml())
        write_json_atomically(run_dir / SETTINGS_FILE, settings)
    if not (run_dir / CLASSIFIER_FILE).is_file():
        write_atomically(run_dir / CLASSIFIER_FILE, lambda temporary: classifier.save(temporary))
    try:
        result = _train_and_export(run_dir, config, settings, data, model, classifier, resume is not None, unsafe)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted; continue the run with: kerascnn gan --resume {run_dir}") from None
    return result


def _train_and_export(run_dir: Path, config: RunConfig, settings: dict, data: ImageData, model,
                      classifier: keras.Model, resumed: bool, unsafe: bool) -> GanResult:
    seed = config.run.seed
    rng = np.random.default_rng(seed)  # the fixed latent batches: the same on resume
    sample_latent = rng.standard_normal((SAMPLE_COUNT, model.latent_dim)).astype(np.float32)
    probe_latent = rng.standard_normal((settings["fd_samples"], model.latent_dim)).astype(np.float32)
    probe = QualityProbe(classifier, _real_images(data, "test", settings["fd_samples"]), probe_latent)
    start = time.perf_counter()
    generator = model.generator
    if resumed and (run_dir / TRAINED_MODEL).is_file():  # training had finished: export only
        generator = load_keras_model(run_dir / TRAINED_MODEL, unsafe)
        histograms = json.loads((run_dir / "class_histograms.json").read_text(encoding="utf-8"))
    else:
        state = resume_state(run_dir, HISTORY_FILE) if resumed else None
        epoch_end = EpochEnd(run_dir, probe, sample_latent, data.num_classes, settings["time_budget"])
        callbacks = [keras.callbacks.TerminateOnNaN(), epoch_end,
                     keras.callbacks.CSVLogger(str(run_dir / HISTORY_FILE), append=state is not None),
                     AtomicBackupAndRestore(str(run_dir / BACKUP_DIR), save_freq=settings["backup_every"] or "epoch")]
        images = data.train.map(lambda image, label: image).cache().shuffle(10000, seed=seed)
        model.fit(images.batch(config.train.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE),
                  epochs=config.train.epochs, verbose=config.train.verbose, callbacks=callbacks)
        earlier = {}
        if (run_dir / "class_histograms.json").is_file():
            earlier = json.loads((run_dir / "class_histograms.json").read_text(encoding="utf-8"))
        histograms = {**earlier, **{str(epoch + 1): h for epoch, h in epoch_end.histograms.items()}}
        write_json_atomically(run_dir / "class_histograms.json", histograms)
        write_atomically(run_dir / TRAINED_MODEL, lambda temporary: model.generator.save(temporary))
    train_seconds = time.perf_counter() - start
    history = pd.read_csv(run_dir / HISTORY_FILE)
    if not np.isfinite(history[["d_loss", "g_loss"]].to_numpy()).all():
        raise TrainingError("GAN training diverged (a NaN or infinite loss); lower --learning-rate")
    artifacts = export_tensor_model(generator, run_dir, probe_latent[:256], input_name="latent",
                                    output_name="images")
    final = history.iloc[-1]
    last_epoch = str(int(final["epoch"]) + 1)
    test_metrics = {"frechet_distance": float(final["frechet_distance"]),
                    "frechet_distance_epoch_1": float(history["frechet_distance"].iloc[0]),
                    "class_entropy": float(final["class_entropy"]), "max_class_entropy": math.log(data.num_classes),
                    "class_histogram": histograms.get(last_epoch)}
    manifest = {**generative_report.versions(), "run_name": run_dir.name, "task": "gan", "dataset": config.data.dataset,
                "model": "dcgan", "options": config.model.options, "class_names": data.class_names,
                "input_shape": list(data.input_shape), "latent_dim": model.latent_dim, "counts": data.counts,
                "epochs_run": len(history), "resumed": resumed, "train_seconds": round(train_seconds, 3),
                "quality": {"measure": NOT_INCEPTION, "feature_layer": probe.layer, "samples": settings["fd_samples"],
                            "classifier": settings["classifier"] or CLASSIFIER_FILE},
                "test_metrics": test_metrics, "artifacts": artifacts}
    write_manifest(run_dir, manifest)
    (run_dir / TRAINED_MODEL).unlink(missing_ok=True)
    figures = {"quality_curves.png": plots.png_bytes(generative_report.curves_figure(
        history, ["d_loss", "g_loss", "frechet_distance", "class_entropy"], "DCGAN training"))}
    final_samples = run_dir / SAMPLES_DIR / f"epoch_{int(last_epoch):03d}.png"
    if final_samples.is_file():
        figures["samples.png"] = final_samples.read_bytes()
    report = generative_report.write_report(
        run_dir, f"DCGAN {run_dir.name} ({config.data.dataset})",
        {k: v for k, v in test_metrics.items() if k != "class_histogram"} | {"epochs_run": len(history)}, figures,
        [NOT_INCEPTION, f"features: layer {probe.layer!r} of the classifier"])
    return GanResult(run_dir=run_dir, model=model, test_metrics=test_metrics, manifest=manifest, report=report)
