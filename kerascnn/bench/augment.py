"""`kerascnn bench augment`: the legacy ImageDataGenerator against the fast path, in one run.

Both augment the same in-memory images, in the same order, with the course notes' parameters (rotation 20,
shifts 0.1, shear 10, zoom 0.1, horizontal flip, nearest fill) and batch size, and are consumed the
way training consumes them: the legacy generator's `flow` batch by batch in Python, the fast path's
tf.data pipeline (batch, parallel augment map, prefetch) inside a TensorFlow graph, as `model.fit`
reads it.

Timing on a machine shared with other jobs: the run is a series of rounds, each one legacy pass
then one fast pass lasting about as long (the fast pipeline repeats the images as often as needed),
so load from other jobs falls on both alike. Each rate is all images over all time of its passes,
and `ratio` their quotient. The process CPU time per image is reported too: it shows the work each
path does, which other jobs disturb far less than wall time.
"""

from __future__ import annotations

import time

import numpy as np

from kerascnn.bench import register_bench
from kerascnn.errors import KerasCNNError

# Image side -> (channels, number of images): Fashion-MNIST-sized grayscale, transfer-learning-sized colour.
SIZES = {28: (1, 8192), 96: (3, 2048), 224: (3, 512)}
NUM_CLASSES = 10


def add_arguments(parser) -> None:
    parser.add_argument("--size", type=int, choices=sorted(SIZES), default=28,
                        help="image side: 28 (x1 channel), 96 or 224 (x3 channels) (default 28)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch for both (default 32)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of legacy then fast (default 5)")
    parser.add_argument("--images", type=int, help="number of generated images (default 8192, 2048, 512 by size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")


def bench_images(size: int, count: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated raw pixels (float32 0..255, as the pipeline serves them) and labels for `size`."""
    channels, default_count = SIZES[size]
    count = count or default_count
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, channels)).astype(np.float32)
    return images, rng.integers(0, NUM_CLASSES, count).astype(np.int32)


def _timed(run_pass) -> tuple[int, float, float]:
    """(images, wall seconds, process CPU seconds) of one pass; `run_pass` returns its image count."""
    wall, cpu = time.perf_counter(), time.process_time()
    count = run_pass()
    return count, time.perf_counter() - wall, time.process_time() - cpu


def _totals(passes) -> tuple[float, float]:
    """(images/s, CPU microseconds per image) over all `passes`."""
    images, wall, cpu = (sum(column) for column in zip(*passes))
    return images / wall, cpu / images * 1e6


@register_bench("augment", help="legacy ImageDataGenerator vs the fast augmentation path (images/s)",
                add_arguments=add_arguments)
def bench_augment(args) -> dict:
    if (args.images is not None and args.images < 1) or args.batch_size < 1 or args.rounds < 1:
        raise KerasCNNError("--images, --batch-size and --rounds must be at least 1")
    import tensorflow as tf

    from kerascnn.data.augment import COURSE_AUGMENTATION, FastAugment, LegacyAugment

    images, labels = bench_images(args.size, args.images, args.seed)
    legacy_flow = LegacyAugment(COURSE_AUGMENTATION, seed=args.seed).generator.flow(
        images, labels, batch_size=args.batch_size, shuffle=False, seed=args.seed)
    fast_augment = FastAugment(COURSE_AUGMENTATION, seed=args.seed)

    def legacy_pass() -> int:
        return sum(len(legacy_flow[index][0]) for index in range(len(legacy_flow)))

    def fast_pass_over(repeats: int):
        pipeline = (tf.data.Dataset.from_tensor_slices((images, labels)).repeat(repeats).batch(args.batch_size)
                    .map(fast_augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
        count_images = tf.function(lambda: pipeline.reduce(0, lambda n, batch: n + tf.shape(batch[0])[0]))
        return lambda: int(count_images())

    # Warm-up (tracing, first allocations), which also sizes the fast pass to last as long as a legacy one.
    legacy_rate, _ = _totals([_timed(legacy_pass)])
    fast_rate, _ = _totals([_timed(fast_pass_over(1))])
    fast_pass = fast_pass_over(max(1, round(fast_rate / legacy_rate)))
    fast_pass()
    legacy_passes, fast_passes = [], []
    for _ in range(args.rounds):
        legacy_passes.append(_timed(legacy_pass))
        fast_passes.append(_timed(fast_pass))
    (legacy, legacy_cpu), (fast, fast_cpu) = _totals(legacy_passes), _totals(fast_passes)
    return {
        "image_shape": [args.size, args.size, SIZES[args.size][0]],
        "images": len(images),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "legacy_images_per_s": round(legacy, 1),
        "fast_images_per_s": round(fast, 1),
        "ratio": round(fast / legacy, 2),
        "legacy_cpu_us_per_image": round(legacy_cpu, 1),
        "fast_cpu_us_per_image": round(fast_cpu, 1),
    }
