"""FLOPs: what a model costs per image, and what the machine delivers, so training time splits into the two.

Seconds on a shared machine move between days; FLOPs to train a recipe and the fraction of the machine's
rate a training step reaches do not. `forward_flops` counts one image's forward pass from the model's
layers, `profiler_forward_flops` measures the same with TensorFlow's profiler as a cross-check,
`training_flops_per_image` applies the 3x convention, and `machine_gflops` times the machine's float32
and bfloat16 GEMM and convolution at a run's start. `training_record` turns them into the manifest's
`flops_per_image`, `train_flops`, `gemm_gflops`, `conv_gflops`, `achieved_gflops` and `utilisation`.

Convention: one multiply-add is 2 FLOPs; only the weight multiply-adds of convolutions and Dense layers
are counted (bias adds are not), so one 3x3 Conv2D from 48 to 48 channels on a 14x14 output costs
exactly 2*14*14*9*48*48 FLOPs. Not counted: BatchNormalization, activations, pooling, rescaling,
residual adds and other elementwise ops (memory-bound, about 1 % of the `fashion_mnist` preset network
by the profiler), the augmentation layers, and layers without a rule below (e.g. attention, RNNs).
"""

from __future__ import annotations

import functools
import math
import time

import keras
import numpy as np
import tensorflow as tf

from kerascnn.models.resnet import progressive_resizes

BACKWARD_FACTOR = 2  # backward ~ 2x forward: gradients w.r.t. activations and w.r.t. weights
GEMM_SIZE = 2048  # machine_gflops: a 2048x2048 @ 2048x2048 matmul
CONV_SHAPE = dict(batch=128, height=14, width=14, channels=48, filters=48, kernel=3)  # the preset's stage 0


def _positions(shape, data_format: str) -> int:
    """Spatial positions of one image in a built (batch, ..., channels) or (batch, channels, ...) shape."""
    spatial = shape[1:-1] if data_format == "channels_last" else shape[2:]
    return math.prod(int(n) for n in spatial)


def _kernel_size(weight) -> int:
    return math.prod(int(n) for n in weight.shape)


def _layer_flops(layer) -> int:
    """Forward FLOPs of one image through one leaf layer (0 for layers without a counting rule)."""
    rules = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.Conv1DTranspose,
             keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose, keras.layers.DepthwiseConv1D,
             keras.layers.DepthwiseConv2D, keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
             keras.layers.Dense)
    if not isinstance(layer, rules):
        return 0
    if not layer.built:
        raise ValueError(f"layer {layer.name!r} is not built: build the model (call it once) before counting FLOPs")
    input_shape = layer.get_build_config()["input_shape"]
    if isinstance(layer, keras.layers.Dense):  # applied at every position of a rank > 2 input
        return 2 * math.prod(int(n) for n in input_shape[1:-1]) * _kernel_size(layer.kernel)
    if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)):
        # every input position scatters through the whole kernel (k... x filters x in_channels)
        return 2 * _positions(input_shape, layer.data_format) * _kernel_size(layer.kernel)
    positions = _positions(layer.compute_output_shape(input_shape), layer.data_format)
    if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        return 2 * positions * (_kernel_size(layer.depthwise_kernel) + _kernel_size(layer.pointwise_kernel))
    # Conv*D: kernel = k... x in_channels/groups x filters; DepthwiseConv*D: k... x in_channels x multiplier
    return 2 * positions * _kernel_size(layer.kernel)


def _leaf_layers(layer):
    """The layers a model runs, nested models and wrappers (e.g. kerascnn's TrainingOnly) opened up."""
    if isinstance(layer, keras.Model):
        for inner in layer.layers:
            yield from _leaf_layers(inner)
    elif isinstance(layer, keras.layers.Wrapper):
        yield from _leaf_layers(layer.layer)
    else:
        yield layer


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one image's training-time forward pass, counted from the built model's layers.

    Conv1D/2D/3D: 2 x output positions x kernel area x in-channels/groups x filters; DepthwiseConv:
    2 x output positions x kernel area x in-channels x depth multiplier; SeparableConv: its depthwise
    plus its 1x1 pointwise part; ConvTranspose: 2 x *input* positions x kernel area x in x filters;
    Dense: 2 x inputs x units at each position. Bias adds and everything else are not counted (see the
    module docstring). Nested models and `keras.layers.Wrapper`s (kerascnn's `TrainingOnly`) are opened.
    The shapes are those the layers were built with, per image: the test-time flip of `resnet_small`
    (which runs every image twice at inference, not in training) does not change the count. A layer
    shared by several calls is counted once, and a `TimeDistributed` layer for one time step.

    Example:
        forward_flops(build_model("resnet_small", (28, 28, 1), 10))  # 72,707,584: 2 x its multiply-adds
    """
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built: call it on an input before counting FLOPs")
    return sum(_layer_flops(layer) for layer in _leaf_layers(model))


def training_flops_per_image(model: keras.Model) -> int:
    """Training FLOPs per image: 3 x `forward_flops` (forward + a backward of about twice the forward:
    the convention of Kaplan et al. 2020, "Scaling laws for neural language models", C = 6N per token).

    An overestimate where layers are frozen (a feature-extraction backbone needs no weight gradients,
    and nothing below the lowest trainable layer needs a gradient at all).
    """
    return (1 + BACKWARD_FACTOR) * forward_flops(model)


def profiler_forward_flops(model: keras.Model, training: bool = False) -> int:
    """One image's forward FLOPs measured by TensorFlow's profiler (`tf.compat.v1.profiler`,
    `ProfileOptionBuilder.float_operation()`) on the graph of a `tf.function` of the model at batch 1.

    `training=False` (default) profiles the inference graph, divided by the number of images it computes
    on, so the test-time flip (2 images for each input image) counts once, like training.
    `training=True` profiles the training-time forward pass (BatchNormalization's batch moments, the
    random augmentation ops). Beyond `forward_flops` the profiler counts bias adds,
    BatchNormalization's multiply and add, rescaling, residual adds and reductions (TF's per-op
    statistics in `tensorflow/python/ops/*_ops.py`: `@ops.RegisterStatistics(..., "flops")`); it counts
    no FLOPs for ops without such a registration (ReLU, max-pooling, softmax). Measured: +0.4 % on the
    `fashion_mnist` preset network, +1.1 % on the default `cnn` (docs/flops.md). Where it disagrees:
    it counts nothing for a grouped Conv2D's convolution, and a transposed convolution by its output
    size rather than its multiply-adds. For single-input models.
    """
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built: call it on an input before counting FLOPs")
    if getattr(model, "inputs", None):  # functional and Sequential models
        spec = tf.TensorSpec((1, *model.inputs[0].shape[1:]), model.inputs[0].dtype)
    else:  # subclassed models know the shape they were built with
        spec = tf.TensorSpec((1, *model.get_build_config()["input_shape"][1:]), tf.float32)
    graph = tf.function(lambda images: model(images, training=training)).get_concrete_function(spec).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    profile = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    return int(round(profile.total_float_ops / _images_computed(graph)))


def _images_computed(graph) -> int:
    """How many images a batch-1 graph computes on: 2 under the test-time flip, which appends the mirrored
    batch; the largest leading dimension among image tensors (rank >= 4) computed from the input."""
    largest, seen, stack = 1, set(), [graph.inputs[0]]
    while stack:  # the tensors downstream of the images placeholder (not the variables' reads)
        tensor = stack.pop()
        if tensor.shape.rank is not None and tensor.shape.rank >= 4 and tensor.shape[0]:
            largest = max(largest, int(tensor.shape[0]))
        for op in tensor.consumers():
            if op.name not in seen:
                seen.add(op.name)
                stack.extend(op.outputs)
    return largest


def _best_seconds(step, seconds: float) -> float:
    """The fastest of the timed runs of `step` (after one warm-up) that fit in about `seconds`, at least one."""
    step()
    best, spent = math.inf, 0.0
    while best == math.inf or spent < seconds:
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


def machine_gflops(seconds: float = 0.4) -> dict:
    """The machine's GFLOPS for float32 and bfloat16 GEMM and convolution, each timed for about
    `seconds` / 4 (a warm-up, then the best of the runs that fit, at least one), on TensorFlow's default
    device: about 0.3 s in all on a quiet 2-core machine, a few seconds on a loaded one (one float32 GEMM
    is 17 GFLOP).

    GEMM: `tf.linalg.matmul` of two 2048x2048 matrices (2 x 2048**3 FLOPs). Convolution: `tf.nn.conv2d`
    of a 128x14x14x48 NHWC batch with a 3x3x48x48 kernel, stride 1, SAME padding (2 x 128 x 14 x 14 x 9
    x 48 x 48 FLOPs), the `fashion_mnist` preset's stage-0 convolution at its batch size. Inputs are
    uniform random. Returns `gemm_gflops`, `conv_gflops` (float32) and `gemm_bf16_gflops`,
    `conv_bf16_gflops`.
    """
    rng = np.random.default_rng(0)
    c = CONV_SHAPE
    gemm_flops = 2 * GEMM_SIZE ** 3
    conv_flops = 2 * c["batch"] * c["height"] * c["width"] * c["kernel"] ** 2 * c["channels"] * c["filters"]
    matrix = rng.uniform(-1, 1, (GEMM_SIZE, GEMM_SIZE)).astype(np.float32)
    images = rng.uniform(-1, 1, (c["batch"], c["height"], c["width"], c["channels"])).astype(np.float32)
    kernel = rng.uniform(-1, 1, (c["kernel"], c["kernel"], c["channels"], c["filters"])).astype(np.float32)
    result = {}
    for dtype, suffix in ((tf.float32, ""), (tf.bfloat16, "_bf16")):
        a, x, w = (tf.cast(tf.constant(value), dtype) for value in (matrix, images, kernel))
        # Reading back one element waits for the op on asynchronous devices (GPUs).
        gemm = _best_seconds(lambda: tf.linalg.matmul(a, a)[0, 0].numpy(), seconds / 4)
        conv = _best_seconds(lambda: tf.nn.conv2d(x, w, 1, "SAME")[0, 0, 0, 0].numpy(), seconds / 4)
        result[f"gemm{suffix}_gflops"] = round(gemm_flops / gemm / 1e9, 1)
        result[f"conv{suffix}_gflops"] = round(conv_flops / conv / 1e9, 1)
    return result


@functools.cache
def machine_gflops_once() -> dict:
    """`machine_gflops()` measured at the first run's start in this process, then reused: a process
    that trains many times (a test session, a notebook) pays for the measurement once."""
    return machine_gflops()


def recipe_flops(model: keras.Model, images_per_epoch: int, epochs: int) -> int:
    """Training FLOPs of `epochs` epochs of `images_per_epoch` images, an epoch of `progressive_resizing`
    counted at its share of the full-size pixels."""
    resizes = progressive_resizes(model)
    full_size_epochs = sum(math.prod(layer.pixel_fraction(epoch) for layer in resizes) for epoch in range(epochs))
    return round(training_flops_per_image(model) * images_per_epoch * full_size_epochs)


def training_record(model: keras.Model, images_per_epoch: int, epochs_run: int, train_seconds: float,
                    machine: dict | None, resumed: bool = False) -> dict:
    """The manifest's FLOP fields for a run: `flops_per_image` (training FLOPs, 3 x forward),
    `train_flops` (x training images x epochs run: early stopping counted, validation passes not; an
    epoch of `progressive_resizing` at its share of the pixels), the
    machine's float32 `gemm_gflops` and `conv_gflops` measured at the run's start, `achieved_gflops`
    (train_flops / train_seconds) and `utilisation` (achieved / conv_gflops). `flops_note` says where
    the count is off: a resumed run's `train_seconds` covers only the epochs after the resume (its rate
    is left out), and frozen layers make 3 x forward an overestimate.
    """
    record = {"flops_per_image": training_flops_per_image(model),
              "train_flops": recipe_flops(model, images_per_epoch, epochs_run)}
    if machine:
        record.update(gemm_gflops=machine["gemm_gflops"], conv_gflops=machine["conv_gflops"])
    notes = []
    if resumed or train_seconds <= 0:
        notes.append("resumed run: train_seconds covers only the epochs after the resume, so achieved_gflops "
                     "and utilisation are not given")
    else:
        achieved = record["train_flops"] / train_seconds / 1e9
        record["achieved_gflops"] = round(achieved, 1)
        if machine:
            record["utilisation"] = round(achieved / machine["conv_gflops"], 3)
    if any(not layer.trainable and _layer_flops(layer) for layer in _leaf_layers(model)):
        notes.append("frozen layers: 3 x forward overstates their training cost (no weight gradients)")
    if notes:
        record["flops_note"] = "; ".join(notes)
    return record


def describe(manifest: dict) -> str:
    """One line for the CLI from a run's manifest, e.g. `training: 7.0e+13 FLOPs in 412 s = 170 GFLOPS
    (0.54 of the machine's 316 float32 conv GFLOPS)`."""
    line = f"training: {manifest['train_flops']:.1e} FLOPs in {manifest['train_seconds']:.0f} s"
    if "achieved_gflops" in manifest:
        achieved = manifest["achieved_gflops"]
        line += f" = {achieved:.0f} GFLOPS" if achieved >= 10 else f" = {achieved:.2g} GFLOPS"
        if "utilisation" in manifest:
            line += (f" ({manifest['utilisation']:.2f} of the machine's {manifest['conv_gflops']:.0f} float32 conv "
                     f"GFLOPS)")
    if "flops_note" in manifest:
        line += f"; {manifest['flops_note']}"
    return line
