"""Training-batch augmentation with ImageDataGenerator's parameters: a fast path and the real legacy one.

`make_augment(AugmentConfig(...))` returns what `training.train(augment=...)` takes:

- backend "fast": `FastAugment`, a batch function (images, labels) -> (images, labels) mapped over
  training batches inside the tf.data pipeline (parallel map, prefetch); `augmented_batches`, what
  training uses, maps it over chunks of several batches and rebatches them. One random affine matrix
  per image composes rotation, shift, shear, zoom and the flips exactly as ImageDataGenerator composes
  them; OpenCV's `warpAffine` resamples each image once with that matrix. No augmented copies are
  kept, and the model never sees an augmentation layer, so exported artifacts contain none. Keras 3's
  own RandAugment, MixUp and CutMix layers (`rand_augment`, `mixup`, `cutmix`) run in the same pipeline
  after the warps: the ecosystem's implementations, not ours.
- backend "legacy": `LegacyAugment`, the real `tf.keras.preprocessing.image.ImageDataGenerator`
  (Keras 3 keeps it only under `keras.src.legacy`) reading the training split its own way: `flow`
  over in-memory arrays, `flow_from_dataframe` over an image folder's training files.

Why OpenCV: inside the same tf.data pipeline, `cv2.warpAffine` (SIMD bilinear resampling, one call
an image) cost less CPU per image than one `ImageProjectiveTransformV3` per batch and far less than
the legacy generator (the measured figures, and `kerascnn bench augment`'s, are in
docs/benchmarks.md). tf.data runs batches in parallel, so OpenCV's own thread pool is set to one
thread: on images this small its per-call threading costs more than it gains. What else the CPU
profile showed, and what was done about it: at 28x28 each `numpy_function` call and each draw of
transformations cost as much as warping a few dozen images, hence chunks of about a million pixel
values a call; at 224x224 the warp's rotated reads from an image not in cache cost 2-3x the warp of
a cached one, hence one sequential copy into a cache-resident buffer first; and TensorFlow copied
each result it was handed unless 64-byte aligned, hence an aligned output. Resampling all the
images of a chunk with one `cv2.remap` on the stacked batch saved under 1 us an image at 28x28 and
cost 5x at 224x224, and TensorFlow's `ImageProjectiveTransformV3` cost 3-4x `warpAffine`: not used.

Differences from ImageDataGenerator, all deliberate:
- `width_shift_range` shifts horizontally by a fraction of the width and rotations/zooms turn about
  the image centre, as IDG documents; IDG's code (scipy coordinates) shifts along the other axis and
  uses a misplaced centre on non-square images. For square images with equal shift ranges both sample
  the same transformations.
- fill_mode "constant" blends the one-pixel edge of the image with `cval` (bilinear), where scipy
  switches abruptly; "wrap" repeats the image with period = its size (OpenCV, scipy's "grid-wrap",
  Keras 3's random layers), where scipy's "wrap" used by IDG repeats with period size - 1.
- brightness keeps float pixels; IDG rounds them down to uint8 through PIL on the way.

Example:
    augment = make_augment(AugmentConfig(rotation_range=20, horizontal_flip=True))
    train(model, data, TrainConfig(epochs=5), augment=augment)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from kerascnn.config import AugmentConfig, RunConfig
from kerascnn.data.datasets import load_data
from kerascnn.data.imagedata import ImageData
from kerascnn.errors import ConfigError

# The ImageDataGenerator parameters of the course notes' augmentation example: the benchmark's
# parameters, and what `kerascnn augment-preview` shows when the configuration augments nothing.
COURSE_AUGMENTATION = AugmentConfig(rotation_range=20, width_shift_range=0.1, height_shift_range=0.1,
                                    shear_range=10, zoom_range=0.1, horizontal_flip=True, fill_mode="nearest")

# fill_mode -> OpenCV border mode; "nearest" and "reflect" are the same extensions as scipy's.
BORDER_MODES = {"constant": cv2.BORDER_CONSTANT, "nearest": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT,
                "wrap": cv2.BORDER_WRAP}
# Images at least this large are copied into a cache-resident buffer before they are warped.
HOT_COPY_BYTES = 64 * 1024
# FastAugment.augmented_batches augments chunks of about this many pixel values (4 MB of float32) at a time.
CHUNK_VALUES = 2 ** 20
IDG_PARAMETERS = ("rotation_range", "width_shift_range", "height_shift_range", "shear_range", "zoom_range",
                  "horizontal_flip", "vertical_flip", "fill_mode", "cval", "brightness_range", "channel_shift_range")


def sample_transforms(config: AugmentConfig, n: int, image_size: tuple[int, int],
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw `n` random transformations the way `ImageDataGenerator.get_random_transform` does.

    Returns arrays of length n under IDG's keys: theta and shear (degrees), tx and ty (horizontal and
    vertical shift in pixels), zx and zy (zoom), flip_horizontal, flip_vertical, channel_shift_intensity
    and brightness (None when off).
    """
    height, width = image_size

    def symmetric(limit: float) -> np.ndarray:
        return rng.uniform(-limit, limit, n) if limit else np.zeros(n)

    def shift(limit: float, size: int) -> np.ndarray:
        return symmetric(limit) * (size if limit < 1 else 1)

    def coin(enabled: bool) -> np.ndarray:
        return rng.random(n) < 0.5 if enabled else np.zeros(n, bool)

    zoom_low, zoom_high = config.zoom_bounds
    zx, zy = rng.uniform(zoom_low, zoom_high, (2, n)) if (zoom_low, zoom_high) != (1.0, 1.0) else np.ones((2, n))
    return {
        "theta": symmetric(config.rotation_range),
        "tx": shift(config.width_shift_range, width),
        "ty": shift(config.height_shift_range, height),
        "shear": symmetric(config.shear_range),
        "zx": zx,
        "zy": zy,
        "flip_horizontal": coin(config.horizontal_flip),
        "flip_vertical": coin(config.vertical_flip),
        "channel_shift_intensity": symmetric(config.channel_shift_range) if config.channel_shift_range else None,
        "brightness": rng.uniform(*config.brightness_range, n) if config.brightness_range is not None else None,
    }


def affine_matrices(transforms: dict[str, np.ndarray], image_size: tuple[int, int]) -> np.ndarray:
    """(n, 2, 3) maps from output to input pixel (x=column, y=row), one per image.

    IDG's composition about the image centre c: input = c + R (t + S Z (output - c)) for rotation R,
    shift t, shear S = [[1, -sin s], [0, cos s]] and zoom Z = diag(zx, zy). IDG flips the warped
    image afterwards, which here is a sign on the output side: output - c = diag(fx, fy) (pixel - c).
    Written out in closed form because building and multiplying 3x3 stacks costs more than the
    warp itself on small images.
    """
    height, width = image_size
    theta, shear = np.deg2rad(transforms["theta"]), np.deg2rad(transforms["shear"])
    zx, zy, tx, ty = transforms["zx"], transforms["zy"], transforms["tx"], transforms["ty"]
    fx = np.where(transforms["flip_horizontal"], -1.0, 1.0)
    fy = np.where(transforms["flip_vertical"], -1.0, 1.0)
    cos, sin = np.cos(theta), np.sin(theta)
    matrices = np.empty((len(theta), 2, 3))
    matrices[:, 0, 0] = zx * cos * fx
    matrices[:, 0, 1] = -zy * np.sin(theta + shear) * fy
    matrices[:, 1, 0] = zx * sin * fx
    matrices[:, 1, 1] = zy * np.cos(theta + shear) * fy
    cx, cy = (width - 1) / 2, (height - 1) / 2
    matrices[:, 0, 2] = cx + cos * tx - sin * ty - matrices[:, 0, 0] * cx - matrices[:, 0, 1] * cy
    matrices[:, 1, 2] = cy + sin * tx + cos * ty - matrices[:, 1, 0] * cx - matrices[:, 1, 1] * cy
    return matrices


def apply_transforms(images: np.ndarray, transforms: dict[str, np.ndarray], fill_mode: str = "nearest",
                     cval: float = 0.0) -> np.ndarray:
    """Warp a batch (N, H, W, C) with one matrix per image, then shift channels and brightness as IDG does.

    Resampling stays in the images' float32: a uint8 round trip (OpenCV's other SIMD path) measured
    no cheaper per image inside the pipeline and would round pixels.
    """
    height, width, channels = images.shape[1:]
    matrices = affine_matrices(transforms, (height, width))
    out = aligned_empty_like(images)
    # OpenCV reads a one-channel image as (H, W); the views write straight into `out`.
    source, target = (images[..., 0], out[..., 0]) if channels == 1 else (images, out)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    border, fill = BORDER_MODES[fill_mode], (float(cval),) * 4
    if images[:1].nbytes < HOT_COPY_BYTES:  # (also an empty batch)
        for image, matrix, result in zip(source, matrices, target):
            # Positional arguments: at 28x28 parsing keywords was 12 % of the call.
            cv2.warpAffine(image, matrix, (width, height), result, flags, border, fill)
    else:
        # A rotated read walks across the rows of an image that is not in cache: copying it first with
        # one sequential pass into a buffer that stays in L2 made the warp 2.4x cheaper at 224x224x3.
        # One buffer a call: tf.data runs calls in parallel and OpenCV releases the GIL while it warps.
        hot = np.empty_like(source[0])
        for image, matrix, result in zip(source, matrices, target):
            np.copyto(hot, image)
            cv2.warpAffine(hot, matrix, (width, height), result, flags, border, fill)
    if transforms["channel_shift_intensity"] is not None:
        # IDG clips the shifted image to its own value range.
        low = out.min(axis=(1, 2, 3), keepdims=True)
        high = out.max(axis=(1, 2, 3), keepdims=True)
        np.clip(out + transforms["channel_shift_intensity"].reshape(-1, 1, 1, 1).astype(out.dtype), low, high, out=out)
    if transforms["brightness"] is not None:
        np.clip(out * transforms["brightness"].reshape(-1, 1, 1, 1).astype(out.dtype), 0, 255, out=out)
    return out


def aligned_empty_like(array: np.ndarray, alignment: int = 64) -> np.ndarray:
    """An uninitialised array like `array` whose data starts on an `alignment`-byte boundary.

    TensorFlow takes a `numpy_function` result without copying it only when it is aligned as Eigen wants
    (64 bytes); numpy aligns to 16, and the copy cost 35 us an image at 224x224x3. numpy has no aligned
    allocation of its own, so the buffer is over-allocated by `alignment` bytes and sliced.
    """
    raw = np.empty(array.nbytes + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)


class FastAugment:
    """The fast backend: a batch function for the tf.data pipeline (OpenCV on each image of the batch), then
    Keras 3's own RandAugment on each batch's images and MixUp / CutMix on each batch (`mixing`, which the
    pipeline maps once the labels are one-hot) where the config asks for them.

    Args:
        config: the AugmentConfig to draw transformations from.
        seed: seed of the random transformations (default 42). With a parallel map the order in which
            batches draw is not fixed, so runs are reproducible in distribution, not bit for bit.

    Example:
        ds = ds.batch(32).map(FastAugment(AugmentConfig(rotation_range=20)), num_parallel_calls=tf.data.AUTOTUNE)
    """

    def __init__(self, config: AugmentConfig, seed: int = 42):
        self.config = config
        self._rng = np.random.default_rng(seed)
        cv2.setNumThreads(1)
        # Keras' RandAugment draws its operations once per call (each image gets its own magnitudes), so it is
        # called on each training batch, not on the chunks the warps run on.
        self.rand_augment = keras.layers.RandAugment(value_range=(0, 255), num_ops=config.rand_augment,
                                                     factor=config.rand_augment_factor, seed=seed) \
            if config.rand_augment else None
        self.mixers = []
        if config.mixup:
            self.mixers.append(keras.layers.MixUp(alpha=config.mixup, seed=seed))
        if config.cutmix:
            self.mixers.append(keras.layers.CutMix(factor=config.cutmix, seed=seed))
        self._switch = tf.random.Generator.from_seed(seed) if len(self.mixers) > 1 else None

    def augment_transforms(self, images: np.ndarray) -> np.ndarray:
        """ImageDataGenerator's transformations of a numpy batch (N, H, W, C) of raw pixels."""
        transforms = sample_transforms(self.config, len(images), images.shape[1:3], self._rng)
        return apply_transforms(images, transforms, self.config.fill_mode, self.config.cval)

    def augment_images(self, images: np.ndarray) -> np.ndarray:
        """Augment a numpy batch (N, H, W, C) of raw pixels: every per-image step (MixUp and CutMix, which
        mix images with their labels, are `mix`'s)."""
        if self.config.transforms_enabled:
            images = self.augment_transforms(images)
        if self.rand_augment is not None:
            images = np.asarray(self.rand_augment(images.astype(np.float32), training=True))
        return images

    def warp(self, images: tf.Tensor, labels: tf.Tensor):
        """The transformations of a batch tensor (OpenCV, through `numpy_function`)."""
        if not self.config.transforms_enabled:
            return images, labels
        warped = tf.numpy_function(self.augment_transforms, [images], images.dtype, stateful=True)
        warped.set_shape(images.shape)
        return warped, labels

    def apply_rand_augment(self, images: tf.Tensor, labels: tf.Tensor):
        """RandAugment of a batch tensor, if configured."""
        if self.rand_augment is None:
            return images, labels
        return tf.cast(self.rand_augment(images, training=True), images.dtype), labels

    def __call__(self, images: tf.Tensor, labels: tf.Tensor):
        return self.apply_rand_augment(*self.warp(images, labels))

    @property
    def mixing(self):
        """`mix` when MixUp or CutMix is configured, else None: the pipeline maps it over one-hot batches."""
        return self.mix if self.mixers else None

    def mix(self, images: tf.Tensor, labels: tf.Tensor):
        """MixUp or CutMix of a training batch and its one-hot (or multi-hot) labels, as Keras' layers do it;
        with both configured, one of them, chosen at random for each batch."""
        def mixed(layer):
            result = layer({"images": images, "labels": tf.cast(labels, tf.float32)}, training=True)
            return result["images"], result["labels"]

        if self._switch is None:
            return mixed(self.mixers[0])
        return tf.cond(self._switch.uniform(()) < 0.5, lambda: mixed(self.mixers[0]), lambda: mixed(self.mixers[1]))

    def augmented_batches(self, ds: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
        """Batch an unbatched (pixels, label) dataset into augmented batches of `batch_size`, in order.

        Every image is augmented on its own, so a chunk of several batches (about `CHUNK_VALUES` pixel
        values, a whole number of batches) goes through one call and `rebatch` cuts it back into
        `batch_size` batches: the per-call cost (the `numpy_function` hand-over, drawing the
        transformations) is paid once a chunk. At 28x28 batch 32 it was most of the fast path's CPU time.
        The parallel map runs chunks on all cores; its output order is kept, so batches hold the same
        images as `ds.batch(batch_size)`.

        Example:
            train = FastAugment(AugmentConfig(rotation_range=20)).augmented_batches(ds.shuffle(10000), 32)
        """
        if not self.config.transforms_enabled:
            ds = ds.batch(batch_size)
        else:
            shape = ds.element_spec[0].shape
            values = shape.num_elements() if shape.is_fully_defined() else None
            chunk = batch_size * max(1, CHUNK_VALUES // (batch_size * values)) if values else batch_size
            ds = ds.batch(chunk).map(self.warp, num_parallel_calls=tf.data.AUTOTUNE)
            ds = ds if chunk == batch_size else ds.rebatch(batch_size)
        if self.rand_augment is not None:
            ds = ds.map(self.apply_rand_augment, num_parallel_calls=tf.data.AUTOTUNE)
        return ds


class LegacyAugment:
    """The legacy backend: the real Keras ImageDataGenerator, reading the training split itself.

    Args:
        config: the AugmentConfig whose IDG parameters are passed on unchanged.
        seed: seed of the generator's shuffling and transformations (default 42).
    """

    def __init__(self, config: AugmentConfig, seed: int = 42):
        self.generator = tf.keras.preprocessing.image.ImageDataGenerator(**idg_arguments(config))
        self._rng = np.random.default_rng(seed)

    def augment_images(self, images: np.ndarray) -> np.ndarray:
        """Augment a numpy batch (N, H, W, C) of raw pixels through the generator's `flow`."""
        seed = int(self._rng.integers(2 ** 31))
        return self.generator.flow(images, batch_size=len(images), shuffle=False, seed=seed)[0]

    def check_source(self, data: ImageData) -> None:
        """Refuse sources the generator cannot read (streamed tfds datasets) before anything is written."""
        if data.arrays is None and data.files is None:
            raise ConfigError(f"augment.backend = 'legacy' reads in-memory datasets and image folders, not "
                              f"{data.name!r}; use augment.backend = 'fast'")

    def training_batches(self, data: ImageData, batch_size: int, seed: int):
        """IDG's iterator over the training split: (augmented pixels, one-hot labels) batches, reshuffled
        every epoch (a Keras PyDataset that `model.fit` takes as it is)."""
        self.check_source(data)
        height, width, channels = data.input_shape
        if data.files is not None:
            # flow_from_dataframe rather than flow_from_directory: only the training split's files.
            paths, labels = data.files["train"]
            frame = pd.DataFrame({"filename": paths, "class": [data.class_names[i] for i in labels]})
            return self.generator.flow_from_dataframe(
                frame, x_col="filename", y_col="class", classes=data.class_names, class_mode="categorical",
                target_size=(height, width), color_mode="grayscale" if channels == 1 else "rgb",
                interpolation="bilinear", batch_size=batch_size, shuffle=True, seed=seed, validate_filenames=False)
        # The arrays the pipeline would serve (resized, classes selected), as IDG.flow wants them.
        images, labels = zip(*data.train.batch(1024).as_numpy_iterator())
        one_hot = tf.keras.utils.to_categorical(np.concatenate(labels), data.num_classes)
        return self.generator.flow(np.concatenate(images), one_hot, batch_size=batch_size, shuffle=True, seed=seed)


def idg_arguments(config: AugmentConfig) -> dict:
    """ImageDataGenerator keyword arguments for `config` (lists where IDG wants sequences)."""
    arguments = {name: getattr(config, name) for name in IDG_PARAMETERS}
    arguments["zoom_range"] = list(config.zoom_bounds)
    if config.brightness_range is not None:
        arguments["brightness_range"] = list(config.brightness_range)
    return arguments


def make_augment(config: AugmentConfig, seed: int = 42,
                 data: ImageData | None = None) -> FastAugment | LegacyAugment | None:
    """The augmentation `config` describes for `training.train(augment=...)`, or None when it augments nothing.

    Args:
        config: the AugmentConfig.
        seed: seed of the random transformations (default 42).
        data: when given, the legacy backend checks now that it can read this dataset.

    Example:
        augment = make_augment(AugmentConfig(rotation_range=20, backend="legacy"), seed=1)
    """
    if not config.enabled:
        return None
    if config.backend == "fast":
        return FastAugment(config, seed)
    augment = LegacyAugment(config, seed)
    if data is not None:
        augment.check_source(data)
    return augment


def save_preview(images: np.ndarray, titles: list[str], augment: FastAugment | LegacyAugment, path,
                 variants: int = 6) -> None:
    """Save a grid (matplotlib): one row an image, the original first, then `variants` augmented versions."""
    from matplotlib.figure import Figure

    rows = [images] + [augment.augment_images(images) for _ in range(variants)]
    figure = Figure(figsize=(1.4 * (variants + 1), 1.5 * len(images)), layout="constrained")
    axes = figure.subplots(len(images), variants + 1, squeeze=False)
    for column, batch in enumerate(rows):
        for row, image in enumerate(np.clip(batch, 0, 255)):
            axis = axes[row, column]
            if image.shape[-1] == 1:
                axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
            else:
                axis.imshow(image.astype(np.uint8))
            axis.set_axis_off()
            axis.set_title(titles[row] if column == 0 else f"augmented {column}", fontsize=8)
    figure.savefig(path, dpi=100)


def write_preview(config: RunConfig, path: Path, images: int = 8, variants: int = 6) -> None:
    """`save_preview` of the first `images` training images of `config`'s dataset under its per-image
    augmentation (the course notes' parameters, with the configured backend, when the config has none)."""
    augment_config = config.augment
    if not augment_config.per_image_enabled:
        augment_config = dataclasses.replace(COURSE_AUGMENTATION, backend=augment_config.backend)
    data = load_data(config.data, seed=config.run.seed)
    pixels, labels = next(data.train.batch(images).as_numpy_iterator())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_preview(pixels, [data.class_names[label] for label in labels], make_augment(augment_config, config.run.seed),
                 path, variants=variants)
