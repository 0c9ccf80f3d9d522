"""`kerascnn bench train`: training speed against today's float32 `model.fit`, FLOPs, and streaming memory.

1. Speed, for a config (default: the `fashion_mnist` preset's network and batch size), on the first
   `--images` training images of its dataset. Three loops train fresh copies of the network, one
   epoch each in turn, alternating which runs first, and the best epoch after the first (which
   traces the step) is kept for each, so load from other jobs hits all alike:
   - reference: today's float32 path, a hand-written `model.fit` on float32 numpy arrays of the
     network with Keras' own BatchNormalization;
   - kerascnn: `kerascnn.train` as `kerascnn train` runs it (run directory, every callback, the
     tf.data pipeline) on the network as kerascnn builds it (`FusedBatchNormalization`), in the dtype
     policy `train.precision = "auto"` picks by its start-up check (kerascnn.precision);
   - fit: `model.fit` of that same network and policy, so `loop_ratio` = kerascnn / fit is what
     kerascnn's loop and callbacks cost (>= 0.95: next to nothing).
   `speedup_vs_float32` = kerascnn / reference. All three time full-size epochs: a preset's
   `progressive_resizing` is left out of the timed network (kerascnn's loop would shrink its first
   epochs and the others not), while `train_flops` counts the recipe with its smaller epochs.
   FLOPs are counted from the layers (kerascnn.flops,
   3x the forward pass per training image) and checked against TensorFlow's profiler; the machine's
   float32 GEMM and convolution GFLOPS are measured in the same run, and `utilisation` is the
   achieved training GFLOPS over the float32 convolution rate.
2. Memory: peak resident memory (the kernel's high-water mark, VmHWM) of fresh processes training
   one epoch from generated image folders, with `data.cache = false` so that images stream from disk
   (`--cache` keeps them in memory instead, for comparison). TensorFlow and the model alone take over
   a gigabyte, so each folder's peak is reported above a baseline process that trains on
   `BASELINE_IMAGES` images, per 10,000 images. The decoded images are 28 x 28 float32, 3,136 bytes
   each: caching keeps every training and validation image (25 MB per 10,000 at the default splits),
   streaming only the shuffle buffer's 10,000 (`data.shuffle_buffer`). Peaks include the folder
   scan's transient buffers, so what the epoch keeps is reported too: the memory malloc has handed
   out and not taken back at the end of the epoch, while the pipeline (and a cache) is alive, from
   the small folder to the large one, per 10,000 images (`kept_mb_per_10k_images`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kerascnn.bench import register_bench
from kerascnn.errors import KerasCNNError
from kerascnn.memory import live_heap_mib

BENCH_MODEL = ("cnn", {"filters": [32, 64], "dense": 256})
NUM_CLASSES = 10
BASELINE_IMAGES = 100


def add_arguments(parser) -> None:
    parser.add_argument("--preset", default="fashion_mnist", help="preset whose network, batch size, optimizer and "
                                                                  "data are measured (default fashion_mnist)")
    parser.add_argument("--config", metavar="FILE", help="a config file instead of --preset")
    parser.add_argument("--images", type=int, default=12800, help="training images per timed epoch (12800)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each loop, alternating; best kept (3)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size of the memory runs (128)")
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


def epoch_callbacks(after_epoch=None):
    """A Keras callback timing each epoch (wall and process CPU seconds in `.epochs`), which then calls
    `after_epoch(epoch)`, outside the timed span (how the other loops run between kerascnn's epochs)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))
            if after_epoch is not None:
                after_epoch(epoch)

    return EpochTimer()


def reference_network(model):
    """The same network with Keras' own BatchNormalization in place of kerascnn's fused one: today's path."""
    import keras

    from kerascnn.models.batchnorm import FusedBatchNormalization

    def clone(layer):
        if isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone)


def timed_loops(config, data, build, policy: str, repeats: int) -> dict:
    """Images/s and busy cores of the best timed epoch of each loop (see the module docstring).

    kerascnn's loop is one `kerascnn.train` of `repeats + 1` epochs; after each of its epochs the two
    `model.fit` loops run one epoch each, in alternating order. Every loop's first epoch traces its
    step and is not counted."""
    import keras

    from kerascnn.distribute import precision
    from kerascnn.training import compile_model, train

    (x, y), (x_val, y_val) = data.arrays["train"], data.arrays["validation"]
    x_float, x_val_float = x.astype("float32"), x_val.astype("float32")
    onehot, onehot_val = (keras.utils.to_categorical(labels, data.num_classes) for labels in (y, y_val))
    steps = -(-len(x) // config.batch_size)
    with precision("float32"):
        reference = compile_model(reference_network(build()), config, steps)
    with precision(policy):
        fit_model = compile_model(build(), config, steps)
        kerascnn_model = build()
    fit_timers = {"reference": epoch_callbacks(), "fit": epoch_callbacks()}
    fit_models = {"reference": reference, "fit": fit_model}

    def other_loops(epoch):
        for name in (fit_models if epoch % 2 == 0 else list(fit_models)[::-1]):
            fit_models[name].fit(x_float, onehot, batch_size=config.batch_size, epochs=1, verbose=0,
                                 validation_data=(x_val_float, onehot_val), callbacks=[fit_timers[name]])

    timers = {"kerascnn": epoch_callbacks(other_loops), **fit_timers}
    run_dir = Path(tempfile.mkdtemp(prefix="kerascnn-bench-run-"))
    try:
        train(kerascnn_model, data, dataclasses.replace(config, epochs=repeats + 1, verbose=0, early_stopping_patience=0),
              run_dir=run_dir, extra_callbacks=[timers["kerascnn"]])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    results = {}
    for name, timer in timers.items():
        wall, cpu = min(timer.epochs[1:])
        results[f"{name}_images_per_s"] = round(len(x) / wall, 1)
        results[f"{name}_cores_busy"] = round(cpu / wall, 2)
    return results


def speed(args) -> dict:
    """Part 1 of the module docstring: the config's network, FLOPs, the machine's rates, three loops."""
    from kerascnn.config import load_config
    from kerascnn.data.datasets import from_arrays, load_data
    from kerascnn.flops import machine_gflops, profiler_forward_flops, recipe_flops, training_flops_per_image
    from kerascnn.models import build_model
    from kerascnn.precision import choose_precision, cpu_bfloat16_units, cpu_model

    config = load_config(args.config) if args.config else load_config(preset=args.preset)
    full = load_data(config.data, seed=config.run.seed)
    if full.arrays is None:
        raise KerasCNNError(f"bench train measures in-memory datasets; {config.data.dataset!r} streams from files")
    (x, y), validation = full.arrays["train"], full.arrays["validation"]
    data = from_arrays(x[:args.images], y[:args.images], validation[0][:1000], validation[1][:1000],
                       class_names=full.class_names, config=config.data, seed=config.run.seed)

    full_size_options = {key: value for key, value in config.model.options.items() if key != "progressive_resizing"}

    def build():
        return build_model(config.model.name, data.input_shape, data.num_classes, **full_size_options)

    train_config = config.train
    network = build()
    recipe = (build_model(config.model.name, data.input_shape, data.num_classes, **config.model.options)
              if full_size_options != config.model.options else network)
    choice = choose_precision(train_config, network, build, full)  # the check `kerascnn train` runs, at its size
    flops_per_image = training_flops_per_image(network)
    train_flops = recipe_flops(recipe, full.counts["train"], train_config.epochs)
    profiler_flops_per_image = 3 * profiler_forward_flops(network)
    rates = machine_gflops()
    results = {"cpu": cpu_model(), "bfloat16_units": cpu_bfloat16_units(),
               "network": config.model.name, "batch_size": train_config.batch_size, "precision": choice.policy,
               "precision_check": choice.reason,
               "flops_per_image": flops_per_image, "profiler_flops_per_image": profiler_flops_per_image,
               "train_images": full.counts["train"], "epochs": train_config.epochs,
               "train_flops": train_flops, **rates}
    results.update(timed_loops(train_config, data, build, choice.policy, args.repeats))
    conv = rates["conv_gflops"]
    for name in ("reference", "kerascnn"):
        achieved = flops_per_image * results[f"{name}_images_per_s"] / 1e9
        results[f"{name}_achieved_gflops"] = round(achieved, 1)
        results[f"{name}_utilisation"] = round(achieved / conv, 3)
    results["achieved_gflops"], results["utilisation"] = results["kerascnn_achieved_gflops"], results["kerascnn_utilisation"]
    results["speedup_vs_float32"] = round(results["kerascnn_images_per_s"] / results["reference_images_per_s"], 3)
    results["loop_ratio"] = round(results["kerascnn_images_per_s"] / results["fit_images_per_s"], 3)
    full_size_images = train_flops / flops_per_image  # a progressive-resizing epoch counts at its share
    results["train_seconds_at_kerascnn_speed"] = round(full_size_images / results["kerascnn_images_per_s"], 1)
    return results


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
    """(peak resident, live heap at the end of the epoch) in MB of a fresh process that trains one epoch
    from `folder`, streamed unless `cache`.

    The peak includes transient buffers (the folder scan decodes every file in parallel). What the
    epoch keeps, a cache for one, shows in the live heap at its end (`kerascnn.memory.live_heap_mib`),
    not in the resident size after it: by then the pipeline and its cache are freed, and what stays
    resident is the freed pages malloc keeps, tens of MB that differ from run to run. The shuffle
    buffer holds up to `shuffle_buffer` decoded images whether or not they are cached
    (`data.shuffle_buffer`, 10,000)."""
    code = ("import json, sys; from kerascnn.bench.train import train_from_folder; "
            "from kerascnn.memory import memory_mib; "
            "live = train_from_folder(sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1', int(sys.argv[4])); "
            "print(json.dumps([memory_mib()[1], live]))")
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(batch_size), "1" if cache else "0",
                           str(shuffle_buffer)], capture_output=True, text=True, check=True)
    peak, live = json.loads(done.stdout.strip().splitlines()[-1])
    return peak, live


def train_from_folder(folder: str, batch_size: int, cache: bool = False, shuffle_buffer: int = 10000) -> float:
    """One epoch from an image folder, streamed (`data.cache = false`) unless `cache`; run in the measured
    process. Returns the live heap in MB at the end of the epoch, while its pipeline is alive."""
    import keras

    from kerascnn.config import DataConfig, TrainConfig
    from kerascnn.data.datasets import load_data
    from kerascnn.training import train

    live = []
    at_epoch_end = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: live.append(live_heap_mib()))
    data = load_data(DataConfig(dataset=folder, image_size=(28, 28), cache=cache))
    train(_model(data), data, TrainConfig(epochs=1, batch_size=batch_size, verbose=0, tensorboard=False),
          cache=cache, shuffle_buffer=shuffle_buffer, extra_callbacks=[at_epoch_end])
    return live[-1]


def mb_per_10k_images(mb: float, baseline_mb: float, images: int, baseline_images: int = BASELINE_IMAGES) -> float:
    """Memory above that of a process with `baseline_images` images (the baseline folder), per 10,000 images
    more."""
    return (mb - baseline_mb) * 10000 / (images - baseline_images)


@register_bench("train", help="training speed vs today's float32 model.fit (FLOPs, utilisation, speed-up); "
                                "streaming memory", add_arguments=add_arguments)
def run(args) -> dict:
    small, large = args.folder_sizes
    if min(small, large) <= BASELINE_IMAGES:
        raise KerasCNNError(f"--folder-sizes must be above the {BASELINE_IMAGES}-image baseline folder")
    if large <= small:
        raise KerasCNNError(f"--folder-sizes {small} {large}: the second (LARGE) must be above the first (SMALL)")
    if live_heap_mib() is None:
        raise KerasCNNError("bench train's memory part reads glibc's mallinfo2 (glibc 2.33 or later, Linux); "
                            "run it on such a machine")
    results = speed(args)
    with tempfile.TemporaryDirectory(prefix="kerascnn-bench-") as workdir:
        memory = {n: folder_memory_mb(write_folder(Path(workdir) / str(n), n), args.batch_size, args.cache)
                  for n in (BASELINE_IMAGES, small, large)}
    peaks = {n: peak for n, (peak, _) in memory.items()}
    live = {n: heap for n, (_, heap) in memory.items()}
    return {
        **results,
        "small_folder_images": small,
        "large_folder_images": large,
        "small_folder_peak_mb": round(peaks[small], 4),
        "large_folder_peak_mb": round(peaks[large], 4),
        "baseline_peak_mb": round(peaks[BASELINE_IMAGES], 4),
        "cache": args.cache,
        "small_folder_mb_per_10k_images": round(mb_per_10k_images(peaks[small], peaks[BASELINE_IMAGES], small), 2),
        "large_folder_mb_per_10k_images": round(mb_per_10k_images(peaks[large], peaks[BASELINE_IMAGES], large), 2),
        "small_folder_live_mb": round(live[small], 4),
        "large_folder_live_mb": round(live[large], 4),
        "kept_mb_per_10k_images": round(mb_per_10k_images(live[large], live[small], large, small), 2),
        "memory_ratio": round(peaks[large] / peaks[small], 3),
    }
