"""Which dtype policy a run trains in: float32, or mixed_bfloat16 where this CPU makes it pay.

TensorFlow's oneDNN kernels run bfloat16 convolutions and matmuls on the AMX units about three times
faster than float32 (an AMX Xeon), on the AVX512-BF16 units at most twice as fast (the EPYC of
2026-12-01: oneDNN's `avx512_core_bf16` kernels, no AMX), yet a whole training step gains only what the rest of
the step (BatchNorm, casts, the optimizer, the input) leaves of that, and on some networks loses.
So `train.precision = "auto"` measures instead of guessing: on a CPU with bfloat16 units it builds
the network in both policies with the same weights, checks that their predictions agree, times a
few training steps of each, alternating, and trains in bfloat16 only if its step is clearly faster.
The check costs a few seconds, so runs too short to repay it train in float32 without one.

Example:
    model = make_model(config, data)  # float32
    choice = choose_precision(config.train, model, lambda: make_model(config, data), data)
    if choice.policy != "float32":
        with precision(choice.policy):
            model = make_model(config, data)
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from kerascnn.config import TrainConfig
from kerascnn.data.imagedata import ImageData
from kerascnn.data.pipeline import batches
from kerascnn.distribute import precision
from kerascnn.flops import recipe_flops
from kerascnn.training import compile_model

BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of the units oneDNN uses
MIN_SPEEDUP = 1.15  # bfloat16 must beat float32 by this much: the check's timings are a few steps
MAX_PROBABILITY_DIFFERENCE = 0.05  # the two policies' predictions, same weights, one batch
MIN_CHECKED_FLOPS = 1e13  # training FLOPs below which the check is not worth its seconds (~1 min of float32)
TIMED_ROUNDS = 5


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """The policy a run trains in and why; `float32_step_ms` etc. are set when the check ran."""

    policy: str
    reason: str
    float32_step_ms: float | None = None
    bfloat16_step_ms: float | None = None
    max_probability_difference: float | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    def describe(self) -> str:
        """One line for the console."""
        return f"precision: {self.policy} ({self.reason})"


def _cpuinfo_field(name: str, cpuinfo: Path) -> str:
    """The first `name : value` of /proc/cpuinfo ('' where there is none or no /proc)."""
    try:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.split(":", 1)[0].strip() == name), "")
    except OSError:
        return ""


def cpu_bfloat16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The bfloat16 instruction sets this CPU reports (empty where there are none or no /proc)."""
    flags = _cpuinfo_field("flags", cpuinfo).split()
    return [flag for flag in BFLOAT16_CPU_FLAGS if flag in flags]


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name: machines of one kind differ (an AMX Xeon gains far more from bfloat16 than
    an AVX512-BF16-only EPYC, whose bfloat16 peak is twice its float32 one), so benchmarks record it."""
    return _cpuinfo_field("model name", cpuinfo) or "unknown"


def choose_precision(config: TrainConfig, model: keras.Model, build: Callable[[], keras.Model], data: ImageData,
                     default_strategy: bool = True) -> PrecisionChoice:
    """The dtype policy to build and train the network in (see the module docstring).

    Args:
        config: the run's training settings (`precision`, `mixed_precision`, `batch_size`, optimizer).
        model: the network built in float32: its FLOPs decide whether the check runs, and its weights
            are what both policies' copies start from; it is not trained.
        build: builds another copy of the network under the current dtype policy (for the check).
        data: the run's data; one training batch is used for the check, and its size and
            `config.epochs` give the run's training FLOPs (`kerascnn.flops`): short runs skip it.
        default_strategy: False under a tf.distribute strategy, which `auto` leaves in float32.
    """
    if config.mixed_precision:
        return PrecisionChoice("mixed_float16", "train.mixed_precision = true")
    if config.precision != "auto":
        return PrecisionChoice(config.precision, "train.precision")
    if not default_strategy or tf.config.list_physical_devices("GPU"):
        return PrecisionChoice("float32", "auto: bfloat16 is only checked for single-device CPU training")
    units = cpu_bfloat16_units()
    if not units:
        return PrecisionChoice("float32", "auto: this CPU has no bfloat16 units")
    train_flops = recipe_flops(model, data.counts["train"], config.epochs)
    if train_flops < MIN_CHECKED_FLOPS:
        return PrecisionChoice("float32", f"auto: {train_flops:.1e} training FLOPs, too short a run to check "
                                          f"bfloat16 (from {MIN_CHECKED_FLOPS:.0e})")
    copies = {}
    for policy in ("float32", "mixed_bfloat16"):
        with precision(policy):
            copies[policy] = build()
        copies[policy].set_weights(model.get_weights())
    return measure_bfloat16(config, copies["float32"], copies["mixed_bfloat16"], data)


def measure_bfloat16(config: TrainConfig, reference: keras.Model, candidate: keras.Model,
                     data: ImageData) -> PrecisionChoice:
    """Compare the predictions of two copies of a network with the same weights, float32 `reference` and
    mixed_bfloat16 `candidate`, on one training batch and time training steps of each, alternating;
    mixed_bfloat16 if they agree and it is at least `MIN_SPEEDUP` times faster. Both copies are trained."""
    # take(1) lets the pipeline finish: a half-read iterator over the whole training set keeps tf.data's
    # prefetch and autotuning alive, and the run's own training after the check then ran 2-4x slower.
    images, labels = next(iter(batches(data.train.take(config.batch_size), config.batch_size,
                                       None if data.multi_label else data.num_classes, cache=False)))
    models = {"float32": reference, "mixed_bfloat16": candidate}
    predictions = [np.asarray(model(images, training=False), dtype="float32") for model in models.values()]
    difference = float(np.max(np.abs(predictions[0] - predictions[1])))
    steps = {}
    for policy, model in models.items():
        compile_model(model, config, steps_per_epoch=100, multi_label=data.multi_label)
        model.train_on_batch(images, labels)  # traces the step: not timed
        steps[policy] = []
    for round_ in range(TIMED_ROUNDS):
        for policy in (models if round_ % 2 == 0 else list(models)[::-1]):
            start = time.perf_counter()
            models[policy].train_on_batch(images, labels)
            steps[policy].append(time.perf_counter() - start)
    float32_ms, bfloat16_ms = (1000 * statistics.median(steps[policy]) for policy in models)
    figures = dict(float32_step_ms=round(float32_ms, 1), bfloat16_step_ms=round(bfloat16_ms, 1),
                   max_probability_difference=round(difference, 4))
    timing = f"a training step took {bfloat16_ms:.0f} ms in bfloat16, {float32_ms:.0f} ms in float32"
    if difference > MAX_PROBABILITY_DIFFERENCE:
        return PrecisionChoice("float32", f"auto: bfloat16 predictions differ by up to {difference:.3f}", **figures)
    if float32_ms < MIN_SPEEDUP * bfloat16_ms:
        return PrecisionChoice("float32", f"auto: {timing}; not {MIN_SPEEDUP}x faster", **figures)
    return PrecisionChoice("mixed_bfloat16", f"auto: {timing}; predictions within {difference:.3f}", **figures)
