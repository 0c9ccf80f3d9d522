"""Run configuration: frozen dataclasses, loaded from TOML, presets and `section.key=value` overrides.

The TOML keys are the field names; every section is a table (`[data]`, `[model]`, ...). Values are
validated when a dataclass is built, so a bad config fails before any data is read or file written.

Example:
    config = load_config(preset="digits", overrides=["train.epochs=5"])
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import tomli_w

from kerascnn.errors import ConfigError, suggest

PRESETS_PACKAGE = "kerascnn.presets"
COLOR_MODES = ("auto", "grayscale", "rgb")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_fraction(name: str, value: float) -> None:
    _check(0.0 < value < 1.0, f"{name} must be between 0 and 1 (exclusive), got {value}")


@dataclasses.dataclass(frozen=True)
class RunSection:
    """Where and under which name a run is written.

    Attributes:
        name: run directory name under `output`; default `<dataset>-<model>-<timestamp>`.
        output: root folder of run directories (default `saved_models`).
        overwrite: replace an existing run directory of the same name (default False).
        seed: seed for splits, shuffling, initialisation and dropout (default 42).
    """

    name: str | None = None
    output: str = "saved_models"
    overwrite: bool = False
    seed: int = 42

    def __post_init__(self):
        if self.name is not None:
            _check(self.name.strip() != "" and not set("/\\\0") & set(self.name) and self.name not in (".", ".."),
                   f"run.name must be a plain folder name, got {self.name!r}")
        _check(self.output.strip() != "" and "\0" not in self.output,
               f"run.output must be a folder path, got {self.output!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which images to train on and how they are split.

    Attributes:
        dataset: a name from `kerascnn datasets` (default `digits`), `tfds:<name>`, or an image-folder path.
        image_size: (height, width) images are resized to (default: the dataset's own size; for
            folders, the median height and width of the images, each capped at 224, printed at the
            start and written to the run's config.toml).
        color_mode: auto | grayscale | rgb: the channels images are decoded to (default auto: grayscale
            when every image of a folder is, else rgb).
        validation_split: fraction of the training data held out for validation (default 0.2).
        test_split: fraction held out for testing where the source has no test split (default 0.2).
        classes: keep only these class indices, relabelled 0..k-1 in the given order (default: all).
        max_train_examples: cap on training examples, drawn stratified (default: all).
        cache: keep decoded images in memory after the first epoch (default True; folders stream
            from disk when False).
        shuffle_buffer: tf.data shuffle buffer size (default 10000).
        strict: for image folders and label tables, make any file that is not a usable image (and any
            bad row of a table) an error listing them, instead of skipping it into `skipped_files.csv`
            (default False).
        labels_csv: a CSV table of labels (`filename,label` or `filename,labels`) to train on; a
            `data.dataset` ending in `.csv` is read as one too (default: none).
        image_root: folder the table's file names are relative to (default: the table's own folder).
        label_separator: separator between the labels of one row of a `labels` column (default " ").
        multi_label: each image may carry several labels (sigmoid outputs, binary cross-entropy);
            default: true for a table with a `labels` column or separators in its values, else false.
        sampling: none | balanced: balanced draws training images of every class equally often
            (oversampling the rare ones in tf.data); single-label only (default none).
        deduplicate: drop exact duplicate images (same content) before splitting, keeping the first,
            so that no image sits on both sides of a split (default False).
    """

    dataset: str = "digits"
    image_size: tuple[int, ...] | None = None
    color_mode: str = "auto"
    validation_split: float = 0.2
    test_split: float = 0.2
    classes: tuple[int, ...] | None = None
    max_train_examples: int | None = None
    cache: bool = True
    shuffle_buffer: int = 10000
    strict: bool = False
    labels_csv: str | None = None
    image_root: str | None = None
    label_separator: str = " "
    multi_label: bool | None = None
    sampling: str = "none"
    deduplicate: bool = False

    def __post_init__(self):
        _check(self.dataset.strip() != "" and "\0" not in self.dataset,
               f"data.dataset must be a dataset name or folder path, got {self.dataset!r}; run `kerascnn datasets`")
        if self.image_size is not None:
            _check(len(self.image_size) == 2 and all(s > 0 for s in self.image_size),
                   f"data.image_size must be [height, width] with positive sizes, got {list(self.image_size)}")
        _check(self.color_mode in COLOR_MODES, f"data.color_mode must be one of {', '.join(COLOR_MODES)}, got "
                                               f"{self.color_mode!r}{suggest(self.color_mode, COLOR_MODES)}")
        _check_fraction("data.validation_split", self.validation_split)
        _check_fraction("data.test_split", self.test_split)
        _check(self.validation_split + self.test_split < 1.0,
               "data.validation_split + data.test_split must leave training data (sum < 1)")
        if self.classes is not None:
            _check(len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes)
                   and all(c >= 0 for c in self.classes),
                   f"data.classes must list at least two distinct class indices, got {list(self.classes)}")
        if self.max_train_examples is not None:
            _check(self.max_train_examples > 0,
                   f"data.max_train_examples must be positive, got {self.max_train_examples}")
        _check(self.shuffle_buffer > 0, f"data.shuffle_buffer must be positive, got {self.shuffle_buffer}")
        _check(self.label_separator != "", "data.label_separator must be a non-empty string, e.g. \" \" or \"|\"")
        _check(self.sampling in SAMPLINGS, f"data.sampling: unknown sampling {self.sampling!r}"
               f"{suggest(self.sampling, SAMPLINGS)}; choose from {', '.join(SAMPLINGS)}")
        _check(not (self.sampling == "balanced" and self.multi_label),
               "data.sampling = balanced needs one label per image; drop it for multi-label data")
        for name in ("labels_csv", "image_root"):
            value = getattr(self, name)
            _check(value is None or (value.strip() != "" and "\0" not in value),
                   f"data.{name} must be a path, got {value!r}")


SAMPLINGS = ("none", "balanced")
THRESHOLD_RULES = ("max_f1", "precision", "recall")
FILL_MODES = ("constant", "nearest", "reflect", "wrap")
AUGMENT_BACKENDS = ("fast", "legacy")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of training batches, with ImageDataGenerator's parameters and meanings.

    Everything at its default means no augmentation; validation and test data are never augmented.

    Attributes:
        rotation_range: rotate by a uniform angle in [-r, r] degrees, r in [0, 180] (default 0).
        width_shift_range: shift horizontally by a uniform amount in [-s, s]: a fraction of the width
            when s < 1, pixels when s >= 1 (default 0).
        height_shift_range: the same vertically, as a fraction of the height or in pixels (default 0).
        shear_range: shear by a uniform angle in [-s, s] degrees, s in [0, 90) (default 0).
        zoom_range: zoom factors drawn uniformly from [1 - z, 1 + z] for a number z in [0, 1), or from
            [low, high] for a pair, independently for width and height; factors > 1 zoom out (default 0).
        horizontal_flip: flip left-right with probability 1/2 (default False).
        vertical_flip: flip upside down with probability 1/2 (default False).
        fill_mode: how pixels outside the image are filled: constant | nearest | reflect | wrap
            (default nearest).
        cval: the pixel value of fill_mode "constant" (default 0).
        brightness_range: multiply pixels by a factor drawn from [low, high] (default None: off).
        channel_shift_range: add a uniform offset in [-c, c] to every channel, clipped to the image's
            value range (default 0).
        rand_augment: RandAugment (Keras' `RandAugment` layer): this many operations drawn at random for
            each training image, after the transformations above; 0 is off (default 0).
        rand_augment_factor: the strength of those operations, in (0, 1] (RandAugment's `factor`) (default 0.5).
        mixup: MixUp (Keras' `MixUp` layer): each training batch blends pairs of its images and their labels,
            the weight drawn from Beta(mixup, mixup); 0 is off, Keras' default is 0.2 (default 0).
        cutmix: CutMix (Keras' `CutMix` layer, its `factor`): pastes a box of another image of the batch into
            each image and mixes the labels by the box's area, its share drawn from Beta(a, a) with a drawn
            from [0, cutmix] for each batch; in (0, 1], 0 is off, Keras' default is 1.0. With mixup set too,
            each batch gets one of the two, chosen at random (timm's switch) (default 0).
        backend: fast (OpenCV inside the tf.data pipeline) | legacy (the real Keras
            ImageDataGenerator with its own input path; without rand_augment, mixup and cutmix) (default fast).
    """

    rotation_range: float = 0.0
    width_shift_range: float = 0.0
    height_shift_range: float = 0.0
    shear_range: float = 0.0
    zoom_range: tuple[float, ...] | float = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    fill_mode: str = "nearest"
    cval: float = 0.0
    brightness_range: tuple[float, ...] | None = None
    channel_shift_range: float = 0.0
    rand_augment: int = 0
    rand_augment_factor: float = 0.5
    mixup: float = 0.0
    cutmix: float = 0.0
    backend: str = "fast"

    def __post_init__(self):
        _check(0.0 <= self.rotation_range <= 180.0,
               f"augment.rotation_range must be in [0, 180] degrees, got {self.rotation_range}")
        for name in ("width_shift_range", "height_shift_range"):
            value = getattr(self, name)
            _check(value >= 0.0, f"augment.{name} must be a fraction in [0, 1) or a number of pixels >= 1, "
                                 f"got {value}")
        _check(0.0 <= self.shear_range < 90.0,
               f"augment.shear_range must be in [0, 90) degrees, got {self.shear_range}")
        if isinstance(self.zoom_range, (tuple, list)):
            object.__setattr__(self, "zoom_range", tuple(float(v) for v in self.zoom_range))
            _check(len(self.zoom_range) == 2 and 0.0 < self.zoom_range[0] <= self.zoom_range[1],
                   f"augment.zoom_range must be [low, high] with 0 < low <= high, got {list(self.zoom_range)}")
        else:
            _check(0.0 <= self.zoom_range < 1.0,
                   f"augment.zoom_range must be a number in [0, 1) or [low, high] with 0 < low <= high, "
                   f"got {self.zoom_range}")
        _check(self.fill_mode in FILL_MODES, f"augment.fill_mode: unknown mode {self.fill_mode!r}"
               f"{suggest(self.fill_mode, FILL_MODES)}; choose from {', '.join(FILL_MODES)}")
        if self.brightness_range is not None:
            object.__setattr__(self, "brightness_range", tuple(float(v) for v in self.brightness_range))
            _check(len(self.brightness_range) == 2 and 0.0 <= self.brightness_range[0] <= self.brightness_range[1],
                   f"augment.brightness_range must be [low, high] with 0 <= low <= high, "
                   f"got {list(self.brightness_range)}")
        _check(self.channel_shift_range >= 0.0,
               f"augment.channel_shift_range must be >= 0, got {self.channel_shift_range}")
        _check(self.rand_augment >= 0, f"augment.rand_augment must be a number of operations >= 0 (0: off), "
                                       f"got {self.rand_augment}")
        _check(0.0 < self.rand_augment_factor <= 1.0,
               f"augment.rand_augment_factor must be in (0, 1], got {self.rand_augment_factor}")
        _check(self.mixup >= 0.0, f"augment.mixup must be a Beta distribution parameter > 0 (0: off), "
                                  f"got {self.mixup}")
        _check(0.0 <= self.cutmix <= 1.0, f"augment.cutmix must be in (0, 1] (0: off), got {self.cutmix}")
        _check(self.backend in AUGMENT_BACKENDS, f"augment.backend: unknown backend {self.backend!r}"
               f"{suggest(self.backend, AUGMENT_BACKENDS)}; choose from {', '.join(AUGMENT_BACKENDS)}")
        _check(self.backend == "fast" or not self.keras_layers_enabled,
               "augment.rand_augment, mixup and cutmix run as Keras layers in the fast backend's pipeline, which "
               "augment.backend = 'legacy' replaces with ImageDataGenerator's; set augment.backend = 'fast'")

    @property
    def zoom_bounds(self) -> tuple[float, float]:
        """The zoom range as [low, high], the way ImageDataGenerator reads a single number."""
        if isinstance(self.zoom_range, tuple):
            return self.zoom_range
        return 1.0 - self.zoom_range, 1.0 + self.zoom_range

    @property
    def transforms_enabled(self) -> bool:
        """Whether any of ImageDataGenerator's per-image transformations is configured."""
        return bool(self.rotation_range or self.width_shift_range or self.height_shift_range or self.shear_range
                    or self.zoom_bounds != (1.0, 1.0) or self.horizontal_flip or self.vertical_flip
                    or self.brightness_range is not None or self.channel_shift_range)

    @property
    def keras_layers_enabled(self) -> bool:
        """Whether RandAugment, MixUp or CutMix is configured."""
        return bool(self.rand_augment or self.mixup or self.cutmix)

    @property
    def per_image_enabled(self) -> bool:
        """Whether anything that augments each image on its own (not MixUp / CutMix) is configured."""
        return self.transforms_enabled or bool(self.rand_augment)

    @property
    def enabled(self) -> bool:
        """Whether any random augmentation is configured."""
        return self.transforms_enabled or self.keras_layers_enabled


TRANSFER_STRATEGIES = ("feature_extraction", "truncate", "fine_tune", "from_scratch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which network to build: a registered builder, or a pre-trained backbone with a new head.

    Attributes:
        name: a builder from `kerascnn.list_models()` (default `cnn`); unused when `backbone` is set.
        options: keyword arguments of that builder, e.g. `{filters = [32, 64], dropout = 0.3}`; with a
            backbone: the head's `dropout`, `pooling` and `size`, and the backbone constructor's own (e.g. `alpha`).
        backbone: a name from `kerascnn backbones`; builds a transfer model (default: none).
        transfer: feature_extraction | truncate | fine_tune | from_scratch (default feature_extraction).
        weights: imagenet | none | path of a weights file or of a kerascnn run's model.keras
            (default imagenet; none for from_scratch).
        cut_at: layer name or index the backbone is cut at; truncate only, and required there.
        unfreeze: top backbone layers fine_tune unfreezes in its second phase (default 20).
    """

    name: str = "cnn"
    options: dict = dataclasses.field(default_factory=dict)
    backbone: str | None = None
    transfer: str | None = None
    weights: str | None = None
    cut_at: int | str | None = None
    unfreeze: int | None = None

    def __post_init__(self):
        if self.backbone is None:
            _check(all(v is None for v in (self.transfer, self.weights, self.cut_at, self.unfreeze)),
                   "model.transfer, model.weights, model.cut_at and model.unfreeze need model.backbone; "
                   "run `kerascnn backbones` for names")
            return
        _check(self.name == "cnn", f"model.name {self.name!r} and model.backbone {self.backbone!r} both given: "
                                   f"a transfer model is built from its backbone; drop model.name")
        transfer = self.transfer or "feature_extraction"
        _check(transfer in TRANSFER_STRATEGIES, f"model.transfer must be one of {', '.join(TRANSFER_STRATEGIES)}, "
                                                f"got {self.transfer!r}{suggest(self.transfer, TRANSFER_STRATEGIES)}")
        _check((transfer == "truncate") == (self.cut_at is not None),
               "model.transfer = truncate needs model.cut_at (a layer name or index)" if transfer == "truncate" else
               f"model.cut_at only applies to model.transfer = truncate, not {transfer}")
        _check(self.unfreeze is None or transfer == "fine_tune",
               f"model.unfreeze only applies to model.transfer = fine_tune, not {transfer}")
        _check(self.unfreeze is None or self.unfreeze >= 0, f"model.unfreeze must be >= 0, got {self.unfreeze}")
        _check(transfer != "from_scratch" or self.weights in (None, "none"),
               "model.transfer = from_scratch trains random weights; drop model.weights or set it to none")
        _check(self.weights is None or self.weights.strip() != "",
               "model.weights must be imagenet, none or the path of a weights file")


OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LR_FIND = "find"  # train.learning_rate value that runs the learning-rate range test first
SCHEDULES = ("constant", "cosine", "linear", "one_cycle")  # kerascnn.training.learning_rate
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")  # kerascnn.distribute.make_strategy
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies, and auto


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the network is trained.

    Attributes:
        epochs: passes over the training data (default 20).
        batch_size: images per step (default 32).
        optimizer: adam | adamw | sgd | rmsprop (default adam).
        learning_rate: peak learning rate, or "find": run the learning-rate range test
            (`kerascnn lr-find`) first and train at its suggestion, recorded in the manifest (default 0.001).
        momentum: momentum for sgd and rmsprop (default 0.9).
        nesterov: Nesterov momentum for sgd (default False).
        weight_decay: decoupled weight decay (Keras' optimizer `weight_decay`), applied with every optimizer;
            unset, adamw decays by 0.0001 and the others not at all (default unset).
        schedule: constant | cosine | linear | one_cycle: cosine decays to 0 over the steps after the
            warm-up, linear decays to 0 in a straight line; one_cycle is fastai's `fit_one_cycle` for the
            learning rate (from learning_rate / 25 up to it by a half-cosine over the warm-up, a quarter
            of the steps unless warmup_epochs is set, then down to learning_rate / 1e5; momentum is not cycled,
            as Keras' optimizers take a fixed one) (default constant).
        warmup_epochs: epochs of warm-up before the schedule: linear from 0, or one_cycle's rise (default 0).
        label_smoothing: categorical label smoothing (default 0.0).
        use_ema: keep an exponential moving average of the weights (Keras' optimizer `use_ema`);
            validation, early stopping, the best checkpoint and the trained model use the averaged
            weights, training steps the raw ones (default False).
        ema_momentum: the average's momentum: each step keeps this fraction of the average and adds
            1 - momentum of the new weights; about 1 / (1 - momentum) steps are averaged (default 0.99).
        early_stopping_patience: epochs without val_loss improvement before stopping and
            restoring the best weights; 0 disables early stopping (default 5).
        tensorboard: write TensorBoard logs into `logs/` (default True).
        verbose: Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch (default 1).
        strategy: tf.distribute strategy: auto | default | mirrored | multi_worker | tpu; `batch_size` is
            per replica (default auto: mirrored with 2+ GPUs, multi_worker with a TF_CONFIG cluster).
        mixed_precision: train in mixed_float16 (float32 variables and softmax); artifacts stay float32.
            Speeds up GPUs with tensor cores, not CPUs; the same as precision = "mixed_float16" (default False).
        precision: the dtype policy the network trains in: float32, mixed_bfloat16 (bfloat16
            compute, float32 variables and softmax: CPUs with AMX/AVX512-BF16), mixed_float16, or auto:
            mixed_bfloat16 where the CPU has bfloat16 units and a start-up check of a few training
            steps finds it faster than float32 with the same predictions, else float32; the choice and
            the check's figures go into the manifest. Artifacts are float32 either way (default auto).
        jit_compile: compile the training step with XLA; False leaves it to Keras, which uses XLA on a
            single GPU and never on CPU (default False).
        backup_every: batches between crash-recovery backups in `checkpoints/backup` (one is also
            written at each epoch end) that `kerascnn train --resume` continues from; 0 turns
            backups off (default 100).
        class_weight: weigh each training image's loss by its class: balanced (scikit-learn's
            n_samples / (n_classes * count)) or a table {class name = weight}; single-label only
            (default: none, every class 1).
        cache_features: auto | true | false: train a frozen backbone's head on features computed once per
            image (kerascnn.feature_cache) instead of running the backbone every epoch; the exported model
            is still the whole network. auto caches when nothing before the head changes between epochs
            (backbone frozen, no augmentation, one device) and says why not otherwise; true makes a
            configuration that cannot cache an error; fine_tune caches its first, frozen phase only
            (default auto).
    """

    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: str | float = 1e-3  # a number, or LR_FIND
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float | None = None
    schedule: str = "constant"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    use_ema: bool = False
    ema_momentum: float = 0.99
    early_stopping_patience: int = 5
    tensorboard: bool = True
    verbose: int = 1
    strategy: str = "auto"
    mixed_precision: bool = False
    precision: str = "auto"
    jit_compile: bool = False
    backup_every: int = 100
    class_weight: dict | str | None = None
    cache_features: bool | str = "auto"

    def __post_init__(self):
        _check(self.epochs > 0, f"train.epochs must be positive, got {self.epochs}")
        _check(self.batch_size > 0, f"train.batch_size must be positive, got {self.batch_size}")
        _check(self.optimizer in OPTIMIZERS,
               f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if isinstance(self.learning_rate, str):
            _check(self.learning_rate == LR_FIND, f"train.learning_rate must be a number (> 0) or {LR_FIND!r}, "
                                                  f"got {self.learning_rate!r}{suggest(self.learning_rate, [LR_FIND])}")
        else:
            _check(self.learning_rate > 0, f"train.learning_rate must be positive, got {self.learning_rate}")
        _check(0.0 <= self.momentum < 1.0, f"train.momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay is None or self.weight_decay >= 0,
               f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.schedule in SCHEDULES,
               f"train.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
               f"{suggest(self.schedule, SCHEDULES)}")
        _check(0 <= self.warmup_epochs < self.epochs,
               f"train.warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        _check(0.0 <= self.label_smoothing < 1.0,
               f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(0.0 < self.ema_momentum < 1.0, f"train.ema_momentum must be in (0, 1), got {self.ema_momentum}")
        _check(self.early_stopping_patience >= 0,
               f"train.early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        _check(self.verbose in (0, 1, 2), f"train.verbose must be 0, 1 or 2, got {self.verbose}")
        _check(self.strategy in STRATEGIES, f"train.strategy: unknown strategy {self.strategy!r}"
               f"{suggest(self.strategy, STRATEGIES)}; choose from {', '.join(STRATEGIES)}")
        _check(self.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}, got "
               f"{self.precision!r}{suggest(self.precision, PRECISIONS)}")
        _check(not self.mixed_precision or self.precision in ("auto", "mixed_float16"),
               f"train.mixed_precision = true means precision mixed_float16, but train.precision is "
               f"{self.precision!r}: set only one of them")
        _check(self.backup_every >= 0, f"train.backup_every must be >= 0 (0: no backups), got {self.backup_every}")
        if isinstance(self.class_weight, str):
            _check(self.class_weight == "balanced", f"train.class_weight must be \"balanced\" or a table "
                   f"{{class name = weight}}, got {self.class_weight!r}{suggest(self.class_weight, ['balanced'])}")
        elif self.class_weight is not None:
            _check(all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                       for w in self.class_weight.values()) and any(w > 0 for w in self.class_weight.values()),
                   f"train.class_weight must map class names to finite weights >= 0, got {self.class_weight!r}")
        _check(isinstance(self.cache_features, bool) or self.cache_features == "auto",
               f"train.cache_features must be auto, true or false, got {self.cache_features!r}"
               f"{suggest(str(self.cache_features), ['auto', 'true', 'false'])}")


EXPORT_FORMATS = ("keras", "h5", "saved_model", "tflite", "onnx")
DEFAULT_EXPORT_FORMATS = ("keras", "h5", "saved_model", "tflite")  # onnx needs the optional tf2onnx/onnxruntime
TFLITE_VARIANTS = ("float32", "float16", "dynamic", "int8")
INT8_IO_TYPES = ("uint8", "int8")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Which artifacts are written and checked.

    Attributes:
        formats: any of keras, h5, saved_model, tflite, onnx (default: all but onnx, which needs
            `pip install kerascnn[onnx]`).
        tflite: TFLite variants to write when `tflite` is in formats: float32 (`model.tflite`),
            float16 (float16 weights), dynamic (int8 weights, float activations), int8 (full integer)
            (default ["float32", "int8"]).
        int8_io: input/output type of the full-integer model, uint8 or int8 (default uint8: raw pixels
            0..255 map onto it exactly).
        calibration_images: training images the int8 converter calibrates activation ranges on (default 256).
        serving_root: folder that receives the SavedModel as its next integer version, TF-Serving style;
            older versions are never touched (default: `saved_model/` inside the run directory).
        tflite_gray_input: keep a 1-channel input in the TFLite files of grayscale models, for apps
            that feed gray arrays (default False: they take an RGB image and convert it to gray
            inside, which MediaPipe Tasks needs; `kerascnn predict` behaves the same either way).
        model_name: model name written into the TFLite Metadata (default: the run name).
        description: model description written into the TFLite Metadata (default: the classes and
            the input it takes).
        version: model version written into the TFLite Metadata (default "1").
        author: author written into the TFLite Metadata (default: none).
        license: licence written into the TFLite Metadata, e.g. "Apache-2.0" (default: none).
    """

    formats: tuple[str, ...] = DEFAULT_EXPORT_FORMATS
    tflite: tuple[str, ...] = ("float32", "int8")
    int8_io: str = "uint8"
    calibration_images: int = 256
    serving_root: str | None = None
    tflite_gray_input: bool = False
    model_name: str | None = None
    description: str | None = None
    version: str = "1"
    author: str | None = None
    license: str | None = None

    def __post_init__(self):
        for fmt in self.formats:
            _check(fmt in EXPORT_FORMATS, f"export.formats: unknown format {fmt!r}{suggest(fmt, EXPORT_FORMATS)}"
                   f"; choose from {', '.join(EXPORT_FORMATS)}")
        for variant in self.tflite:
            _check(variant in TFLITE_VARIANTS, f"export.tflite: unknown variant {variant!r}"
                   f"{suggest(variant, TFLITE_VARIANTS)}; choose from {', '.join(TFLITE_VARIANTS)}")
        _check(bool(self.tflite) or "tflite" not in self.formats,
               "export.tflite is empty; list at least one variant or drop tflite from export.formats")
        _check(self.int8_io in INT8_IO_TYPES, f"export.int8_io must be one of {', '.join(INT8_IO_TYPES)}, "
               f"got {self.int8_io!r}")
        _check(self.calibration_images > 0,
               f"export.calibration_images must be positive, got {self.calibration_images}")
        if self.serving_root is not None:
            _check(self.serving_root.strip() != "", "export.serving_root must be a folder path, got ''")
        for key in ("model_name", "description", "author", "license"):
            value = getattr(self, key)
            _check(value is None or (isinstance(value, str) and value.strip() != ""),
                   f"export.{key} must be a non-empty string, got {value!r}; leave it out for the default")
        _check(isinstance(self.version, str) and self.version.strip() != "",
               f"export.version must be a non-empty string such as \"1\", got {self.version!r}")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The evaluation report written into the run directory.

    Attributes:
        report: write metrics.json, the figures, report.html and report.md at the end of training
            (default True; `kerascnn train --no-report` turns it off).
        target_sensitivity: sensitivity (recall of the positive class) the decision threshold must reach;
            the report gives that threshold and the specificity it costs (default 0.95).
        positive_class: class name whose threshold is reported; default: the second class of a binary
            task, none for multi-class tasks.
        tsne_sample: test images embedded with t-SNE; kept small because the report runs after every
            training (default 500).
        thresholds: multi-label only: how each class's decision threshold is chosen on the validation
            split: max_f1 | precision | recall (the lowest threshold reaching `threshold_target` precision,
            or the highest reaching `threshold_target` recall) (default max_f1).
        threshold_target: the precision or recall `thresholds` aims at: one number, or a table
            {class name = target} (default 0.9).
    """

    report: bool = True
    target_sensitivity: float = 0.95
    positive_class: str | None = None
    tsne_sample: int = 500
    thresholds: str = "max_f1"
    threshold_target: dict | float = 0.9

    def __post_init__(self):
        _check(0.0 < self.target_sensitivity <= 1.0,
               f"evaluate.target_sensitivity must be in (0, 1], got {self.target_sensitivity}")
        _check(self.tsne_sample >= 0, f"evaluate.tsne_sample must be >= 0 (0 skips t-SNE), got {self.tsne_sample}")
        _check(self.thresholds in THRESHOLD_RULES, f"evaluate.thresholds: unknown rule {self.thresholds!r}"
               f"{suggest(self.thresholds, THRESHOLD_RULES)}; choose from {', '.join(THRESHOLD_RULES)}")
        targets = self.threshold_target.values() if isinstance(self.threshold_target, dict) else [self.threshold_target]
        _check(all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 < t <= 1.0 for t in targets),
               f"evaluate.threshold_target must be in (0, 1] (or a table of such), got {self.threshold_target!r}")

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")  # columns of a trial's history.csv
DIRECTIONS = ("max", "min")
SPACE_KINDS = ("log_uniform", "uniform", "int", "choice")
UNTUNABLE_KEYS = ("run.name", "run.output", "run.overwrite")  # where a run goes is not a hyperparameter
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str, where: str = "duration") -> float:
    """Seconds in "90s", "30m", "1.5h" or a plain number of seconds; ConfigError otherwise."""
    raw = str(text).strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in _DURATION_UNITS else (raw, "s")
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise ConfigError(f"{where} must be a duration such as 90s, 30m or 2h, got {text!r}") from None
    _check(math.isfinite(seconds) and seconds > 0, f"{where} must be a positive duration, got {text!r}")
    return seconds


@dataclasses.dataclass(frozen=True)
class SearchDimension:
    """One searched config key: `kind` is log_uniform | uniform | int (low, high, step) or choice (values)."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    values: tuple = ()

    def bounds(self) -> list:
        """The values that span the range: both ends, or every choice (what validation builds configs for)."""
        return list(self.values) if self.kind == "choice" else [self.low, self.high]


def tunable_keys() -> list[str]:
    """Every dotted config key a search may set (tables such as model.options take any sub-key)."""
    keys = []
    for section in dataclasses.fields(RunConfig):
        if section.name != "tune":
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(typing.get_type_hints(RunConfig)[section.name])]
    return [k for k in keys if k not in UNTUNABLE_KEYS]


def _table_keys() -> set[str]:
    hints = typing.get_type_hints(RunConfig)
    return {f"{s.name}.{f.name}" for s in dataclasses.fields(RunConfig) if s.name != "tune"
            for f in dataclasses.fields(hints[s.name]) if typing.get_type_hints(hints[s.name])[f.name] is dict}


def parse_dimension(key: str, spec: Any) -> SearchDimension:
    """Check one `[tune.space]` entry (`"train.learning_rate" = { log_uniform = [1e-4, 1e-2] }`)."""
    where = f"tune.space.{key!r}"
    keys = tunable_keys()
    table = next((t for t in _table_keys() if key.startswith(t + ".") and len(key) > len(t) + 1), None)
    if key not in keys and table is None:
        hint = " (where a run goes is set by --output/--name)" if key in UNTUNABLE_KEYS else suggest(key, keys)
        raise ConfigError(f"{where}: unknown config key {key!r}{hint}; search keys look like train.learning_rate")
    _check(isinstance(spec, Mapping) and len(spec) == 1,
           f"{where} must be a table with one of {', '.join(SPACE_KINDS)}, e.g. {{ uniform = [0.1, 0.5] }}")
    kind, args = next(iter(spec.items()))
    _check(kind in SPACE_KINDS, f"{where}: unknown kind {kind!r}{suggest(kind, SPACE_KINDS)}; "
                                f"use one of {', '.join(SPACE_KINDS)}")
    _check(isinstance(args, list) and len(args) > 0, f"{where}: {kind} needs a list, got {args!r}")
    if kind == "choice":
        _check(len({tomli_w.dumps({"v": v}) for v in args}) == len(args), f"{where}: choice lists a value twice")
        return SearchDimension(key, kind, values=tuple(args))
    numbers = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if kind == "int":
        _check(len(args) in (2, 3) and all(isinstance(a, int) and not isinstance(a, bool) for a in args),
               f"{where}: int needs [low, high] or [low, high, step] of integers, got {args!r}")
        low, high, step = (*args, 1) if len(args) == 2 else args
        _check(low <= high, f"{where}: the range [{low}, {high}] is empty (low > high)")
        _check(step > 0, f"{where}: the step must be positive, got {step}")
        return SearchDimension(key, kind, low, high, step)
    _check(len(args) == 2 and numbers, f"{where}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = float(args[0]), float(args[1])
    _check(math.isfinite(low) and math.isfinite(high), f"{where}: bounds must be finite, got {args!r}")
    _check(low < high, f"{where}: the range [{args[0]}, {args[1]}] is empty (low must be below high)")
    _check(kind != "log_uniform" or low > 0, f"{where}: log_uniform needs low > 0, got {args[0]}")
    return SearchDimension(key, kind, low, high)


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """The hyperparameter search of `kerascnn tune` (ignored by `kerascnn train`).

    Attributes:
        space: the searched keys, any config key with a distribution, e.g.
            `"train.learning_rate" = { log_uniform = [1e-4, 1e-2] }`, `"augment.rotation_range" =
            { int = [0, 20, 5] }`, `"model.options.filters" = { choice = [[16, 32], [32, 64]] }`; the
            kinds are log_uniform, uniform, int ([low, high] or [low, high, step]) and choice; every
            other value is pinned by the config (default: empty).
        tuner: KerasTuner's oracle: random | bayesian | hyperband (default random). Hyperband takes
            train.epochs as its largest trial.
        objective: history column a trial is scored by, at its best epoch: val_accuracy | val_loss |
            accuracy | loss (default val_accuracy).
        direction: max | min (default: min for losses, max otherwise).
        max_trials: trials to run at most (default 10).
        budget: wall time of the search, e.g. "90s", "30m", "2h"; the trial running when it ends is
            stopped and no new trial starts; the final run comes after it (default: none).
        max_failures: consecutive failed trials that end the search (default 3).
        hyperband_factor: Hyperband's reduction factor between rounds (default 3).
        trial_process: run each trial in a fresh Python process: the tune process's memory stays
            flat and a trial killed by the system (e.g. out of memory) is recorded as failed; costs
            TensorFlow's start-up and a data load per trial (default False: in this process, the Keras
            session cleared after each trial).
        final: after the search, train, evaluate and export the best config as a full run in
            `<tune dir>/final` (default True; `--no-final` turns it off).
    """

    space: dict = dataclasses.field(default_factory=dict)
    tuner: str = "random"
    objective: str = "val_accuracy"
    direction: str | None = None
    max_trials: int | None = 10
    budget: str | None = None
    max_failures: int = 3
    hyperband_factor: int = 3
    trial_process: bool = False
    final: bool = True

    def __post_init__(self):
        _check(self.tuner in TUNERS, f"tune.tuner: unknown tuner {self.tuner!r}{suggest(self.tuner, TUNERS)}; "
                                     f"choose from {', '.join(TUNERS)}")
        _check(self.objective in OBJECTIVES, f"tune.objective: unknown objective {self.objective!r}"
               f"{suggest(self.objective, OBJECTIVES)}; choose from {', '.join(OBJECTIVES)}")
        _check(self.direction is None or self.direction in DIRECTIONS,
               f"tune.direction must be max or min, got {self.direction!r}")
        _check(self.max_trials is None or self.max_trials > 0,
               f"tune.max_trials must be positive, got {self.max_trials}")
        if self.budget is not None:
            parse_duration(self.budget, "tune.budget")
        _check(self.max_failures > 0, f"tune.max_failures must be positive, got {self.max_failures}")
        _check(self.hyperband_factor >= 2, f"tune.hyperband_factor must be >= 2, got {self.hyperband_factor}")
        _check(self.max_trials is not None or self.budget is not None,
               "tune.max_trials and tune.budget are both unset: the search would never end; set one")
        for key, spec in self.space.items():
            parse_dimension(key, spec)

    @property
    def dimensions(self) -> tuple[SearchDimension, ...]:
        """The `[tune.space]` entries, parsed and checked."""
        return tuple(parse_dimension(key, spec) for key, spec in self.space.items())

    @property
    def objective_direction(self) -> str:
        return self.direction or ("min" if self.objective.endswith("loss") else "max")

    @property
    def budget_seconds(self) -> float | None:
        return None if self.budget is None else parse_duration(self.budget, "tune.budget")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole run: one section a stage. `RunConfig()` is the embedded default (digits, cnn).

    Checks that need model knowledge (builder and backbone options, fine_tune's two phases) are not
    made here, so that reading and validating a config never imports TensorFlow: the runner makes
    them (`kerascnn.runner.check_config`) before any data is read.
    """

    run: RunSection = dataclasses.field(default_factory=RunSection)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    tune: TuneConfig = dataclasses.field(default_factory=TuneConfig)

    def replace(self, section: str, **changes) -> "RunConfig":
        """A copy with `changes` applied to one section, validated again."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})

    def to_dict(self) -> dict:
        """Plain nested dict (None values left out, tuples as lists), as written to TOML."""
        return _drop_none(dataclasses.asdict(self))

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a field's type hint and convert lists to tuples."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):  # an optional field
            return None
        for option in options[:-1]:  # e.g. zoom_range: a list or a number; the last option reports errors
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        return _coerce(value, options[-1], where)
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), f"{where} must be a list, got {value!r}")
        item_type = typing.get_args(annotation)[0]
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is dict or origin is dict:
        _check(isinstance(value, dict), f"{where} must be a table, got {value!r}")
        return dict(value)
    if annotation is bool:
        _check(isinstance(value, bool), f"{where} must be true or false, got {value!r}")
        return value
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), f"{where} must be an integer, got {value!r}")
        return value
    if annotation is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool),
               f"{where} must be a number, got {value!r}")
        _check(math.isfinite(value) if isinstance(value, float) else abs(value) < 2 ** 1023,
               f"{where} must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        _check(isinstance(value, str), f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {annotation!r} at {where}")


def _build(cls, mapping: Mapping, where: str):
    """Build dataclass `cls` from a mapping, refusing unknown keys with the nearest valid one."""
    _check(isinstance(mapping, Mapping), f"[{where}] must be a table, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in mapping.items():
        path = f"{where}.{key}" if where else key
        if key not in hints:
            raise ConfigError(f"unknown config key {path!r}{suggest(key, names)}; valid keys: {', '.join(names)}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, key)
        else:
            kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def config_from_dict(mapping: Mapping) -> RunConfig:
    """Validate a nested mapping (as read from TOML) into a RunConfig."""
    return _build(RunConfig, mapping, "")


def list_presets() -> list[str]:
    """Names of the TOML presets shipped inside the package."""
    return sorted(p.name[:-5] for p in resources.files(PRESETS_PACKAGE).iterdir() if p.name.endswith(".toml"))


def _read_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None


def read_preset(name: str) -> dict:
    presets = list_presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}{suggest(name, presets)}; presets: {', '.join(presets)}")
    return _read_toml(resources.files(PRESETS_PACKAGE).joinpath(f"{name}.toml").read_text(), f"preset {name!r}")


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass the path of a TOML file")
    return _read_toml(path.read_text(encoding="utf-8"), str(path))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.key=value`; the value is read as a TOML literal, else taken as a string."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.epochs=5")
    raw = raw.strip()
    if raw.lower() in ("none", "null"):
        return path, None
    try:
        return path, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return path, raw


def merge(base: dict, path: list[str], value: Any) -> None:
    """Set `base[path[0]]...[path[-1]] = value`, creating tables on the way; None removes the key."""
    node = base
    for part in path[:-1]:
        node = node.setdefault(part, {})
        _check(isinstance(node, dict), f"cannot set {'.'.join(path)}: {part!r} is not a table")
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


def load_config(config_file: str | Path | None = None, preset: str | None = None,
                overrides: list[str] = (), values: Mapping[str, Any] | None = None) -> RunConfig:
    """Resolve a RunConfig: preset, then file, then `values` ({"train.epochs": 5}), then overrides.

    Later sources win. Everything is validated once, at the end.
    """
    merged: dict = {}
    for source in (read_preset(preset) if preset else None, read_config_file(config_file) if config_file else None):
        for section, table in (source or {}).items():
            if isinstance(table, dict) and isinstance(merged.get(section), dict):
                merged[section].update(table)
            else:
                merged[section] = table
    for dotted, value in (values or {}).items():
        merge(merged, dotted.split("."), value)
    for text in overrides:
        merge(merged, *parse_override(text))
    return config_from_dict(merged)


def _attribute_docs(cls) -> dict[str, str]:
    """Field name -> description, read from the `Attributes:` section of a dataclass docstring."""
    docs, name = {}, None
    lines = (cls.__doc__ or "").split("Attributes:", 1)[-1].splitlines()
    for line in lines:
        stripped = line.strip()
        head, sep, rest = stripped.partition(":")
        if sep and head in {f.name for f in dataclasses.fields(cls)}:
            name = head
            docs[name] = rest.strip()
        elif name and stripped:
            docs[name] += " " + stripped
    return docs


def config_reference() -> str:
    """Markdown reference of every config section and key (default and meaning), from the dataclasses.

    docs/config.md is this text; a test keeps the two equal, so the reference cannot drift.
    """
    out = ["# Configuration reference", "",
           "Generated from the dataclasses in `kerascnn/config.py` by `kerascnn config-reference`.",
           "A run config is TOML; each section below is a table, its keys are the field names.", ""]
    defaults = RunConfig()
    for section in dataclasses.fields(RunConfig):
        cls = typing.get_type_hints(RunConfig)[section.name]
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        out += [f"## [{section.name}]", "", summary, "", "| key | default | meaning |", "|---|---|---|"]
        docs = _attribute_docs(cls)
        for field in dataclasses.fields(cls):
            value = getattr(getattr(defaults, section.name), field.name)
            # One line: tomli_w writes lists over several lines, which would break the table row.
            shown = "(none)" if value is None else (json.dumps(list(value)) if isinstance(value, (list, tuple)) else
                                                    tomli_w.dumps({"v": _drop_none(value)})[4:].strip())
            meaning = docs.get(field.name, "").replace("|", "\\|")
            out.append(f"| `{field.name}` | `{shown}` | {meaning} |")
        out.append("")
    return "\n".join(out)
