"""`style_transfer(content, style, out)`: neural style transfer (Gatys et al. 2015) with VGG19 features.

The picture being optimised starts as the content image. Its loss, following the Keras example
(keras.io/examples/generative/neural_style_transfer), is the sum of
- content: squared difference of VGG19 features on a deep layer (`block5_conv2`) with the content's;
- style: squared difference of Gram matrices (channel correlations) with the style image's, on the
  first convolution of each of the five blocks, each normalised by 4 C^2 (HW)^2;
- total variation: squared differences of neighbouring pixels, which keeps the result smooth.
The image is optimised in pixel space (0..255) with Adam (clipped to 0..255 after every step) or
scipy's L-BFGS-B (bounded to 0..255); VGG19's own `preprocess_input` runs inside the loss.

Weights: `weights="imagenet"` reads VGG19's ImageNet weights from the Keras cache (nothing is
downloaded here: a missing file is a one-line error saying where to put it), `weights=PATH` reads a
weights file for `keras.applications.VGG19(include_top=False)`, `weights="none"` uses random
weights (for tests: the loss still falls, the picture means little).

Example:
    result = style_transfer("photo.jpg", "painting.jpg", "result.png", steps=200, size=384)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from kerascnn.errors import ConfigError, DataError, ModelLoadError, first_line, suggest
from kerascnn.models.transfer import keras_cache_dir
from kerascnn.rundir import write_atomically

VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"  # the name keras.applications caches
CONTENT_LAYER = "block5_conv2"
STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
OPTIMIZERS = ("adam", "lbfgs")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclasses.dataclass
class StyleResult:
    """What `style_transfer` produced: the image file, the loss before every step and after the last
    (losses[0] is the content image's), its components at the end, the intermediate files, the wall time."""

    output: Path
    losses: list[float]
    components: dict[str, float]
    intermediates: list[Path]
    seconds: float


def vgg19_weights(weights: str) -> str | None:
    """What `keras.applications.VGG19(weights=...)` gets: a local file path, or None for random weights.

    Raises ModelLoadError (one line, where to put the file) when the ImageNet weights are not cached
    or the given file does not exist.
    """
    if weights == "none":
        return None
    if weights == "imagenet":
        cached = keras_cache_dir() / VGG19_NOTOP_FILE
        if not cached.is_file():
            raise ModelLoadError(f"VGG19's ImageNet weights are not in the Keras cache: put {VGG19_NOTOP_FILE} into "
                                 f"{keras_cache_dir()}, or pass --weights PATH (or --weights none for random weights)")
        return str(cached)
    path = Path(weights)
    if not path.is_file():
        raise ModelLoadError(f"VGG19 weights file {weights!r} does not exist; pass the path of {VGG19_NOTOP_FILE} "
                             f"(or put it into {keras_cache_dir()} and pass --weights imagenet), or --weights none")
    return str(path)


def read_image(path: str | Path, size: tuple[int, int] | int) -> np.ndarray:
    """An RGB image as float32 pixels (H, W, 3), resized to `size` (height, width) or so that its longer
    side is `size`."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if isinstance(size, int):
                scale = size / max(image.size)
                size = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
            return np.asarray(image.resize((size[1], size[0]), Image.BICUBIC), np.float32)
    except FileNotFoundError:
        raise DataError(f"image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read {str(path)!r} as an image ({first_line(exc)})") from None


def feature_extractor(weights: str, shape: tuple[int, int, int]) -> keras.Model:
    """VGG19 without its top: preprocessed pixels in, the content and style layers' activations out."""
    network = keras.applications.VGG19(include_top=False, weights=vgg19_weights(weights), input_shape=shape)
    outputs = {name: network.get_layer(name).output for name in (CONTENT_LAYER, *STYLE_LAYERS)}
    return keras.Model(network.input, outputs, name="vgg19_features")


def gram_matrix(features: tf.Tensor) -> tf.Tensor:
    """Channel-by-channel correlations (C x C) of one image's feature maps."""
    x = tf.reshape(features, (-1, tf.shape(features)[-1]))
    return tf.matmul(x, x, transpose_a=True)


def _loss(extractor, content_features, style_grams, content_weight, style_weight, tv_weight):
    """loss(image batch of 1, raw pixels) -> (total, {content, style, total_variation}) as tensors."""

    def total_variation(image):
        dy = image[:, 1:, :-1, :] - image[:, :-1, :-1, :]
        dx = image[:, :-1, 1:, :] - image[:, :-1, :-1, :]
        return tf.reduce_sum(tf.pow(tf.square(dy) + tf.square(dx), 1.25))

    def loss(image):
        features = extractor(keras.applications.vgg19.preprocess_input(image))
        content = tf.reduce_sum(tf.square(features[CONTENT_LAYER] - content_features))
        style = 0.0
        for name in STYLE_LAYERS:
            channels = features[name].shape[-1]
            size = features[name].shape[1] * features[name].shape[2]
            style += tf.reduce_sum(tf.square(gram_matrix(features[name]) - style_grams[name])) / (
                4.0 * channels ** 2 * size ** 2)
        style /= len(STYLE_LAYERS)
        tv = total_variation(image)
        total = content_weight * content + style_weight * style + tv_weight * tv
        return total, {"content": content, "style": style, "total_variation": tv}

    return loss


def style_transfer(content: str | Path, style: str | Path, out: str | Path, steps: int = 100, size: int = 384,
                   weights: str = "imagenet", optimizer: str = "adam", learning_rate: float = 5.0,
                   content_weight: float = 2.5e-8, style_weight: float = 1e-6, tv_weight: float = 1e-6,
                   save_every: int = 0, progress: Callable[[int, float, dict], None] | None = None) -> StyleResult:
    """Paint `content` in the style of `style` and write the result to `out`.

    Args:
        content, style: image files (PNG, JPEG, ...); the style image is resized to the content's size.
        out: the image file to write (.png or .jpg); intermediates go beside it as `<stem>_step_NNNN<suffix>`.
        steps: optimiser steps (L-BFGS: iterations) (default 100).
        size: longer side of the result in pixels (default 384).
        weights: imagenet (the Keras cache) | none (random) | PATH of VGG19 no-top weights (default imagenet).
        optimizer: adam | lbfgs (default adam).
        learning_rate: Adam's step in pixel units (default 5.0).
        content_weight, style_weight, tv_weight: the loss terms' weights (defaults as in the Keras example).
        save_every: write an intermediate image every this many steps; 0 writes none (default 0).
        progress: called as progress(step, loss, components) after every step (default: nothing).

    Raises ModelLoadError when the weights are missing, DataError for unreadable images, ConfigError for
    bad options.
    """
    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(f"--out {str(out)!r} must end in one of {', '.join(IMAGE_SUFFIXES)}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}{suggest(optimizer, OPTIMIZERS)}; use adam or lbfgs")
    if steps < 1 or size < 32 or save_every < 0:
        raise ConfigError(f"need --steps >= 1, --size >= 32 (VGG19 halves the image 5 times) and --save-every >= 0; "
                          f"got {steps}, {size}, {save_every}")
    weights_file = vgg19_weights(weights)  # before any work: a missing file fails at once
    content_pixels = read_image(content, size)
    style_pixels = read_image(style, content_pixels.shape[:2])
    extractor = feature_extractor("none" if weights_file is None else weights_file, content_pixels.shape)
    preprocess = keras.applications.vgg19.preprocess_input
    reference = extractor(preprocess(content_pixels[None].copy()))
    style_features = extractor(preprocess(style_pixels[None].copy()))
    style_grams = {name: gram_matrix(style_features[name]) for name in STYLE_LAYERS}
    loss_fn = _loss(extractor, reference[CONTENT_LAYER], style_grams, content_weight, style_weight, tv_weight)

    @tf.function
    def loss_and_gradient(image):
        with tf.GradientTape() as tape:
            tape.watch(image)
            total, components = loss_fn(image)
        return total, components, tape.gradient(total, image)

    out.parent.mkdir(parents=True, exist_ok=True)
    intermediates: list[Path] = []
    losses: list[float] = []
    start = time.perf_counter()

    def after_step(step: int, value, parts, pixels) -> None:
        """Record the loss of the image a step starts from (so losses[0] is the content image's)."""
        losses.append(float(value))
        if progress:
            progress(step, float(value), {key: float(v) for key, v in parts.items()})
        if save_every and step and step % save_every == 0:
            path = out.with_name(f"{out.stem}_step_{step:04d}{out.suffix}")
            _save(pixels, path)
            intermediates.append(path)

    image = tf.Variable(content_pixels[None])
    if optimizer == "adam":
        adam = keras.optimizers.Adam(learning_rate)
        for step in range(steps):
            total, components, gradient = loss_and_gradient(tf.convert_to_tensor(image))
            after_step(step, total, components, image.numpy()[0])
            adam.apply_gradients([(gradient, image)])
            image.assign(tf.clip_by_value(image, 0.0, 255.0))
    else:
        from scipy.optimize import minimize

        shape = image.shape
        total, components, _ = loss_and_gradient(tf.convert_to_tensor(image))
        after_step(0, total, components, image.numpy()[0])

        def value_and_gradient(flat):
            value, _, gradient = loss_and_gradient(tf.constant(flat.reshape(shape), tf.float32))
            return float(value), np.asarray(gradient, np.float64).ravel()

        def callback(intermediate_result):  # scipy passes an OptimizeResult (x, fun) to this parameter name
            pixels = intermediate_result.x.reshape(shape).astype(np.float32)
            _, parts, _ = loss_and_gradient(tf.constant(pixels))
            after_step(len(losses), intermediate_result.fun, parts, pixels[0])

        found = minimize(value_and_gradient, image.numpy().astype(np.float64).ravel(), jac=True, method="L-BFGS-B",
                         bounds=[(0.0, 255.0)] * int(np.prod(shape)), callback=callback, options={"maxiter": steps})
        image.assign(found.x.reshape(shape).astype(np.float32))
    total, components, _ = loss_and_gradient(tf.convert_to_tensor(image))
    losses.append(float(total))
    _save(image.numpy()[0], out)
    return StyleResult(output=out, losses=losses, components={key: float(v) for key, v in components.items()},
                       intermediates=intermediates, seconds=time.perf_counter() - start)


def _save(pixels: np.ndarray, path: Path) -> None:
    picture = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    write_atomically(path, lambda temporary: picture.save(temporary, format=Image.registered_extensions()[
        path.suffix.lower()]))
