"""`kerascnn bench train`: kerascnn's training loop against a hand-written `model.fit`, and streaming memory.

1. Throughput: the same generated images and the same architecture (fresh weights each time),
   trained once by `kerascnn.train` into a run directory with the callbacks `kerascnn train` runs
   (best checkpoint, backup every `train.backup_every` batches, CSV history, TensorBoard) and once by
   a plain `model.fit(x, y, validation_data=...)` on the numpy arrays. The two alternate, the
   reference first in odd rounds and second in even ones, and the best of `--repeats` is kept for
   each, so load from other jobs hits both alike. `ratio` >= 0.95 means the pipeline costs (next to)
   nothing.
2. Memory: peak resident memory of fresh processes training one epoch from generated image
   folders, with `data.cache = false` so that images stream from disk (`--cache` keeps them in
   memory instead, for comparison). TensorFlow and the model alone take over a gigabyte, so each
   folder's peak is reported above a baseline process that trains on `BASELINE_IMAGES` images,
   per 10,000 images. The decoded images are 28 x 28 uint8, about 8 MB per 10,000: caching keeps all
   of them, streaming only the shuffle buffer's 10,000 (`data.shuffle_buffer`), so a streamed 50,000
   folder shows about a fifth of what a cached one does. Peaks include the folder scan's transient
   buffers, so the resident memory at the end of the epoch is reported too: what the epoch keeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kerascnn.bench import register_bench
from kerascnn.errors import KerasCNNError

BENCH_MODEL = ("cnn", {"filters": [32, 64], "dense": 256})
NUM_CLASSES = 10
BASELINE_IMAGES = 100


def add_arguments(parser) -> None:
    parser.add_argument("--images", type=int, default=20000, help="generated training+validation images (20000)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per throughput run (3)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (128)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each loop; best kept (2)")
    parser.add_argument("--folder-sizes", type=int, nargs=2, default=[10000, 50000], metavar=("SMALL", "LARGE"),
                        help="images in the two generated folders (10000 50000)")
    parser.add_argument("--cache", action="store_true", help="keep the folders' decoded images in memory "
                                                             "(data.cache = true) instead of streaming them")


def generated_images(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """28x28 grayscale images whose brightest row encodes the class, plus noise: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, count)
    images = rng.integers(0, 128, (count, 28, 28, 1), dtype=np.uint8)
    images[np.arange(count), 2 + 2 * labels] += 120
    return images, labels


def _model(data):
    import keras

    from kerascnn.models import build_model

    keras.utils.set_random_seed(0)
    name, options = BENCH_MODEL
    return build_model(name, data.input_shape, data.num_classes, **options)


def kerascnn_images_per_s(data, config) -> float:
    """kerascnn's loop as `kerascnn train` runs it: into a run directory, with all its callbacks."""
    from kerascnn.training import train

    with tempfile.TemporaryDirectory(prefix="kerascnn-bench-run-") as run_dir:
        result = train(_model(data), data, config, run_dir=Path(run_dir))
    return data.counts["train"] * config.epochs / result.train_seconds


def fit_images_per_s(data, config) -> float:
    """The reference: what a user would write by hand over the same arrays."""
    import keras

    from kerascnn.training import compile_model

    (x, y), (x_val, y_val) = data.arrays["train"], data.arrays["validation"]
    x, x_val = x.astype("float32"), x_val.astype("float32")
    y, y_val = keras.utils.to_categorical(y, NUM_CLASSES), keras.utils.to_categorical(y_val, NUM_CLASSES)
    model = compile_model(_model(data), config, steps_per_epoch=-(-len(x) // config.batch_size))
    start = time.perf_counter()
    model.fit(x, y, batch_size=config.batch_size, epochs=config.epochs, validation_data=(x_val, y_val), verbose=0)
    return len(x) * config.epochs / (time.perf_counter() - start)


def write_folder(root: Path, count: int) -> Path:
    """A class-per-folder tree of `count` PNG images."""
    from PIL import Image

    images, labels = generated_images(count, seed=1)
    for label in range(NUM_CLASSES):
        (root / f"class_{label}").mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image[..., 0]).save(root / f"class_{label}" / f"{i:06d}.png")
    return root


def folder_memory_mb(folder: Path, batch_size: int, cache: bool = False, shuffle_buffer: int = 10000
                     ) -> tuple[float, float]:
    """(peak, resident after the epoch) RSS in MB of a fresh process that trains one epoch from `folder`,
    streamed unless `cache`.

    The peak includes transient buffers (the folder scan decodes every file in parallel); what the
    epoch keeps, a cache for one, shows in the resident memory at its end. The shuffle buffer holds up
    to `shuffle_buffer` decoded images whether or not they are cached (`data.shuffle_buffer`, 10,000)."""
    code = ("import json, resource, sys; from kerascnn.bench.train import train_from_folder; "
            "train_from_folder(sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1', int(sys.argv[4])); "
            "rss = [int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmRSS:')][0]; "
            "print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss / 1024]))")
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(batch_size), "1" if cache else "0",
                           str(shuffle_buffer)], capture_output=True, text=True, check=True)
    peak, resident = json.loads(done.stdout.strip().splitlines()[-1])
    return peak, resident


def train_from_folder(folder: str, batch_size: int, cache: bool = False, shuffle_buffer: int = 10000) -> None:
    """One epoch from an image folder, streamed (`data.cache = false`) unless `cache`; run in the measured
    process."""
    from kerascnn.config import DataConfig, TrainConfig
    from kerascnn.data.datasets import load_data
    from kerascnn.training import train

    data = load_data(DataConfig(dataset=folder, image_size=(28, 28), cache=cache))
    train(_model(data), data, TrainConfig(epochs=1, batch_size=batch_size, verbose=0, tensorboard=False),
          cache=cache, shuffle_buffer=shuffle_buffer)


def mb_per_10k_images(peak_mb: float, baseline_mb: float, images: int) -> float:
    """Memory above the baseline process, per 10,000 images of the folder."""
    return (peak_mb - baseline_mb) * 10000 / (images - BASELINE_IMAGES)


@register_bench("train", help="kerascnn's training loop vs a hand-written model.fit; streaming memory",
                add_arguments=add_arguments)
def run(args) -> dict:
    from kerascnn.config import DataConfig, TrainConfig
    from kerascnn.data.datasets import from_arrays

    images, labels = generated_images(args.images)
    test_images, test_labels = generated_images(256, seed=2)
    data = from_arrays(images, labels, test_images, test_labels, config=DataConfig(dataset="generated"))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, early_stopping_patience=0, verbose=0)
    ours, reference = [], []
    for round_ in range(args.repeats):  # alternate which loop runs first
        pair = [(reference, fit_images_per_s), (ours, kerascnn_images_per_s)]
        for results, measure in (pair if round_ % 2 == 0 else pair[::-1]):
            results.append(measure(data, config))
    small, large = args.folder_sizes
    if min(small, large) <= BASELINE_IMAGES:
        raise KerasCNNError(f"--folder-sizes must be above the {BASELINE_IMAGES}-image baseline folder")
    with tempfile.TemporaryDirectory(prefix="kerascnn-bench-") as workdir:
        memory = {n: folder_memory_mb(write_folder(Path(workdir) / str(n), n), args.batch_size, args.cache)
                  for n in (BASELINE_IMAGES, small, large)}
    peaks = {n: peak for n, (peak, _) in memory.items()}
    resident = {n: kept for n, (_, kept) in memory.items()}
    return {
        "fit_images_per_s": round(max(reference), 1),
        "kerascnn_images_per_s": round(max(ours), 1),
        "ratio": round(max(ours) / max(reference), 3),
        "small_folder_images": small,
        "large_folder_images": large,
        "small_folder_peak_mb": round(peaks[small], 4),
        "large_folder_peak_mb": round(peaks[large], 4),
        "baseline_peak_mb": round(peaks[BASELINE_IMAGES], 4),
        "cache": args.cache,
        "small_folder_mb_per_10k_images": round(mb_per_10k_images(peaks[small], peaks[BASELINE_IMAGES], small), 2),
        "large_folder_mb_per_10k_images": round(mb_per_10k_images(peaks[large], peaks[BASELINE_IMAGES], large), 2),
        "large_folder_resident_mb_per_10k_images": round(
            mb_per_10k_images(resident[large], resident[BASELINE_IMAGES], large), 2),
        "baseline_resident_mb": round(resident[BASELINE_IMAGES], 1),
        "memory_ratio": round(peaks[large] / peaks[small], 3),
    }
