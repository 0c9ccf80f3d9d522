"""`kerascnn bench augment`: the legacy ImageDataGenerator against the fast path, on the same cores, in one run.

What is compared: the same in-memory images (generated float32 pixels 0..255), in the same order and
batch size, augmented with the same transformations, the course notes' parameters (rotation 20, shifts
0.1, shear 10, zoom 0.1, horizontal flip, nearest fill): `ImageDataGenerator.apply_transform` (scipy,
one bilinear pass a channel) on one side, one `cv2.warpAffine` an image with the same composed matrix
on the other (tests/test_augment.py checks they give the same image). Both are consumed the way
training consumes them:

- reference: the generator's `flow` iterator, a keras `PyDataset`, given the machine's cores the way a
  user can: `workers` = the number of cores and `use_multiprocessing=True`, read through Keras'
  `PyDatasetAdapter` (the `OrderedEnqueuer` that `model.fit` uses; its worker pool starts and stops
  with each pass, as with each epoch of `fit`), batches taken as numpy arrays (skipping the tf.data
  wrapper `fit` puts around them, which only adds work). The default because it is the one way a
  user gives the generator a second core: its Python loop holds the GIL, so `--reference threads`
  (the same enqueuer with a thread pool) and the generator inside a tf.data parallel map
  (`numpy_function`) measured no faster than one thread. `--reference serial` (one thread, no
  enqueuer) spends the least CPU per image: the worker processes pay for forking and for pickling
  every batch back. Which is fastest in wall time depends on how much of the second core the
  machine gives; docs/benchmarks.md has all three, and the lowest ratios are the ones to quote;
- fast path: `FastAugment.augmented_batches` (what `kerascnn train` builds: batch, parallel augment
  map on all cores over chunks of batches, rebatch, prefetch) inside a TensorFlow graph, as
  `model.fit` reads it.

Timing on a machine shared with other jobs: the run is a series of rounds, each one reference pass and
one fast pass lasting about as long (the fast pipeline repeats the images as often as needed), in
alternating order, so load from other jobs falls on both alike. Each side's figure is its best round
(highest images/s; fewest CPU microseconds per image). CPU time is the whole process's, threads and
reaped children included (`getrusage` RUSAGE_SELF + RUSAGE_CHILDREN; the reference's worker processes
are waited for after each pass, outside its wall time): other jobs disturb it far less than wall time.
`wall_ratio` and `cpu_ratio` are fast over reference.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time

import numpy as np

from kerascnn.bench import register_bench
from kerascnn.errors import KerasCNNError

# Image side -> (channels, number of images): Fashion-MNIST-sized grayscale, transfer-learning-sized colour.
SIZES = {28: (1, 8192), 96: (3, 2048), 224: (3, 512)}
NUM_CLASSES = 10
REFERENCES = ("processes", "threads", "serial")
WORKER_EXIT_SECONDS = 30


def add_arguments(parser) -> None:
    parser.add_argument("--size", type=int, choices=sorted(SIZES), default=28,
                        help="image side: 28 (x1 channel), 96 or 224 (x3 channels) (default 28)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch for both (default 32)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, alternating which side runs first "
                                                              "(default 5)")
    parser.add_argument("--images", type=int, help="number of generated images (default 8192, 2048, 512 by size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    parser.add_argument("--reference", choices=REFERENCES, default="processes",
                        help="how ImageDataGenerator gets the cores: PyDataset worker processes (default), "
                             "worker threads, or serial")
    parser.add_argument("--workers", type=int, help="the reference's workers (default: the number of cores)")


def bench_images(size: int, count: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated raw pixels (float32 0..255, as the pipeline serves them) and labels for `size`."""
    channels, default_count = SIZES[size]
    count = count or default_count
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, channels)).astype(np.float32)
    return images, rng.integers(0, NUM_CLASSES, count).astype(np.int32)


def cpu_seconds() -> float:
    """CPU time of this process, all its threads and its reaped children, user plus system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reap_workers() -> None:
    """Wait for finished worker processes, so that RUSAGE_CHILDREN counts their CPU time."""
    deadline = time.monotonic() + WORKER_EXIT_SECONDS
    while multiprocessing.active_children():  # also joins those that have exited
        if time.monotonic() > deadline:
            raise KerasCNNError("the reference's worker processes did not exit; their CPU time cannot be counted")
        time.sleep(0.01)


def _timed(run_pass) -> tuple[float, float]:
    """(wall seconds per image, CPU seconds per image) of one pass; `run_pass` returns its image count."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    count = run_pass()
    wall = time.perf_counter() - wall
    reap_workers()
    return wall / count, (cpu_seconds() - cpu) / count


def reference_pass(flow, reference: str, workers: int):
    """One epoch of the generator's iterator through Keras' PyDatasetAdapter, as `model.fit` reads it."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    # IDG.flow does not forward PyDataset's arguments; they are plain settable properties.
    flow.workers = 1 if reference == "serial" else workers
    flow.use_multiprocessing = reference == "processes"

    def run() -> int:
        adapter = PyDatasetAdapter(flow)
        adapter.on_epoch_begin()
        count = sum(len(batch[0]) for batch in adapter.get_numpy_iterator())
        adapter.on_epoch_end()
        return count

    return run


def fast_pass(images, labels, fast_augment, batch_size: int, repeats: int):
    """`repeats` epochs of the fast path's training pipeline, counted inside one TensorFlow graph."""
    import tensorflow as tf

    source = tf.data.Dataset.from_tensor_slices((images, labels)).repeat(repeats)
    pipeline = fast_augment.augmented_batches(source, batch_size).prefetch(tf.data.AUTOTUNE)
    count_images = tf.function(lambda: pipeline.reduce(0, lambda n, batch: n + tf.shape(batch[0])[0]))
    return lambda: int(count_images())


@register_bench("augment", help="legacy ImageDataGenerator on the same cores vs the fast augmentation path "
                                "(wall and CPU ratios)", add_arguments=add_arguments)
def bench_augment(args) -> dict:
    reference = getattr(args, "reference", "processes")
    workers = getattr(args, "workers", None) or os.cpu_count() or 1
    if (args.images is not None and args.images < 1) or args.batch_size < 1 or args.rounds < 1 or workers < 1:
        raise KerasCNNError("--images, --batch-size, --rounds and --workers must be at least 1")

    from kerascnn.data.augment import COURSE_AUGMENTATION, FastAugment, LegacyAugment

    images, labels = bench_images(args.size, args.images, args.seed)
    flow = LegacyAugment(COURSE_AUGMENTATION, seed=args.seed).generator.flow(
        images, labels, batch_size=args.batch_size, shuffle=False, seed=args.seed)
    fast_augment = FastAugment(COURSE_AUGMENTATION, seed=args.seed)
    legacy = reference_pass(flow, reference, workers)

    # Warm-up (tracing, first allocations, worker start), which also sizes the fast pass to last as long.
    legacy_wall, _ = _timed(legacy)
    fast_wall, _ = _timed(fast_pass(images, labels, fast_augment, args.batch_size, 1))
    fast = fast_pass(images, labels, fast_augment, args.batch_size, max(1, round(legacy_wall / fast_wall)))
    fast()
    legacy_passes, fast_passes = [], []
    for round_index in range(args.rounds):
        order = [(legacy, legacy_passes), (fast, fast_passes)]
        for run_pass, passes in order if round_index % 2 == 0 else order[::-1]:
            passes.append(_timed(run_pass))
    legacy_wall, legacy_cpu = (min(column) for column in zip(*legacy_passes))
    fast_wall, fast_cpu = (min(column) for column in zip(*fast_passes))
    return {
        "image_shape": [args.size, args.size, SIZES[args.size][0]],
        "images": len(images),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "reference": reference,
        "reference_workers": 1 if reference == "serial" else workers,
        "legacy_images_per_s": round(1 / legacy_wall, 1),
        "fast_images_per_s": round(1 / fast_wall, 1),
        "wall_ratio": round(legacy_wall / fast_wall, 2),
        "legacy_cpu_us_per_image": round(legacy_cpu * 1e6, 2),
        "fast_cpu_us_per_image": round(fast_cpu * 1e6, 2),
        "cpu_ratio": round(legacy_cpu / fast_cpu, 2),
    }
