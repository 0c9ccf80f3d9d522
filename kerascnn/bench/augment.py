"""`kerascnn bench augment`: the legacy ImageDataGenerator against the fast path, in one run.

Both augment the same in-memory images, in the same order, with the seeds' parameters (rotation 20,
shifts 0.1, shear 10, zoom 0.1, horizontal flip, nearest fill) and batch size, and are consumed the
way training consumes them: the legacy generator's `flow` batch by batch in Python, the fast path's
tf.data pipeline (batch, parallel augment map, prefetch) inside a TensorFlow graph, as `model.fit`
reads it. Passes alternate between the two and the best pass of each counts, so a burst of load from
other jobs on a shared machine hits both alike.
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
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each; the best counts (default 3)")
    parser.add_argument("--images", type=int, help="number of generated images (default 8192, 2048, 512 by size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")


def bench_images(size: int, count: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated raw pixels (float32 0..255, as the pipeline serves them) and labels for `size`."""
    channels, default_count = SIZES[size]
    count = count or default_count
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, channels)).astype(np.float32)
    return images, rng.integers(0, NUM_CLASSES, count).astype(np.int32)


def _images_per_second(run_pass) -> float:
    """Images/s of one pass; `run_pass` returns how many images it produced."""
    start = time.perf_counter()
    count = run_pass()
    return count / (time.perf_counter() - start)


@register_bench("augment", help="legacy ImageDataGenerator vs the fast augmentation path (images/s)",
                add_arguments=add_arguments)
def bench_augment(args) -> dict:
    if (args.images is not None and args.images < 1) or args.batch_size < 1 or args.repeats < 1:
        raise KerasCNNError("--images, --batch-size and --repeats must be at least 1")
    import tensorflow as tf

    from kerascnn.data.augment import SEED_AUGMENTATION, FastAugment, LegacyAugment

    images, labels = bench_images(args.size, args.images, args.seed)
    legacy_flow = LegacyAugment(SEED_AUGMENTATION, seed=args.seed).generator.flow(
        images, labels, batch_size=args.batch_size, shuffle=False, seed=args.seed)
    fast_pipeline = (tf.data.Dataset.from_tensor_slices((images, labels)).batch(args.batch_size)
                     .map(FastAugment(SEED_AUGMENTATION, seed=args.seed), num_parallel_calls=tf.data.AUTOTUNE)
                     .prefetch(tf.data.AUTOTUNE))

    def legacy_pass() -> int:
        return sum(len(legacy_flow[index][0]) for index in range(len(legacy_flow)))

    count_images = tf.function(lambda: fast_pipeline.reduce(0, lambda n, batch: n + tf.shape(batch[0])[0]))

    def fast_pass() -> int:
        return int(count_images())

    legacy_pass(), fast_pass()  # warm-up: tracing, first allocations
    legacy_rates, fast_rates = [], []
    for _ in range(args.repeats):
        legacy_rates.append(_images_per_second(legacy_pass))
        fast_rates.append(_images_per_second(fast_pass))
    legacy, fast = max(legacy_rates), max(fast_rates)
    return {
        "image_shape": [args.size, args.size, SIZES[args.size][0]],
        "images": len(images),
        "batch_size": args.batch_size,
        "legacy_images_per_s": round(legacy, 1),
        "fast_images_per_s": round(fast, 1),
        "ratio": round(fast / legacy, 2),
    }
