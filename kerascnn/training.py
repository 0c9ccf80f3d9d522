"""Compile and fit a model with the callbacks a run directory keeps; fine-tune a transfer model in two phases.

`train(model, data, config)` compiles (optimizer, schedule, loss with label smoothing), builds the
Keras callbacks (ModelCheckpoint best on val_loss, EarlyStopping with best weights restored,
CSVLogger, TensorBoard, TerminateOnNaN, BackupAndRestore for `--resume`; see kerascnn.resume) and
calls `model.fit` over the tf.data pipeline, under the strategy the model was built in
(`kerascnn.distribute`; its `fit_distributed` where fit is broken). `fine_tune` is two such fits
(fastai's recipe); the model surgery between them (`unfreeze_top`) belongs to `kerascnn.models.transfer`.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from keras import ops

from kerascnn.config import TrainConfig
from kerascnn.data.imagedata import ImageData
from kerascnn.data.pipeline import batches
from kerascnn.data.sampling import balanced, class_weights, split_labels, with_class_weights
from kerascnn.distribute import (distribute_dataset, fit_distributed, global_batch_size, needs_custom_loop,
                                 strategy_name)
from kerascnn.errors import ConfigError, TrainingError
from kerascnn.feature_cache import FeatureCache, plan_cache
from kerascnn.models.resnet import progressive_resizes
from kerascnn.models.transfer import DEFAULT_UNFREEZE, unfreeze_top
from kerascnn.resume import (AtomicBackupAndRestore, AtomicModelCheckpoint, ResumableEarlyStopping, ResumeState,
                             TrainedModelSaver, resume_state)
from kerascnn.rundir import BACKUP_DIR, CHECKPOINT_FILE, HISTORY_FILE, LOG_DIR, TRAINED_MODEL

FINE_TUNE_RATE_FACTOR = 0.1  # fine_tune's second phase runs at the configured learning rate x this
ADAMW_WEIGHT_DECAY = 1e-4  # adamw's decay where train.weight_decay is unset (Keras' AdamW default is 0.004)


@dataclasses.dataclass
class TrainResult:
    """What training produced: per-epoch history, wall time of `fit`, epochs run, and how it was spread."""

    history: pd.DataFrame
    train_seconds: float
    epochs_run: int
    num_replicas_in_sync: int = 1
    global_batch_size: int | None = None
    feature_cache: list[dict] = dataclasses.field(default_factory=list)  # one entry a fit of a transfer model


ONE_CYCLE_RISE = 0.25  # fastai's fit_one_cycle: the share of steps the rate rises (pct_start) ...
ONE_CYCLE_START_DIVISOR = 25.0  # ... from peak / 25 (div) ...
ONE_CYCLE_END_DIVISOR = 1e5  # ... and falls to peak / 1e5 at the last step (div_final)


@keras.saving.register_keras_serializable(package="kerascnn")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate that rises from `start` to `peak` over `warmup_steps`, then falls to `end` at
    `total_steps`; both phases linear, or both half-cosines (`cosine=True`).

    Written here because Keras has no such schedule: its CosineDecay rises linearly and decays by a
    cosine, its PolynomialDecay (power 1: linear) has no warm-up. It serves `train.schedule = "linear"`
    (0 -> peak -> 0, linear) and `"one_cycle"` (fastai's `fit_one_cycle`: peak / 25 -> peak -> peak / 1e5,
    cosine); past `total_steps` the rate stays at `end`.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, start: float = 0.0, end: float = 0.0,
                 cosine: bool = False, name: str = "WarmupDecay"):
        self.peak, self.total_steps, self.warmup_steps = float(peak), int(total_steps), int(warmup_steps)
        self.start, self.end, self.cosine, self.name = float(start), float(end), bool(cosine), name

    def _ramp(self, low, high, fraction):
        """From `low` (fraction 0) to `high` (fraction 1)."""
        if self.cosine:
            fraction = (1.0 - ops.cos(math.pi * fraction)) / 2.0
        return low + (high - low) * fraction

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        rising = self._ramp(self.start, self.peak, ops.clip(step / max(warmup, 1.0), 0.0, 1.0))
        falling = self._ramp(self.peak, self.end,
                             ops.clip((step - warmup) / max(self.total_steps - warmup, 1.0), 0.0, 1.0))
        return ops.where(step < warmup, rising, falling)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "start": self.start, "end": self.end, "cosine": self.cosine, "name": self.name}


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """The configured learning rate: a float, or a Keras schedule (warm-up, then constant, cosine, linear or
    one cycle)."""
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if config.schedule == "linear":
        return WarmupDecay(config.learning_rate, total, warmup)
    if config.schedule == "one_cycle":
        return WarmupDecay(config.learning_rate, total, warmup or round(ONE_CYCLE_RISE * total),
                           start=config.learning_rate / ONE_CYCLE_START_DIVISOR,
                           end=config.learning_rate / ONE_CYCLE_END_DIVISOR, cosine=True)
    if config.schedule == "constant" and warmup == 0:
        return config.learning_rate
    # CosineDecay with alpha=1.0 never decays: that is the constant schedule after a warm-up.
    alpha = 1.0 if config.schedule == "constant" else 0.0
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(0.0, max(total - warmup, 1), alpha=alpha,
                                                  warmup_target=config.learning_rate, warmup_steps=warmup)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = learning_rate(config, steps_per_epoch)
    common = {"weight_decay": config.weight_decay, "use_ema": config.use_ema, "ema_momentum": config.ema_momentum}
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=config.nesterov, **common)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate, momentum=config.momentum, **common)
    if config.optimizer == "adamw":
        if config.weight_decay is None:
            common["weight_decay"] = ADAMW_WEIGHT_DECAY
        return keras.optimizers.AdamW(rate, **common)
    return keras.optimizers.Adam(rate, **common)


class ProgressiveResizing(keras.callbacks.Callback):
    """Tells the model's `ProgressiveResize` layers which epoch starts, so they train at its image size."""

    def on_epoch_begin(self, epoch, logs=None):
        for layer in progressive_resizes(self.model):
            layer.set_epoch(epoch)


def resized_epochs(model: keras.Model) -> int:
    """How many epochs a `progressive_resizing` model trains below full size: its validation loss (at full
    size) says little about those, so early stopping starts counting after them."""
    return max((sum(epochs for _, epochs in layer.schedule) for layer in progressive_resizes(model)), default=0)


class AverageWeightsAtEpochEnd(keras.callbacks.SwapEMAWeights):
    """Validation and every callback between this one and `swap_back` see the optimizer's averaged weights.

    Keras' `SwapEMAWeights(swap_on_epoch=True)` swaps the raw weights back only when the next epoch
    begins, after the crash-recovery backup has saved the swapped state (so a resume would go on from
    the average); `swap_back`, placed before the backup, swaps back within the same epoch end. After
    the last epoch Keras' `fit` itself writes the average into the model.
    """

    def __init__(self):
        super().__init__(swap_on_epoch=False)  # validation still swaps in on_test_begin/on_test_end
        self.swap_back = _SwapBack(self)

    def on_epoch_end(self, epoch, logs=None):
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True


class _SwapBack(keras.callbacks.Callback):
    def __init__(self, averaging: AverageWeightsAtEpochEnd):
        super().__init__()
        self.averaging = averaging

    def on_epoch_end(self, epoch, logs=None):
        if self.averaging._ema_weights_in_model:
            self.averaging._swap_variables()
            self.averaging._ema_weights_in_model = False


def compile_model(model: keras.Model, config: TrainConfig, steps_per_epoch: int,
                  multi_label: bool = False, optimizer: keras.optimizers.Optimizer | None = None) -> keras.Model:
    """Compile for one-hot labels: categorical cross-entropy (label smoothing) and accuracy; for
    multi-hot labels (`multi_label`): binary cross-entropy, binary accuracy and multi-label ROC AUC.

    `config.jit_compile` forces XLA; otherwise Keras decides ("auto": XLA on one GPU, never on CPU).
    A mixed_float16 model gets Keras' LossScaleOptimizer automatically. `optimizer`: one to share
    (a cached-feature head trains with its whole network's, so the network saves its state); default a new one.
    """
    if multi_label:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing)
        metrics = [keras.metrics.BinaryAccuracy(name="binary_accuracy"), keras.metrics.AUC(multi_label=True, name="auc")]
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        metrics = ["accuracy"]
    model.compile(optimizer=optimizer or make_optimizer(config, steps_per_epoch), loss=loss, metrics=metrics,
                  jit_compile=True if config.jit_compile else "auto")
    return model


def make_callbacks(config: TrainConfig, run_dir: Path | None, resume: ResumeState | None = None,
                   continue_from: TrainResult | None = None,
                   monitor_from_epoch: int = 0) -> list[keras.callbacks.Callback]:
    """TerminateOnNaN, EarlyStopping and ProgressiveResizing always; checkpoint, CSV history, backup and TensorBoard in a run dir.

    The order matters at each epoch end: with `use_ema` the averaged weights are swapped in for
    early stopping and the best checkpoint and out again before the backup; the CSV row and the best
    checkpoint are written before the backup records the epoch as done, so a resume never skips or
    repeats an epoch. After
    `continue_from` (a fit this one carries on), history.csv is appended to and the checkpoint is
    only replaced by a better one. Early stopping watches val_loss from `monitor_from_epoch` on.
    """
    averaging = AverageWeightsAtEpochEnd() if config.use_ema else None
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(), ProgressiveResizing()]
    if averaging:
        callbacks.append(averaging)
    if config.early_stopping_patience > 0:
        callbacks.append(ResumableEarlyStopping(resume, run_dir / CHECKPOINT_FILE if run_dir else None,
                                                monitor="val_loss", patience=config.early_stopping_patience,
                                                restore_best_weights=True, start_from_epoch=monitor_from_epoch))
    if run_dir is not None:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if resume:
            best = resume.best_val_loss
        else:
            best = float(continue_from.history["val_loss"].min()) if continue_from else None
        append = resume is not None or continue_from is not None
        callbacks += [keras.callbacks.CSVLogger(str(run_dir / HISTORY_FILE), append=append),
                      AtomicModelCheckpoint(str(run_dir / CHECKPOINT_FILE), monitor="val_loss", save_best_only=True,
                                            initial_value_threshold=best),
                      TrainedModelSaver(run_dir / TRAINED_MODEL)]
    if averaging:
        callbacks.append(averaging.swap_back)
    if run_dir is not None:
        if config.backup_every > 0:
            callbacks.append(AtomicBackupAndRestore(str(run_dir / BACKUP_DIR), save_freq=config.backup_every))
        if config.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(str(run_dir / LOG_DIR), profile_batch=0))
    return callbacks


def train(model: keras.Model, data: ImageData, config: TrainConfig | None = None, run_dir: Path | None = None,
          seed: int = 42, cache: bool = True, shuffle_buffer: int = 10000, augment=None,
          continue_from: TrainResult | None = None, resume: bool = False, sampling: str = "none",
          extra_callbacks: list | None = None) -> TrainResult:
    """Compile and fit `model` on `data.train`, validating on `data.validation`.

    Args:
        model: a model taking raw pixels and returning probabilities (e.g. from `build_model`).
        data: an ImageData from `load_data` or `from_arrays`.
        config: a TrainConfig (default TrainConfig()).
        run_dir: where checkpoints, history.csv and logs go; None keeps nothing on disk.
        seed: shuffling seed (default 42).
        augment: optional batch function (images, labels) -> (images, labels) for training batches, or an
            object with `training_batches(data, batch_size, seed)` that serves the training batches
            itself (the legacy ImageDataGenerator backend of `kerascnn.data.augment.make_augment`).
        continue_from: an earlier TrainResult of this model (e.g. fine-tuning's head phase): epochs are
            numbered on from it and the returned result covers both.
        resume: continue the interrupted fit whose backup and history are in `run_dir` (default False).
        sampling: none | balanced: draw training images of every class equally often (`data.sampling`).
        extra_callbacks: Keras callbacks run after kerascnn's own (e.g. the tuner's wall-time deadline).

    `config.class_weight` weighs each training image's loss by its class (as Keras sample weights);
    multi-label data (`data.multi_label`) train on multi-hot labels with binary cross-entropy.
    A transfer model whose backbone is frozen trains its head on features computed once per image when
    `config.cache_features` allows it (kerascnn.feature_cache); one line says whether it did, and why.

    The model trains under the tf.distribute strategy it was built in (`model.distribute_strategy`):
    `config.batch_size` is per replica, and each step takes that times the number of replicas.

    Example:
        result = train(build_model("cnn", data.input_shape, data.num_classes), data, TrainConfig(epochs=5))
    """
    config = config or TrainConfig()
    strategy = model.distribute_strategy  # the one the model was built under
    global_batch = global_batch_size(strategy, config.batch_size)
    steps = max(1, math.ceil(data.counts["train"] / global_batch))
    with strategy.scope():
        compile_model(model, config, steps, data.multi_label)
    train_labels = split_labels(data) if config.class_weight is not None or sampling == "balanced" else None
    weights = class_weights(train_labels, config.class_weight, data.class_names) \
        if config.class_weight is not None else None
    num_classes = None if data.multi_label else data.num_classes
    cache_plan = plan_cache(model, config.cache_features, augment, strategy)
    if config.verbose and continue_from is None:  # said once, not again for fine_tune's second phase
        print(f"strategy {strategy_name(strategy)}: {strategy.num_replicas_in_sync} replica(s), global batch "
              f"{global_batch} = {config.batch_size} per replica x {strategy.num_replicas_in_sync}")

    def train_batches(ds, batch_size, cache=cache):
        if hasattr(augment, "training_batches"):  # the legacy ImageDataGenerator serves its own batches
            return augment.training_batches(data, batch_size, seed)
        if sampling == "balanced":
            ds = balanced(ds, train_labels, seed, cache)
        ready = batches(ds, batch_size, num_classes, training=True, seed=seed, cache=cache and sampling != "balanced",
                        shuffle_buffer=shuffle_buffer, augment=augment)
        return ready if weights is None else with_class_weights(ready, weights)

    def validation_batches(ds, batch_size, cache=cache):
        return batches(ds, batch_size, num_classes, cache=cache)

    run_dir = Path(run_dir) if run_dir else None
    state = resume_state(run_dir, HISTORY_FILE) if resume and run_dir else None
    if run_dir is not None and not resume:  # BackupAndRestore would silently continue a stale backup
        shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)
    first_epoch = continue_from.epochs_run if continue_from else 0
    callbacks = make_callbacks(config, run_dir, state, continue_from, monitor_from_epoch=resized_epochs(model))
    callbacks += list(extra_callbacks or [])
    start = time.perf_counter()
    features = FeatureCache(model, data, global_batch, run_dir) if cache_plan and cache_plan.cached else None
    if cache_plan is not None and config.verbose:
        print(cache_plan.message(features))
    try:
        if needs_custom_loop(strategy):
            history = fit_distributed(model, distribute_dataset(strategy, data.train, train_batches, global_batch,
                                                                True),
                                      distribute_dataset(strategy, data.validation, validation_batches, global_batch),
                                      epochs=first_epoch + config.epochs, steps_per_epoch=steps, callbacks=callbacks,
                                      verbose=config.verbose, initial_epoch=first_epoch)
        elif features is not None:  # the head's own fit; the cached features are already in memory or on disk
            with strategy.scope():
                compile_model(features.head, config, steps, data.multi_label, optimizer=model.optimizer)
            history = features.head.fit(train_batches(features.train, global_batch, cache=False),
                                        validation_data=validation_batches(features.validation, global_batch,
                                                                           cache=False),
                                        initial_epoch=first_epoch, epochs=first_epoch + config.epochs,
                                        verbose=config.verbose, shuffle=False, callbacks=features.bind(callbacks))
        else:
            history = model.fit(train_batches(data.train, global_batch),
                                validation_data=validation_batches(data.validation, global_batch),
                                initial_epoch=first_epoch, epochs=first_epoch + config.epochs, verbose=config.verbose,
                                shuffle=False, callbacks=callbacks)
    finally:
        if features is not None:
            features.close()
    cache_record = [cache_plan.record(features)] if cache_plan else []
    seconds = time.perf_counter() - start + (continue_from.train_seconds if continue_from else 0.0)
    if run_dir is not None and (run_dir / HISTORY_FILE).is_file():  # every epoch, those before a resume included
        frame = pd.read_csv(run_dir / HISTORY_FILE)
    else:
        frame = pd.DataFrame(history.history)
        frame.insert(0, "epoch", history.epoch)
        if continue_from:
            frame = pd.concat([continue_from.history, frame], ignore_index=True)
    if not np.isfinite(frame["loss"]).all():
        epoch = int(frame["epoch"][~np.isfinite(frame["loss"])].iloc[0]) + 1
        kept = (f"the best checkpoint so far is kept in {run_dir / CHECKPOINT_FILE}"
                if run_dir is not None and (run_dir / CHECKPOINT_FILE).is_file() else "no checkpoint was saved")
        raise TrainingError(f"training stopped: the loss became NaN or infinite in epoch {epoch} with "
                            f"{config.optimizer} at learning rate {config.learning_rate:g}; the learning rate is "
                            f"the likely cause: lower train.learning_rate (--learning-rate), or check the input "
                            f"data; {kept}")
    return TrainResult(history=frame, train_seconds=seconds, epochs_run=len(frame),
                       num_replicas_in_sync=strategy.num_replicas_in_sync, global_batch_size=global_batch,
                       feature_cache=(continue_from.feature_cache if continue_from else []) + cache_record)


def fine_tune_configs(config: TrainConfig) -> tuple[TrainConfig, TrainConfig]:
    """The TrainConfigs of both fine_tune phases: the first half of the epochs (rounded up) trains the
    head; the rest fine-tune at learning rate x 0.1 without warm-up. Raises ConfigError if impossible."""
    head_epochs = math.ceil(config.epochs / 2)
    if config.epochs < 2 or config.warmup_epochs >= head_epochs:
        raise ConfigError(f"model.transfer = fine_tune trains the head for the first half of train.epochs, then "
                          f"fine-tunes: it needs train.epochs >= 2 and train.warmup_epochs < {head_epochs} "
                          f"(got epochs {config.epochs}, warmup_epochs {config.warmup_epochs})")
    return (dataclasses.replace(config, epochs=head_epochs),
            # cache_features = true holds for the frozen phase; the second trains the backbone, so it cannot cache
            dataclasses.replace(config, epochs=config.epochs - head_epochs, warmup_epochs=0,
                                learning_rate=config.learning_rate * FINE_TUNE_RATE_FACTOR,
                                cache_features="auto" if config.cache_features is True else config.cache_features))


def fine_tune(model: keras.Model, data: ImageData, config: TrainConfig | None = None, run_dir: Path | None = None,
              unfreeze: int | None = None, **train_options) -> TrainResult:
    """Train a transfer model in two phases recorded as one history (fastai's `fine_tune` recipe).

    Phase 1 trains the head with the backbone frozen for the first half of `config.epochs` (on cached
    features when `config.cache_features` allows it, as `train` does); phase 2
    unfreezes the backbone's top `unfreeze` layers (BatchNormalization stays frozen and in inference
    mode) and trains the rest of the epochs at learning rate x 0.1, without warm-up. Epoch numbers,
    history.csv and the best checkpoint carry on from phase 1.

    Args:
        model: a model from `build_transfer_model` (its backbone frozen).
        data: an ImageData.
        config: a TrainConfig with epochs >= 2 (default TrainConfig()).
        run_dir: where checkpoints, history.csv and logs go (None: nothing on disk).
        unfreeze: layers to unfreeze at the top of the backbone (default 20).
        **train_options: passed to `train` (seed, cache, shuffle_buffer, augment).

    Example:
        result = fine_tune(model, data, TrainConfig(epochs=6), unfreeze=30)
    """
    config = config or TrainConfig()
    head_config, tune_config = fine_tune_configs(config)
    if config.verbose:  # Keras prints no "Epoch 1/1" header for a one-epoch fit: say where each phase is
        print(f"fine_tune phase 1: the head, backbone frozen (epochs 1-{head_config.epochs} of {config.epochs})")
    head = train(model, data, head_config, run_dir, **train_options)
    unfrozen = unfreeze_top(model, DEFAULT_UNFREEZE if unfreeze is None else unfreeze)
    if config.verbose:
        print(f"fine_tune phase 2: {unfrozen} top backbone layers unfrozen, learning rate "
              f"{tune_config.learning_rate:g} (epochs {head_config.epochs + 1}-{config.epochs} of {config.epochs})")
    return train(model, data, tune_config, run_dir, continue_from=head, **train_options)
