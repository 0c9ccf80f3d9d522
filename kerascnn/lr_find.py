"""The learning-rate range test (Smith 2015, as fastai's `Learner.lr_find`): train for about 100
steps while the learning rate grows exponentially, and suggest the rate where the smoothed loss falls
fastest.

As in fastai: the rate of step i is `start_lr * (end_lr / start_lr) ** (i / steps)`; the loss is an
exponential moving average (beta 0.98) with bias correction; the test stops early once the smoothed
loss exceeds 4x its best; the suggestion ("steep") is the rate at the steepest descent of the smoothed
loss against log(rate), read on the curve without its first tenth and last 5 steps. The model's
weights are restored afterwards, so the test leaves the model as it found it.

Keras has no range test of its own; this module drives `model.fit` with a callback. Keras 3 reports
the epoch's running mean of the loss at each batch end, so each batch's own loss is recovered from two
consecutive means (all batches are full: the training data are repeated before batching).

Example:
    result = lr_find(build_model("cnn", data.input_shape, data.num_classes), data, TrainConfig())
    print(result.suggestion); png = png_bytes(result.figure())
"""

from __future__ import annotations

import dataclasses
import math
import time

import keras
import numpy as np
import pandas as pd

from kerascnn.config import LR_FIND, RunConfig, TrainConfig
from kerascnn.data.datasets import ImageData
from kerascnn.data.pipeline import batches
from kerascnn.errors import ConfigError, TrainingError
from kerascnn.plots import new_figure
from kerascnn.training import compile_model

START_LR, END_LR, STEPS = 1e-7, 10.0, 100
SMOOTHING = 0.98  # fastai's AvgSmoothLoss beta
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this many times its best
PLOT_FILE, CSV_FILE = "lr_find.png", "lr_find.csv"


@dataclasses.dataclass
class LRFindResult:
    """The range test's curve and suggestion.

    Attributes:
        learning_rates: the rate of each step run.
        losses: the training loss of each step (its own batch, not a running mean).
        smoothed: the bias-corrected exponential moving average of `losses`.
        suggestion: the rate at the steepest descent of `smoothed` against log(rate).
        seconds: wall time of the test.
        stopped_early: the loss diverged (or became NaN) before the last step.
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    seconds: float
    stopped_early: bool

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"step": np.arange(len(self.losses)), "learning_rate": self.learning_rates,
                             "loss": self.losses, "smoothed_loss": self.smoothed})

    def summary(self) -> dict:
        """What the manifest records."""
        return {"suggestion": self.suggestion, "steps": int(len(self.losses)), "seconds": round(self.seconds, 3),
                "start_lr": float(self.learning_rates[0]), "last_lr": float(self.learning_rates[-1]),
                "stopped_early": self.stopped_early, "method": "steepest descent of the smoothed loss (fastai steep)"}

    def figure(self, skip_end: int = 5):
        """Smoothed loss against the learning rate (log axis), the suggestion marked."""
        figure = new_figure(6, 4)
        ax = figure.add_subplot()
        end = max(len(self.smoothed) - skip_end, 2)
        ax.plot(self.learning_rates[:end], self.smoothed[:end], label="smoothed loss")
        ax.axvline(self.suggestion, color="tab:red", linestyle="--", label=f"suggestion {self.suggestion:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title("learning-rate range test")
        ax.legend()
        return figure


class _RangeTest(keras.callbacks.Callback):
    """Sets each step's rate, recovers each batch's loss from Keras' running mean, stops on divergence."""

    def __init__(self, start_lr: float, end_lr: float, steps: int):
        super().__init__()
        self.start_lr, self.end_lr, self.steps = start_lr, end_lr, steps
        self.rates, self.losses, self.smoothed = [], [], []
        self._average, self._previous_mean, self._best = 0.0, 0.0, math.inf

    def on_train_batch_begin(self, batch, logs=None):
        rate = self.start_lr * (self.end_lr / self.start_lr) ** (batch / self.steps)
        self.model.optimizer.learning_rate = rate
        self.rates.append(rate)

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        loss = mean * (batch + 1) - self._previous_mean * batch  # equal batches: undo the running mean
        self._previous_mean = mean
        self.losses.append(loss)
        count = len(self.losses)
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * loss
        smooth = self._average / (1 - SMOOTHING ** count)
        self.smoothed.append(smooth)
        if not math.isfinite(smooth):
            self.model.stop_training = True
            return
        self._best = min(self._best, smooth)
        if smooth > DIVERGENCE * self._best:
            self.model.stop_training = True


def steepest_descent(learning_rates: np.ndarray, smoothed: np.ndarray) -> float:
    """fastai's `steep`: the rate where d(loss)/d(log rate) is most negative, on the curve without its
    first tenth and last 5 steps (cut at the first non-finite loss)."""
    n = len(smoothed)
    rates, losses = learning_rates[n // 10:max(n - 5, n // 10)], smoothed[n // 10:max(n - 5, n // 10)]
    finite = np.isfinite(losses)
    if not finite.all():
        rates, losses = rates[:np.argmin(finite)], losses[:np.argmin(finite)]
    if len(losses) < 2:
        raise TrainingError(f"the learning-rate range test ran {n} steps before the loss diverged, too few to "
                            f"read a suggestion; lower --start-lr or raise --steps")
    slopes = np.diff(losses) / np.diff(np.log(rates))
    return float(rates[int(np.argmin(slopes))])


def lr_find(model: keras.Model, data: ImageData, config: TrainConfig | None = None, start_lr: float = START_LR,
            end_lr: float = END_LR, steps: int = STEPS, seed: int = 42, shuffle_buffer: int = 10000,
            augment=None) -> LRFindResult:
    """Run the range test on `model` over `data.train` and suggest a learning rate.

    Args:
        model: a model taking raw pixels and returning probabilities; its weights are restored after.
        data: an ImageData (training split used).
        config: the TrainConfig whose optimizer, batch size and label smoothing are tested (default
            TrainConfig()); its learning rate and schedule are replaced by the ramp.
        start_lr, end_lr: the ramp's first and last rate (default 1e-7 and 10, as fastai).
        steps: steps of the ramp (default 100).
        seed: shuffling seed (default 42).
        augment: optional batch function applied to the training batches, as in `train`.

    Example:
        rate = lr_find(model, data, TrainConfig(optimizer="sgd")).suggestion
    """
    if not 0 < start_lr < end_lr or not math.isfinite(end_lr):
        raise ConfigError(f"the range test needs 0 < start_lr < end_lr, got {start_lr:g} and {end_lr:g}")
    if steps < 6:
        raise ConfigError(f"the range test needs at least 6 steps, got {steps}")
    config = dataclasses.replace(config or TrainConfig(), learning_rate=start_lr, schedule="constant",
                                 warmup_epochs=0, epochs=1)
    weights = model.get_weights()
    compile_model(model, config, steps)
    ramp = _RangeTest(start_lr, end_lr, steps)
    train = batches(data.train.repeat(), config.batch_size, data.num_classes, training=True, seed=seed,
                    cache=False, shuffle_buffer=shuffle_buffer, augment=augment if callable(augment) else None)
    start = time.perf_counter()
    try:
        model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[ramp])
    finally:
        model.set_weights(weights)
    seconds = time.perf_counter() - start
    rates, smoothed = np.array(ramp.rates[:len(ramp.losses)]), np.array(ramp.smoothed)
    return LRFindResult(rates, np.array(ramp.losses), smoothed, steepest_descent(rates, smoothed), seconds,
                        stopped_early=len(ramp.losses) < steps)


def resolve_learning_rate(config: RunConfig, model: keras.Model, data: ImageData,
                          augment=None) -> tuple[RunConfig, LRFindResult | None]:
    """`config` with `train.learning_rate = "find"` replaced by the range test's suggestion (and the
    test's result); any other config is returned as it is, with None."""
    if config.train.learning_rate != LR_FIND:
        return config, None
    result = lr_find(model, data, config.train, seed=config.run.seed, shuffle_buffer=config.data.shuffle_buffer,
                     augment=augment)
    return config.replace("train", learning_rate=result.suggestion), result
