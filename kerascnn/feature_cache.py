"""Cached features for frozen backbones: run the backbone once per image, then train only the head.

A transfer model (`kerascnn.models.transfer`) is a feature network — raw pixels, resizing, the
backbone's preprocessing, the backbone and its pooling — followed by a head (dropout and the
output layer). When nothing in the feature network changes between epochs (its weights are frozen,
the images are not augmented and it holds no layer that is random in training), every epoch computes
the same features again. `FeatureCache` computes them once for the training and validation splits,
keeps them in memory (or, above `MEMORY_LIMIT_BYTES`, in a `tf.data` save in the run directory's
staging area, removed afterwards), and gives `training.train` a head model that shares its layers with
the whole network: training it trains the whole network's head, so what is checkpointed, evaluated
and exported is still the whole network (raw 0..255 pixels in, probabilities out).

The head trains exactly as it would inside the whole network: the same shuffling of the same
elements (the pipeline of `kerascnn.data.pipeline.batches` over features instead of pixels), the same
dropout (the same layer and seed generator), the same optimizer settings and callbacks.

Example:
    plan = plan_cache(model, "auto", augment=None, strategy=model.distribute_strategy)
    with FeatureCache(model, data, batch_size=32) as cache:
        cache.head.compile(...); cache.head.fit(batches(cache.train, 32), ...)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kerascnn.config import RunConfig
from kerascnn.data.imagedata import ImageData
from kerascnn.distribute import strategy_name
from kerascnn.errors import ConfigError
from kerascnn.models.transfer import BACKBONE_LAYER, POOL_LAYER
from kerascnn.resume import TrainedModelSaver
from kerascnn.rundir import TEMPORARY_PREFIX

MEMORY_LIMIT_BYTES = 1 << 30  # features above 1 GiB (training + validation) go to disk instead of memory
CHUNK_BYTES = 1 << 28  # features on their way to disk are held in memory at most 256 MiB at a time
STAGING_NAME = f"{TEMPORARY_PREFIX}feature-cache"  # in the run directory: `remove_staging` clears a killed run's
CACHEABLE_TRANSFERS = ("feature_extraction", "truncate", "fine_tune")
# Callbacks that save or restore the model must see the whole network, not the head model that is fit.
WHOLE_NETWORK_CALLBACKS = (keras.callbacks.ModelCheckpoint, keras.callbacks.EarlyStopping, TrainedModelSaver)


@dataclasses.dataclass(frozen=True)
class CachePlan:
    """Whether a fit trains on cached features, and why (or why not), as `train.cache_features` decided."""

    cached: bool
    reason: str
    setting: bool | str = "auto"

    def record(self, cache: "FeatureCache | None" = None) -> dict:
        """What the manifest keeps about the fit: the decision, and the features' size and storage if cached."""
        record = {"cached": self.cached, "reason": self.reason, "setting": self.setting}
        if cache is not None:
            record.update(storage=cache.storage, bytes=int(cache.bytes), images=int(cache.images),
                          extract_seconds=round(cache.seconds, 3))
        return record

    def message(self, cache: "FeatureCache | None" = None) -> str:
        """The one line a run prints about it."""
        setting = {True: "true", False: "false"}.get(self.setting, self.setting)
        if not self.cached:
            return f"feature cache: off, {self.reason} (train.cache_features = {setting})"
        where = "in memory" if cache.storage == "memory" else f"on disk in {cache.folder}"
        return (f"feature cache: on, the frozen backbone ran once over {cache.images} images in "
                f"{cache.seconds:.1f} s and the head trains on {cache.bytes / 1e6:.1f} MB of features {where} "
                f"(train.cache_features = {setting})")


def feature_network_split(model: keras.Model) -> int | None:
    """Index in `model.layers` of the layer the head starts after (the pooling of a transfer model),
    or None when `model` is not a functional model over a backbone."""
    names = [layer.name for layer in model.layers]
    if BACKBONE_LAYER not in names or POOL_LAYER not in names or not hasattr(model, "inputs"):
        return None
    return names.index(POOL_LAYER)


def _random_layers(layers) -> list[str]:
    """Names of the layers, nested ones included, that draw random numbers in training (Random* preprocessing
    layers, Dropout, GaussianNoise, EfficientNet's drop-connect...)."""
    names = []
    for layer in layers:
        if isinstance(layer, keras.layers.Dropout) and layer.rate == 0:
            continue
        if any(isinstance(value, keras.random.SeedGenerator) for value in vars(layer).values()):
            names.append(layer.name)
        names += _random_layers(getattr(layer, "layers", []))
    return names


def _why_not(model: keras.Model, split: int, augment, strategy) -> str | None:
    """What stops the feature network's output from being the same every epoch, or None."""
    features = model.layers[:split + 1]
    trainable = sum(len(layer.trainable_weights) for layer in features)
    if trainable:
        return (f"the backbone trains ({trainable} trainable weights before the head: from_scratch, or "
                f"fine_tune's second phase)")
    if augment is not None:
        return "augmentation is on, so the backbone must see every augmented image"
    # The backbone is called with training=False, but Keras 3 passes fit's training=True on to every layer
    # inside it (`keras.src.models.functional.operation_fn`), so its Dropout layers act in training too.
    random = _random_layers(features)
    if random:
        return f"layer {random[0]!r} before the head is random in training"
    if strategy_name(strategy) != "default":
        return f"strategy {strategy_name(strategy)} spreads training over devices; features are cached on one"
    return None


def plan_cache(model: keras.Model, setting: bool | str, augment=None, strategy=None) -> CachePlan | None:
    """Decide whether fitting `model` can train its head on cached features.

    Args:
        model: the model about to be fit.
        setting: `train.cache_features`: "auto", True or False.
        augment: the training augmentation passed to `train` (None: none).
        strategy: the tf.distribute strategy the model was built under (default: the model's).

    Returns None for a model without a frozen-backbone head (nothing to say about caching), else the
    plan. Raises ConfigError when `setting` is True and the features cannot be cached.
    """
    split = feature_network_split(model)
    if split is None:
        if setting is True:
            raise ConfigError(f"train.cache_features = true needs a transfer model (model.backbone with transfer "
                              f"{', '.join(CACHEABLE_TRANSFERS)}), not {model.name!r}; set it to auto or false")
        return None
    if setting is False:
        return CachePlan(False, "as configured", setting)
    reason = _why_not(model, split, augment, strategy or model.distribute_strategy)
    if reason and setting is True:
        raise ConfigError(f"train.cache_features = true, but {reason}; set train.cache_features = auto (cache "
                          f"when possible) or false")
    return CachePlan(reason is None, reason or "the backbone is frozen", setting)


def check_setting(config: RunConfig) -> None:
    """Refuse `train.cache_features = true` for a configuration that can never cache, before data is read."""
    if config.train.cache_features is not True:
        return
    transfer = config.model.transfer or "feature_extraction"
    if not config.model.backbone or transfer not in CACHEABLE_TRANSFERS:
        raise ConfigError(f"train.cache_features = true needs a frozen backbone (model.backbone with model.transfer "
                          f"{', '.join(CACHEABLE_TRANSFERS)}); set it to auto or false")
    if config.augment.enabled:
        raise ConfigError("train.cache_features = true, but [augment] is on and the backbone must see every "
                          "augmented image; turn augmentation off or set train.cache_features = auto")


class WholeNetwork(keras.callbacks.Callback):
    """Run `callback` against the whole network while the head model is fit: what it saves or restores is
    the whole network (whose head is the head model's layers), and its `stop_training` stops the fit."""

    def __init__(self, callback: keras.callbacks.Callback, network: keras.Model):
        super().__init__()
        self.callback, self.network = callback, network
        callback.set_model(network)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def _forward(self, hook: str, *args):
        getattr(self.callback, hook)(*args)
        if self.network.stop_training:
            self.model.stop_training = True

    def on_train_begin(self, logs=None):
        self.network.stop_training = False
        self._forward("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._forward("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._forward("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._forward("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._forward("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._forward("on_train_batch_end", batch, logs)


class FeatureCache:
    """The feature network's outputs for the training and validation splits, and the head that trains on them.

    Args:
        model: a transfer model whose feature network `plan_cache` found cacheable.
        data: the ImageData being trained on.
        batch_size: images per backbone call (the training batch size).
        run_dir: the run directory whose staging area holds features spilled to disk (default: a
            temporary folder).
        memory_limit: bytes of features (training + validation) kept in memory; more go to disk
            (default MEMORY_LIMIT_BYTES).

    Attributes: `head` (a model from the pooled features to the probabilities, sharing the whole
    network's layers), `train` and `validation` (unbatched (features, label) datasets), `storage`
    ("memory" or "disk"), `folder` (where features on disk are; None in memory), `bytes`, `images` and
    `seconds` (the one pass of the backbone).
    Use it as a context manager, or call `close()`, to remove features written to disk.
    """

    def __init__(self, model: keras.Model, data: ImageData, batch_size: int, run_dir: Path | None = None,
                 memory_limit: int | None = None):
        split = feature_network_split(model)
        pooled = model.layers[split].output
        self.network = model
        self.extractor = keras.Model(model.inputs, pooled, name=f"{model.name}_features")
        # One trace for every batch size of both splits (Keras' predict_on_batch traces again for a last,
        # smaller batch); inference mode, as the frozen network runs at export.
        self._extract = tf.function(lambda images: self.extractor(images, training=False), input_signature=[
            tf.TensorSpec((None, *model.inputs[0].shape[1:]), model.inputs[0].dtype)])
        self.head = keras.Model(pooled, model.outputs, name=f"{model.name}_head")  # the same layer objects
        self.images = data.counts.get("train", 0) + data.counts.get("validation", 0)
        item = math.prod(pooled.shape[1:]) * tf.as_dtype(pooled.dtype).size  # 2 bytes a value in mixed precision
        self.bytes = self.images * item
        self.storage = "memory" if self.bytes <= (MEMORY_LIMIT_BYTES if memory_limit is None else memory_limit) \
            else "disk"
        self.folder = None
        if self.storage == "disk":
            if run_dir is not None:
                self.folder = Path(run_dir) / STAGING_NAME
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder.mkdir(parents=True)
            else:
                self.folder = Path(tempfile.mkdtemp(prefix="kerascnn-features-"))
        start = time.perf_counter()
        try:
            self.train = self._cache(data.train, "train", batch_size)
            self.validation = self._cache(data.validation, "validation", batch_size)
        except BaseException:
            self.close()
            raise
        self.seconds = time.perf_counter() - start

    def _batches(self, split: tf.data.Dataset, batch_size: int):
        """(features, labels) numpy batches: the backbone's one pass over `split`."""
        for images, labels in split.batch(batch_size).prefetch(tf.data.AUTOTUNE):
            yield self._extract(tf.cast(images, self._extract.input_signature[0].dtype)).numpy(), labels.numpy()

    def _cache(self, split: tf.data.Dataset, name: str, batch_size: int) -> tf.data.Dataset:
        """`split`'s (features, label) elements: in memory, or saved to disk in chunks of at most
        CHUNK_BYTES (tf.data's own format, streamed back each epoch) so memory never holds more."""
        chunks, pending, size = [], [], 0
        for features, labels in self._batches(split, batch_size):
            pending.append((features, labels))
            size += features.nbytes
            if self.storage == "disk" and size >= CHUNK_BYTES:
                chunks.append(self._save(split, pending, f"{name}-{len(chunks)}"))
                pending, size = [], 0
        if self.storage == "memory":
            return self._slices(split, pending)
        if pending or not chunks:
            chunks.append(self._save(split, pending, f"{name}-{len(chunks)}"))
        return functools.reduce(tf.data.Dataset.concatenate, chunks)

    def _slices(self, split: tf.data.Dataset, pairs: list) -> tf.data.Dataset:
        if pairs:
            features, labels = (np.concatenate(part) for part in zip(*pairs))
        else:  # an empty split (e.g. no validation images)
            label_spec = split.element_spec[1]
            feature_dtype = tf.as_dtype(self.extractor.output.dtype).as_numpy_dtype
            features = np.zeros((0, *self.extractor.output.shape[1:]), feature_dtype)
            labels = np.zeros((0, *label_spec.shape), label_spec.dtype.as_numpy_dtype)
        return tf.data.Dataset.from_tensor_slices((features, labels))

    def _save(self, split: tf.data.Dataset, pairs: list, name: str) -> tf.data.Dataset:
        path = str(self.folder / name)
        self._slices(split, pairs).save(path)
        return tf.data.Dataset.load(path)

    def bind(self, callbacks: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
        """`callbacks` for the head's fit: those that save or restore the model act on the whole network."""
        return [WholeNetwork(callback, self.network) if isinstance(callback, WHOLE_NETWORK_CALLBACKS) else callback
                for callback in callbacks]

    def close(self) -> None:
        """Remove features written to disk (nothing to do for features in memory)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
