"""DCGAN (Radford et al. 2015): a generator and a discriminator after the paper's guidelines, and their
training as one `keras.Model` subclass with its own `train_step` (the Keras 3 way).

Guidelines followed: strided convolutions instead of pooling (transpose convolutions in the
generator), batch normalization in both nets (not on the discriminator's input layer nor the
generator's output), no dense hidden layers (the generator's first layer is the paper's projection
of z, reshaped to a feature map; the discriminator ends in one logit), ReLU in the generator with a
tanh output, LeakyReLU (0.2) in the discriminator, Adam at 2e-4 with beta_1 = 0.5.

Pixels follow kerascnn's contract: the generator returns raw pixels (its tanh scaled to 0..255) and
the discriminator takes them, so generated images go straight into kerascnn classifiers and plots.

Example:
    gan = build_model("dcgan", (28, 28, 1), latent_dim=100)
    gan.compile(); gan.fit(images_dataset, epochs=5)
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from kerascnn.errors import ConfigError
from kerascnn.models.registry import register_model

KERNEL = 4  # 4x4 kernels with stride 2 tile the output evenly (no checkerboard from uneven overlap)


def generator(latent_dim: int, image_shape, filters=(128, 64)) -> keras.Model:
    """z (latent_dim) -> projection to a (H / 2**n) feature map -> n transpose convolutions -> raw pixels."""
    height, width, channels = image_shape
    scale = 2 ** len(filters)
    z = keras.Input((latent_dim,), name="latent")
    x = keras.layers.Dense((height // scale) * (width // scale) * filters[0], use_bias=False, name="project")(z)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.ReLU(name="project_relu")(x)
    x = keras.layers.Reshape((height // scale, width // scale, filters[0]), name="reshape")(x)
    for i, width_ in enumerate(filters[1:]):
        x = keras.layers.Conv2DTranspose(width_, KERNEL, strides=2, padding="same", use_bias=False, name=f"up_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"up_{i}_bn")(x)
        x = keras.layers.ReLU(name=f"up_{i}_relu")(x)
    x = keras.layers.Conv2DTranspose(channels, KERNEL, strides=2, padding="same", activation="tanh", name="image")(x)
    pixels = keras.layers.Rescaling(127.5, offset=127.5, name="to_pixels")(x)
    return keras.Model(z, pixels, name="generator")


def discriminator(image_shape, filters=(64, 128)) -> keras.Model:
    """Raw pixels -> strided convolutions with LeakyReLU (batch norm after the first) -> one real/fake logit."""
    images = keras.Input(tuple(image_shape), name="images")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(images)
    for i, width in enumerate(filters):
        x = keras.layers.Conv2D(width, KERNEL, strides=2, padding="same", use_bias=i == 0, name=f"down_{i}")(x)
        if i > 0:
            x = keras.layers.BatchNormalization(name=f"down_{i}_bn")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"down_{i}_lrelu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    return keras.Model(images, logit, name="discriminator")


class DCGAN(keras.Model):
    """A generator and a discriminator trained against each other by `fit` over batches of real images.

    Each `train_step` updates the discriminator on real and generated images, then the generator
    through the discriminator's verdict on new samples (the non-saturating loss), and reports
    `d_loss` and `g_loss`.

    Args:
        generator: latent -> raw pixels (0..255).
        discriminator: raw pixels -> one logit (real > 0).
        latent_dim: size of z.
        seed: seed of the latent draws during training (default None: random).
    """

    def __init__(self, generator: keras.Model, discriminator: keras.Model, latent_dim: int, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = int(latent_dim)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")

    def compile(self, d_optimizer=None, g_optimizer=None, learning_rate: float = 2e-4, **kwargs):
        """Adam(learning_rate, beta_1=0.5) for each net unless given, as the DCGAN paper trains."""
        super().compile(**kwargs)
        self.optimizer = None  # Keras' default (RMSprop) would be built over both nets and never used
        self.d_optimizer = d_optimizer or keras.optimizers.Adam(learning_rate, beta_1=0.5)
        self.g_optimizer = g_optimizer or keras.optimizers.Adam(learning_rate, beta_1=0.5)
        self.loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def call(self, latent, training=False):
        return self.generator(latent, training=training)

    def build(self, input_shape=None):
        self.generator.build((None, self.latent_dim))
        self.discriminator.build(self.generator.output_shape)
        # The optimizers own slot variables only once built; a resumed fit loads their state into them.
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)
        self.built = True

    def train_step(self, real_images):
        if isinstance(real_images, tuple):  # (images, labels) datasets: the labels are not used
            real_images = real_images[0]
        batch = tf.shape(real_images)[0]
        z = keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            fake_images = self.generator(z, training=True)
            real_logits = self.discriminator(real_images, training=True)
            fake_logits = self.discriminator(fake_images, training=True)
            d_loss = (self.loss_fn(tf.ones_like(real_logits), real_logits)
                      + self.loss_fn(tf.zeros_like(fake_logits), fake_logits))
        gradients = tape.gradient(d_loss, self.discriminator.trainable_variables)
        self.d_optimizer.apply_gradients(zip(gradients, self.discriminator.trainable_variables))
        z = keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            fake_logits = self.discriminator(self.generator(z, training=True), training=True)
            g_loss = self.loss_fn(tf.ones_like(fake_logits), fake_logits)
        gradients = tape.gradient(g_loss, self.generator.trainable_variables)
        self.g_optimizer.apply_gradients(zip(gradients, self.generator.trainable_variables))
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {m.name: m.result() for m in self.metrics}


@register_model("dcgan", task="gan")
def dcgan(input_shape, latent_dim=100, filters=(128, 64), seed=None) -> DCGAN:
    """A DCGAN for images of `input_shape` (sides multiples of 2 ** len(filters)).

    Args:
        input_shape: (height, width, channels) of the images.
        latent_dim: size of the generator's input z (default 100, as in the paper).
        filters: the generator's feature-map widths from the projection down (default (128, 64));
            the discriminator mirrors them.
        seed: seed of the latent draws in training (default None).
    """
    filters = tuple(int(f) for f in filters)
    if not filters or min(filters) <= 0:
        raise ConfigError(f"dcgan filters must be one or more positive integers, got {list(filters)}")
    if int(latent_dim) <= 0:
        raise ConfigError(f"latent_dim must be a positive integer, got {latent_dim}")
    height, width, _ = input_shape
    scale = 2 ** len(filters)
    if height % scale or width % scale:
        raise ConfigError(f"the DCGAN generator doubles its feature map {len(filters)} times, so image sides must be "
                          f"multiples of {scale}, got {height}x{width}; set --image-size (e.g. "
                          f"{math.ceil(height / scale) * scale} {math.ceil(width / scale) * scale}) or use fewer "
                          f"filters")
    return DCGAN(generator(int(latent_dim), input_shape, filters), discriminator(input_shape, filters[::-1]),
                 int(latent_dim), seed=seed, name="dcgan")
