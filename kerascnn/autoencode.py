"""`autoencode(...)`: train a convolutional autoencoder (plain, denoising or compressing) into a run directory.

Plain: the model learns to reproduce its input. Denoising (`noise > 0`): Gaussian noise (standard
deviation `noise` of the 0..255 range) or salt-and-pepper noise (a fraction `noise` of the pixels
set to 0 or 255) is added to the training and validation inputs in the tf.data pipeline, the clean
image being the target; the model itself adds no noise, so artifacts just denoise. Compression:
`latent_dim` sets a dense bottleneck; the manifest reports its size against the input's.

Metrics on the test split (`tf.image`): MSE (on 0..1 pixels), PSNR and SSIM of the reconstruction
against the clean image (`mse`, `psnr`, `ssim`) and of the noisy input against it (`*_noisy`; None
without noise). With `anomaly_class`, that class is left out of training, the metrics are computed on
the other classes, and the reconstruction error of each clean test image scores it as an anomaly:
`anomaly_auc` is the ROC AUC of the held-out class against the rest.

The run directory is a kerascnn run directory (config.toml, manifest.json, history.csv,
checkpoints/, logs/) with the artifacts model.keras, model.h5, saved_model/<version> (pixels in,
pixels out) and model.tflite, each checked output for output (`kerascnn.tensor_export`), and a
report with input / noisy / reconstructed grids and a t-SNE map of the codes.

Example:
    result = autoencode("fashion_mnist", noise=0.3, epochs=5, name="fm-denoise")
    print(result.test_metrics["psnr_noisy"], result.test_metrics["psnr"])
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from kerascnn import generative_report, plots
from kerascnn.config import RunConfig, load_config
from kerascnn.data.datasets import load_data
from kerascnn.data.imagedata import ImageData
from kerascnn.errors import ConfigError, DataError, suggest
from kerascnn.models.autoencoder import bottleneck_size, encoder
from kerascnn.models.registry import build_model
from kerascnn.rundir import CONFIG_FILE, HISTORY_FILE, TRAINED_MODEL, write_manifest, write_text_atomically
from kerascnn.runner import check_config, check_free_space, prepare_run_dir
from kerascnn.tensor_export import export_tensor_model
from kerascnn.training import make_callbacks, make_optimizer

NOISE_TYPES = ("gaussian", "salt_pepper")
PARITY_IMAGES = 512  # test images each artifact is checked on
GRID_IMAGES = 10


@dataclasses.dataclass
class AutoencodeResult:
    """What `autoencode` produced: the run directory, the model, its test metrics and the manifest."""

    run_dir: Path
    model: keras.Model
    data: ImageData
    test_metrics: dict
    manifest: dict
    report: Path | None = None


def add_noise(images: tf.Tensor, noise_type: str, amount: float, seed=None) -> tf.Tensor:
    """`images` (0..255) with Gaussian (std `amount` x 255) or salt-and-pepper (fraction `amount`) noise.

    `seed`, a stateless seed pair, makes the noise reproducible (evaluation); None draws new noise
    at every call (training: each epoch sees other noise).
    """
    shape = tf.shape(images)
    if noise_type == "gaussian":
        draw = (tf.random.stateless_normal(shape, seed) if seed is not None else tf.random.normal(shape))
        return tf.clip_by_value(images + 255.0 * amount * draw, 0.0, 255.0)
    draw = tf.random.stateless_uniform(shape, seed) if seed is not None else tf.random.uniform(shape)
    images = tf.where(draw < amount / 2, 0.0, images)
    return tf.where(draw > 1.0 - amount / 2, 255.0, images)


def check_noise(noise_type: str, amount: float) -> None:
    if noise_type not in NOISE_TYPES:
        raise ConfigError(f"unknown noise type {noise_type!r}{suggest(noise_type, NOISE_TYPES)}; use one of "
                          f"{', '.join(NOISE_TYPES)}")
    if not 0.0 <= amount <= (1.0 if noise_type == "salt_pepper" else 2.0):
        raise ConfigError(f"--noise {amount} is out of range: a standard deviation in [0, 2] of the pixel range for "
                          f"gaussian, a fraction of pixels in [0, 1] for salt_pepper (0: a plain autoencoder)")


def resolve_class(data: ImageData, name_or_index: str | int) -> int:
    """The index of a class given by name or index, or a DataError naming the classes."""
    names = list(data.class_names)
    if str(name_or_index) in names:
        return names.index(str(name_or_index))
    if str(name_or_index).isdigit() and int(name_or_index) < len(names):
        return int(name_or_index)
    raise DataError(f"--anomaly-class {name_or_index!r} is not a class of {data.name}{suggest(name_or_index, names)}; "
                    f"classes: {', '.join(names)} (or an index 0..{len(names) - 1})")


def split_arrays(data: ImageData, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 0..255, labels) of a whole split, read once."""
    images, labels = [], []
    for x, y in getattr(data, split).batch(512).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    return np.concatenate(images).astype(np.float32), np.concatenate(labels)


def noisy_copy(images: np.ndarray, noise_type: str, amount: float, seed: int) -> np.ndarray:
    """A reproducible noisy copy of `images` (the same noise for the same seed), or `images` without noise."""
    if amount == 0:
        return images
    return add_noise(tf.constant(images), noise_type, amount, seed=tf.constant([seed, 0])).numpy()


def image_metrics(reconstructed: np.ndarray, clean: np.ndarray) -> dict:
    """Mean MSE (0..1 pixels), PSNR (dB) and SSIM of `reconstructed` against `clean`, both 0..255, via tf.image."""
    a, b = tf.constant(reconstructed, tf.float32), tf.constant(clean, tf.float32)
    psnr = tf.image.psnr(a, b, max_val=255.0).numpy()
    ssim = tf.image.ssim(a, b, max_val=255.0, filter_size=min(11, clean.shape[1], clean.shape[2])).numpy()
    return {"mse": float(np.mean(((reconstructed - clean) / 255.0) ** 2)),
            "psnr": float(np.mean(psnr)) if np.isfinite(psnr).all() else None, "ssim": float(np.mean(ssim))}


def reconstruction_error(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Per-image mean squared error (0..1 pixels) of the model's reconstruction: the anomaly score."""
    errors = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        output = np.asarray(model(batch, training=False))
        errors.append(np.mean(((output - batch) / 255.0) ** 2, axis=(1, 2, 3)))
    return np.concatenate(errors)


def reconstruct(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([np.asarray(model(images[i:i + batch_size], training=False))
                           for i in range(0, len(images), batch_size)])


def embed(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The codes (flattened bottleneck) of `images` under an autoencoder's encoder: features for t-SNE."""
    network = encoder(model)
    return np.concatenate([np.asarray(network(images[i:i + batch_size], training=False))
                           for i in range(0, len(images), batch_size)])


def tsne_points(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of `features` after PCA to 50 dimensions, single-threaded as in
    kerascnn.report (TensorFlow's idle threads slow scikit-learn's OpenMP loops on 2 cores)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        if features.shape[1] > 50:
            features = PCA(n_components=min(50, len(features)), random_state=seed).fit_transform(features)
        return TSNE(n_components=2, perplexity=min(30.0, (len(features) - 1) / 3), init="pca",
                    learning_rate="auto", random_state=seed).fit_transform(features)


def autoencode_config(dataset: str = "digits", epochs: int = 10, output: str = "saved_models",
                      name: str | None = None, latent_dim: int | None = None, filters=(32, 64),
                      image_size=None, batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 42,
                      overwrite: bool = False, verbose: int = 1, max_train_examples: int | None = None) -> RunConfig:
    """The RunConfig an autoencoder run stores in config.toml (model `autoencoder`, early stopping on val_loss)."""
    options = {"filters": list(filters), **({"latent_dim": latent_dim} if latent_dim is not None else {})}
    values = {"data.dataset": dataset, "train.epochs": epochs, "run.output": output, "run.name": name,
              "model.name": "autoencoder", "model.options": options, "train.batch_size": batch_size,
              "train.learning_rate": learning_rate, "run.seed": seed, "run.overwrite": overwrite,
              "train.verbose": verbose, "data.image_size": list(image_size) if image_size else None,
              "data.max_train_examples": max_train_examples}
    return load_config(values={key: value for key, value in values.items() if value is not None})


def _pixels_pipeline(ds: tf.data.Dataset, batch_size: int, noise_type: str, amount: float, training: bool,
                     seed: int, keep, count: int | None) -> tf.data.Dataset:
    """(noisy pixels, clean pixels) batches: cached, shuffled when training, noised per batch. `count`,
    the images `keep` lets through where known, tells Keras the epoch's length (a filter hides it)."""
    ds = ds.filter(keep).map(lambda image, label: image)
    if count is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    ds = ds.cache()
    if training:
        ds = ds.shuffle(10000, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if amount == 0:
        ds = ds.map(lambda clean: (clean, clean))
    elif training:
        ds = ds.map(lambda clean: (add_noise(clean, noise_type, amount), clean), num_parallel_calls=tf.data.AUTOTUNE)
    else:  # validation sees the same noise every epoch, so val_loss is comparable across epochs
        ds = ds.enumerate().map(lambda i, clean: (add_noise(clean, noise_type, amount,
                                                            seed=tf.stack([tf.constant(seed, tf.int64), i])), clean))
    return ds.prefetch(tf.data.AUTOTUNE)


def autoencode(dataset: str = "digits", noise: float = 0.0, noise_type: str = "gaussian", epochs: int = 10,
               output: str = "saved_models", name: str | None = None, latent_dim: int | None = None,
               filters=(32, 64), image_size=None, batch_size: int = 64, learning_rate: float = 1e-3,
               anomaly_class: str | int | None = None, seed: int = 42, overwrite: bool = False, verbose: int = 1,
               report: bool = True, max_train_examples: int | None = None, tsne_sample: int = 500,
               data: ImageData | None = None) -> AutoencodeResult:
    """Train, evaluate and export one autoencoder run, then write its report.

    Args:
        dataset: a name from `kerascnn datasets`, tfds:<name> or an image folder (default digits).
        noise: 0 for a plain autoencoder; else the noise of a denoising one (see `noise_type`) (default 0).
        noise_type: gaussian (std `noise` of 0..255) | salt_pepper (fraction `noise` of pixels) (default gaussian).
        epochs: training epochs; early stopping on val_loss after 5 without improvement (default 10).
        output, name, overwrite, seed, verbose: as for `kerascnn train`.
        latent_dim: size of a dense bottleneck; None keeps the last feature map (default None).
        filters: filters of the encoder's stride-2 convolutions (default (32, 64)).
        image_size: (height, width) to resize to; sides must be multiples of 2 ** len(filters).
        batch_size, learning_rate: Adam's batch and step size (default 64, 0.001).
        anomaly_class: a class name or index left out of training and scored as anomaly (default none).
        report: write report.html / report.md with the grids and t-SNE map (default True).
        max_train_examples: cap on training images (default all).
        tsne_sample: test images in the t-SNE map; 0 skips it (default 500).
        data: an ImageData to use instead of loading `dataset` (e.g. from `from_arrays`).
    """
    check_noise(noise_type, noise)
    config = check_config(autoencode_config(dataset, epochs, output, name, latent_dim, filters, image_size,
                                            batch_size, learning_rate, seed, overwrite, verbose, max_train_examples))
    run_dir = prepare_run_dir(config)
    keras.utils.set_random_seed(seed)
    data = data or load_data(config.data, seed=seed)
    held_out = None if anomaly_class is None else resolve_class(data, anomaly_class)
    model = build_model("autoencoder", data.input_shape, **config.model.options)
    check_free_space(run_dir, model)
    if run_dir.exists():  # --overwrite: the old run goes only now that the inputs are known good
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_text_atomically(run_dir / CONFIG_FILE, config.to_toml())

    def keep(image, label):
        return tf.constant(True) if held_out is None else tf.not_equal(label, held_out)

    counts = {split: data.counts[split] if held_out is None else None for split in ("train", "validation")}
    if held_out is not None and data.arrays is not None:
        counts = {split: int((data.arrays[split][1] != held_out).sum()) for split in counts}
    steps = max(1, math.ceil((counts["train"] or data.counts["train"]) / batch_size))
    model.compile(optimizer=make_optimizer(config.train, steps), loss="mse")
    train_ds = _pixels_pipeline(data.train, batch_size, noise_type, noise, True, seed, keep, counts["train"])
    validation_ds = _pixels_pipeline(data.validation, batch_size, noise_type, noise, False, seed, keep,
                                     counts["validation"])
    start = time.perf_counter()
    model.fit(train_ds, validation_data=validation_ds, epochs=epochs, verbose=verbose,
              callbacks=make_callbacks(config.train, run_dir))
    train_seconds = time.perf_counter() - start
    history = pd.read_csv(run_dir / HISTORY_FILE)

    images, labels = split_arrays(data, "test")
    normal = labels != held_out if held_out is not None else np.ones(len(labels), bool)
    clean = images[normal]
    noisy = noisy_copy(clean, noise_type, noise, seed)
    reconstructed = reconstruct(model, noisy)
    noisy_metrics = image_metrics(noisy, clean) if noise else {"mse": None, "psnr": None, "ssim": None}
    test_metrics = {**image_metrics(reconstructed, clean),
                    **{f"{key}_noisy": value for key, value in noisy_metrics.items()}}
    anomaly = None
    if held_out is not None:
        from sklearn.metrics import roc_auc_score

        scores = reconstruction_error(model, images)
        test_metrics["anomaly_auc"] = float(roc_auc_score(labels == held_out, scores))
        anomaly = {"class": data.class_names[held_out], "index": held_out, "auc": test_metrics["anomaly_auc"],
                   "score": "per-image MSE of the reconstruction of the clean test image",
                   "n_anomalies": int((labels == held_out).sum()), "n_normal": int(normal.sum())}

    artifacts = export_tensor_model(model, run_dir, noisy[:PARITY_IMAGES])
    input_size = int(math.prod(data.input_shape))
    code_size = bottleneck_size(model)
    manifest = {**generative_report.versions(), "run_name": run_dir.name, "task": "autoencode",
                "dataset": config.data.dataset, "model": "autoencoder", "options": config.model.options,
                "class_names": data.class_names, "input_shape": list(data.input_shape), "counts": data.counts,
                "noise": {"type": noise_type if noise else None, "amount": noise,
                          "applied": "training and validation inputs only (tf.data pipeline)"},
                "compression": {"input_size": input_size, "bottleneck_size": code_size,
                                "ratio": round(input_size / code_size, 4)},
                "anomaly": anomaly, "epochs_run": len(history), "train_seconds": round(train_seconds, 3),
                "test_metrics": test_metrics, "artifacts": artifacts}
    write_manifest(run_dir, manifest)
    (run_dir / TRAINED_MODEL).unlink(missing_ok=True)  # model.keras holds it now
    report_path = None
    if report:
        report_path = _write_report(run_dir, model, history, manifest, clean, noisy, reconstructed,
                                    images, labels, data.class_names, tsne_sample, seed)
    return AutoencodeResult(run_dir=run_dir, model=model, data=data, test_metrics=test_metrics, manifest=manifest,
                            report=report_path)


def _write_report(run_dir, model, history, manifest, clean, noisy, reconstructed, images, labels, class_names,
                  tsne_sample, seed) -> Path:
    metrics = manifest["test_metrics"]
    rows = [("input (clean)", clean[:GRID_IMAGES])]
    if manifest["noise"]["amount"]:
        rows.append((f"noisy input: PSNR {metrics['psnr_noisy']:.1f} dB, SSIM {metrics['ssim_noisy']:.3f}",
                     noisy[:GRID_IMAGES]))
    psnr = f"{metrics['psnr']:.1f} dB" if metrics["psnr"] is not None else "inf"
    rows.append((f"reconstructed: PSNR {psnr}, SSIM {metrics['ssim']:.3f}", reconstructed[:GRID_IMAGES]))
    compression = manifest["compression"]
    figures = {"reconstructions.png": plots.png_bytes(generative_report.image_grid_figure(
        rows, f"test images; bottleneck {compression['bottleneck_size']} numbers for {compression['input_size']} "
              f"pixels, compression {compression['ratio']:g}x")),
        "training_curves.png": plots.png_bytes(plots.training_curves_figure(history))}
    notes = []
    if tsne_sample:
        sample = np.random.default_rng(seed).permutation(len(images))[:tsne_sample]
        points = tsne_points(embed(model, images[sample]), seed)
        layer = "latent" if manifest["options"].get("latent_dim") else "backbone"
        figures["tsne.png"] = plots.png_bytes(plots.embedding_figure(points, labels[sample], labels[sample],
                                                                     class_names, layer))
        notes.append(f"t-SNE of the autoencoder's code (layer {layer!r}) of {len(sample)} test images, "
                     f"coloured by class; no labels were used in training")
    if manifest["anomaly"]:
        notes.append(f"anomaly score: reconstruction MSE; class {manifest['anomaly']['class']!r} held out of "
                     f"training; ROC AUC {manifest['anomaly']['auc']:.4f}")
    summary = {**metrics, **{f"compression_{k}": v for k, v in compression.items()},
               "noise": f"{manifest['noise']['type']} {manifest['noise']['amount']}" if manifest["noise"]["type"]
               else "none", "epochs_run": manifest["epochs_run"]}
    return generative_report.write_report(run_dir, f"Autoencoder {run_dir.name} ({manifest['dataset']})", summary,
                                          figures, notes)
