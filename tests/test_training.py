"""Training's optimizer, learning-rate schedule and loss: the rate at step 0, at the end of the warm-up and at
the last step, each optimizer's settings, and label smoothing's effect on the loss."""

import dataclasses

import keras
import tensorflow as tf
import numpy as np
import pytest

from kerascnn.config import TrainConfig
from kerascnn.data.datasets import from_arrays
from kerascnn.models import build_model
from kerascnn.training import compile_model, learning_rate, make_optimizer, train
from tests.conftest import InterruptAt

STEPS = 10  # steps per epoch


def rate(schedule, step: int) -> float:
    return float(schedule(step)) if callable(schedule) else float(schedule)


@pytest.mark.parametrize("schedule, warmup, at_start, at_warmup_end, at_end", [
    ("constant", 0, 1e-3, 1e-3, 1e-3),
    ("constant", 2, 0.0, 1e-3, 1e-3),
    ("cosine", 0, 1e-3, 1e-3 * (1 + np.cos(np.pi * 0 / 50)) / 2, 0.0),
    ("cosine", 2, 0.0, 1e-3, 0.0),
])
def test_learning_rate_at_step_0_end_of_warmup_and_last_step(schedule, warmup, at_start, at_warmup_end, at_end):
    config = TrainConfig(epochs=5, learning_rate=1e-3, schedule=schedule, warmup_epochs=warmup)
    lr = learning_rate(config, STEPS)
    assert rate(lr, 0) == pytest.approx(at_start, abs=1e-9)
    assert rate(lr, warmup * STEPS) == pytest.approx(at_warmup_end, abs=1e-9)
    assert rate(lr, 5 * STEPS) == pytest.approx(at_end, abs=1e-9)
    if warmup:  # linear warm-up: half the rate half way
        assert rate(lr, warmup * STEPS // 2) == pytest.approx(5e-4, rel=1e-5)
    if schedule == "cosine":  # half way through the decay, half the rate
        middle = warmup * STEPS + (5 - warmup) * STEPS // 2
        assert rate(lr, middle) == pytest.approx(5e-4, rel=1e-5)


@pytest.mark.parametrize("warmup", [0, 2])
def test_linear_schedule_falls_in_a_straight_line_to_zero_after_the_warmup(warmup):
    lr = learning_rate(TrainConfig(epochs=5, learning_rate=1e-3, schedule="linear", warmup_epochs=warmup), STEPS)
    decay = (5 - warmup) * STEPS
    assert rate(lr, 0) == pytest.approx(0.0 if warmup else 1e-3, rel=1e-6, abs=1e-12)
    assert rate(lr, warmup * STEPS) == pytest.approx(1e-3)
    for done in (0.2, 0.5, 0.8):
        assert rate(lr, warmup * STEPS + round(done * decay)) == pytest.approx(1e-3 * (1 - done), rel=1e-5)
    assert rate(lr, 5 * STEPS) == pytest.approx(0.0, abs=1e-12)
    if warmup:
        assert rate(lr, STEPS) == pytest.approx(5e-4, rel=1e-5)


@pytest.mark.parametrize("warmup, rise_steps", [(0, 10), (2, 20)])  # a quarter of 40 steps, or the warm-up's
def test_one_cycle_rises_from_a_25th_to_the_peak_then_falls_to_a_100000th(warmup, rise_steps):
    config = TrainConfig(epochs=4, learning_rate=1e-2, schedule="one_cycle", warmup_epochs=warmup)
    lr = learning_rate(config, STEPS)
    assert rate(lr, 0) == pytest.approx(1e-2 / 25)
    assert rate(lr, rise_steps // 2) == pytest.approx((1e-2 / 25 + 1e-2) / 2, rel=1e-5)  # half-cosine: the mean
    assert rate(lr, rise_steps) == pytest.approx(1e-2)
    assert rate(lr, (rise_steps + 40) // 2) == pytest.approx((1e-2 + 1e-7) / 2, rel=1e-5)  # half way down
    assert rate(lr, 40) == pytest.approx(1e-7, abs=1e-9)  # float32 rounding: within 1e-9
    rates = [rate(lr, step) for step in range(41)]
    assert rates.index(max(rates)) == rise_steps


@pytest.mark.parametrize("schedule", ["linear", "one_cycle"])
def test_a_model_trained_with_each_schedule_saves_and_reloads_in_safe_mode(tmp_path, schedule):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 4, 4, 1)).astype(np.uint8), np.arange(40) % 2
    data = from_arrays(images, labels, images[:8], labels[:8])
    config = TrainConfig(epochs=2, batch_size=8, schedule=schedule, learning_rate=0.01, early_stopping_patience=0,
                         tensorboard=False, verbose=0)
    model = build_model("mlp", (4, 4, 1), 2, hidden=[4])
    train(model, data, config)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    steps = int(model.optimizer.iterations)
    for step in (0, steps // 3, steps):
        assert rate(reloaded.optimizer._learning_rate, step) == pytest.approx(rate(model.optimizer._learning_rate,
                                                                                    step))
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0 if schedule == "linear" else 1e-7, abs=1e-9)


@pytest.mark.parametrize("name, cls, settings", [
    ("adam", keras.optimizers.Adam, {"weight_decay": 0.03}),
    ("sgd", keras.optimizers.SGD, {"momentum": 0.8, "nesterov": True, "weight_decay": 0.03}),
    ("rmsprop", keras.optimizers.RMSprop, {"momentum": 0.8, "weight_decay": 0.03}),
    ("adamw", keras.optimizers.AdamW, {"weight_decay": 0.03}),
])
def test_each_optimizer_gets_its_settings(name, cls, settings):
    config = TrainConfig(optimizer=name, learning_rate=0.01, momentum=0.8, nesterov=True, weight_decay=0.03)
    optimizer = make_optimizer(config, STEPS)
    assert type(optimizer) is cls
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    for key, value in settings.items():
        assert getattr(optimizer, key) == pytest.approx(value)


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop", "adamw"])
def test_unset_weight_decay_decays_only_adamw(name):
    """A set `train.weight_decay` reaches every optimizer (above); unset, only adamw decays, by 1e-4."""
    optimizer = make_optimizer(TrainConfig(optimizer=name), STEPS)
    assert optimizer.weight_decay == (pytest.approx(1e-4) if name == "adamw" else None)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_smoothing_is_in_the_compiled_loss(smoothing):
    model = compile_model(build_model("mlp", (2, 2, 1), 4, hidden=[4]), TrainConfig(label_smoothing=smoothing), STEPS)
    predicted = np.array([[0.7, 0.1, 0.1, 0.1]], np.float32)
    target = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    smoothed = target * (1 - smoothing) + smoothing / 4  # Keras' definition: spread over the 4 classes
    expected = -float((smoothed * np.log(predicted)).sum())
    assert float(model.loss(target, predicted)) == pytest.approx(expected, rel=1e-5)


def test_a_fit_follows_the_schedule_to_its_last_step():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (50, 4, 4, 1)).astype(np.uint8), np.arange(50) % 2
    data = from_arrays(images, labels, images[:10], labels[:10])
    steps = -(-data.counts["train"] // 8)
    config = TrainConfig(epochs=3, batch_size=8, schedule="cosine", warmup_epochs=1, learning_rate=0.01,
                         early_stopping_patience=0, tensorboard=False, verbose=0)
    model = build_model("mlp", (4, 4, 1), 2, hidden=[4])
    train(model, data, config)
    assert int(model.optimizer.iterations) == 3 * steps
    schedule = model.optimizer._learning_rate
    assert float(schedule(steps)) == pytest.approx(0.01)  # the warm-up ends after the first epoch
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)  # cosine reached its end


def test_each_optimizer_keeps_a_moving_average_when_asked():
    for name in ("adam", "sgd", "rmsprop", "adamw"):
        optimizer = make_optimizer(TrainConfig(optimizer=name, use_ema=True, ema_momentum=0.9), STEPS)
        assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.9)
    assert not make_optimizer(TrainConfig(), STEPS).use_ema


def test_use_ema_validates_checkpoints_and_ends_on_the_average_while_the_backup_keeps_the_raw_weights(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 4, 4, 1)).astype(np.uint8), np.arange(64) % 2
    data = from_arrays(images, labels, images[:16], labels[:16])
    config = TrainConfig(epochs=1, batch_size=8, learning_rate=0.05, use_ema=True, ema_momentum=0.5,
                         early_stopping_patience=0, tensorboard=False, verbose=0, backup_every=1000)
    model = build_model("mlp", (4, 4, 1), 2, hidden=[8])
    result = train(model, data, config, run_dir=tmp_path / "finished")
    averages = [v.numpy() for v in model.optimizer._model_variables_moving_average]
    for weight, average in zip(model.trainable_weights, averages):  # fit ended on the average
        np.testing.assert_array_equal(weight.numpy(), average)
    validation = data.validation.batch(8).map(lambda x, y: (x, tf.one_hot(y, 2)))
    assert result.history["val_loss"].iloc[-1] == pytest.approx(model.evaluate(validation, verbose=0)[0], rel=1e-4)

    interrupted = tmp_path / "interrupted"  # Ctrl-C in epoch 2 leaves epoch 1's backup and best checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(build_model("mlp", (4, 4, 1), 2, hidden=[8]), data, dataclasses.replace(config, epochs=2),
              run_dir=interrupted, extra_callbacks=[InterruptAt(1, 0)])
    raw = compile_model(build_model("mlp", (4, 4, 1), 2, hidden=[8]), config, 8)
    raw.optimizer.build(raw.trainable_variables)
    raw.load_weights(interrupted / "checkpoints" / "backup" / "latest.weights.h5")
    slots = [v.numpy() for v in raw.optimizer._model_variables_moving_average]
    assert any(not np.allclose(w.numpy(), a) for w, a in zip(raw.trainable_weights, slots))  # raw weights go on
    best = keras.models.load_model(interrupted / "checkpoints" / "best.keras")
    for weight, average in zip(best.trainable_weights, slots):  # the best checkpoint holds the average
        np.testing.assert_allclose(weight.numpy(), average, atol=1e-7)
