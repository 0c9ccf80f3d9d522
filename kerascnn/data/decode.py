"""The one way kerascnn turns an encoded image into model pixels, shared by training and serving.

The folder loader (training), `Predictor` (file paths and PIL images) and the SavedModel's
image-bytes signature all call these functions, so an image gives the same pixels, and hence the
same prediction, whichever way it reaches the model.

Why not `tf.io.decode_image(channels=C)` alone: it refuses `channels=1` for BMP and GIF, and for
JPEG it converts color to gray inside libjpeg, differently from the other formats. So images are
decoded with their own channels, alpha is dropped, and gray <-> RGB conversion is done here, then
resized bilinearly with `tf.image.resize`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # what tf.io.decode_image reads
# PIL modes, grouped by what a model input of 1 or 3 channels takes from them. The decoder takes L, LA,
# RGB and RGBA as they are; any other mode is converted to one of those first (`pil_pixels`).
DECODER_MODES = ("L", "LA", "RGB", "RGBA")
GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def fit_image(image: tf.Tensor, channels: int, image_size: tuple[int, int]) -> tf.Tensor:
    """An H x W x (1..4) image (gray, gray+alpha, RGB, RGBA) as float32 pixels of `image_size` x `channels`.

    Alpha is dropped (as PIL's `convert("RGB")` does); gray becomes RGB by repetition and RGB becomes
    gray with `tf.image.rgb_to_grayscale` (ITU-R 601 weights).
    """
    image = tf.cast(image, tf.float32)
    found = tf.shape(image)[-1]
    image = image[..., : found - (1 - found % 2)]  # 2 -> 1 (gray), 4 -> 3 (RGB); 1 and 3 unchanged
    if channels == 3:
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    else:
        image = tf.cond(tf.shape(image)[-1] == 3,
                        lambda: tf.image.rgb_to_grayscale(tf.ensure_shape(image, [None, None, 3])),
                        lambda: image)
    image = tf.image.resize(tf.ensure_shape(image, [None, None, channels]), image_size)
    return tf.ensure_shape(image, (*image_size, channels))


def decode_native(contents: tf.Tensor) -> tf.Tensor:
    """Decode PNG/JPEG/BMP/GIF bytes (a GIF's first frame) at the image's own channels (1-4), uint8.

    The one decoding step the folder scan, training and serving all run, so the scan's verdict holds
    during training.
    """
    return tf.io.decode_image(contents, channels=0, expand_animations=False, dtype=tf.uint8)


def decode_encoded_image(contents: tf.Tensor, channels: int, image_size: tuple[int, int]) -> tf.Tensor:
    """PNG/JPEG/BMP/GIF bytes (first frame of a GIF) as float32 pixels (0..255) of `image_size` x `channels`."""
    return fit_image(decode_native(contents), channels, image_size)


def pil_pixels(image) -> np.ndarray:
    """A PIL image (its first frame) in any mode as uint8 H x W x C (C = 1..4) for `fit_image`.

    Modes are mapped as the file decoder maps the same pictures: palette and CMYK images become RGB
    (RGBA with transparency), 1-bit and 32-bit integer/float images become L (clipped to 0..255), and
    16-bit images are scaled by 255/65535 as `tf.io.decode_png(dtype=uint8)` scales 16-bit PNGs.
    """
    image.seek(0)
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.round(np.asarray(image, np.float64) * (255.0 / 65535.0))
    elif image.mode in ("I", "F"):
        pixels = np.clip(np.asarray(image, np.float64), 0, 255).round()
    else:
        if image.mode not in DECODER_MODES:
            gray = image.mode in GRAYSCALE_MODES
            image = image.convert(("L" if gray else "RGB") + ("A" if image.has_transparency_data else ""))
        pixels = np.asarray(image)
    pixels = pixels.astype(np.uint8)
    return pixels.reshape(*pixels.shape[:2], -1)
