"""FLOP accounting: the layer count checked by hand and against TensorFlow's profiler; the manifest's fields."""

import tomllib
from importlib import resources

import pytest

from kerascnn.flops import (describe, forward_flops, machine_gflops, profiler_forward_flops, training_flops_per_image,
                            training_record)


def preset_network():
    from kerascnn.models.registry import build_model

    options = tomllib.loads(resources.files("kerascnn.presets").joinpath("fashion_mnist.toml").read_text())
    return build_model("resnet_small", (28, 28, 1), 10, **options["model"]["options"])


def test_one_conv_by_hand():
    import keras

    model = keras.Sequential([keras.Input((14, 14, 48)), keras.layers.Conv2D(48, 3, padding="same")])
    assert forward_flops(model) == 2 * 14 * 14 * 9 * 48 * 48  # bias adds are not counted
    assert training_flops_per_image(model) == 3 * forward_flops(model)
    # the profiler adds the bias adds (one FLOP per output element) and nothing else
    assert profiler_forward_flops(model) == 2 * 14 * 14 * 9 * 48 * 48 + 14 * 14 * 48


def test_other_layer_rules_by_hand():
    import keras

    strided = keras.Sequential([keras.Input((9, 9, 4)), keras.layers.Conv2D(8, 3, strides=2, padding="valid")])
    assert forward_flops(strided) == 2 * 4 * 4 * 9 * 4 * 8
    separable = keras.Sequential([keras.Input((10, 10, 4)), keras.layers.SeparableConv2D(8, 3, padding="same")])
    assert forward_flops(separable) == 2 * 100 * (9 * 4 + 4 * 8)
    depthwise = keras.Sequential([keras.Input((10, 10, 4)), keras.layers.DepthwiseConv2D(3, depth_multiplier=2)])
    assert forward_flops(depthwise) == 2 * 8 * 8 * 9 * 4 * 2
    transpose = keras.Sequential([keras.Input((5, 5, 4)), keras.layers.Conv2DTranspose(8, 3, strides=2)])
    assert forward_flops(transpose) == 2 * 5 * 5 * 9 * 4 * 8  # every input position through the whole kernel
    grouped = keras.Sequential([keras.Input((6, 6, 8)), keras.layers.Conv2D(8, 3, groups=4, padding="same")])
    assert forward_flops(grouped) == 2 * 36 * 9 * 2 * 8
    dense = keras.Sequential([keras.Input((3, 5)), keras.layers.Dense(7)])  # per position of a rank-3 input
    assert forward_flops(dense) == 2 * 3 * 5 * 7
    # (the profiler counts no FLOPs for a grouped Conv2D op: only its bias adds)
    for model in (strided, separable, depthwise, dense):  # bias adds make the profiler's more
        assert 1.0 <= profiler_forward_flops(model) / forward_flops(model) < 1.15, model.layers[0].name
    # TF's rule for the transposed conv's op (Conv2DBackpropInput) works from its 11x11 output, not the
    # multiply-adds the layer does: 17,424 + 968 bias adds against 14,400
    assert profiler_forward_flops(transpose) == 2 * 11 * 11 * 9 * 8 + 11 * 11 * 8
    nested = keras.Sequential([keras.Input((14, 14, 48)), keras.Sequential([keras.layers.Conv2D(48, 3)]),
                               keras.layers.Flatten(), keras.layers.Dense(10)])
    assert forward_flops(nested) == 2 * 12 * 12 * 9 * 48 * 48 + 2 * 12 * 12 * 48 * 10
    with pytest.raises(ValueError, match="not built"):
        forward_flops(keras.Sequential([keras.layers.Dense(3)]))


def test_preset_network_counts_41_mflops_and_the_profiler_agrees():
    model = preset_network()
    # by hand: stem 28*28*9*1*24 multiply-adds, each stage a widening 3x3 conv and two 3x3 convs at the stage's
    # width (14x14x48, then 7x7x96), and the 96 -> 10 classifier
    stem = 28 * 28 * 9 * 1 * 24
    stages = 14 * 14 * 9 * (24 * 48 + 2 * 48 * 48) + 7 * 7 * 9 * (48 * 96 + 2 * 96 * 96)
    assert forward_flops(model) == 2 * (stem + stages + 96 * 10) == 40_983_168
    # the profiler adds BatchNormalization, rescaling, residual adds, the bias add: 41.16 M at inference (the
    # test-time flip's second image is not counted), 41.40 M in training (BatchNormalization's batch moments)
    inference, training = profiler_forward_flops(model), profiler_forward_flops(model, training=True)
    assert 1.0 < inference / forward_flops(model) < 1.01
    assert 1.0 < training / forward_flops(model) < 1.02


def test_the_test_time_flip_is_counted_once():
    from kerascnn.models.registry import build_model

    plain = build_model("resnet_small", (12, 12, 1), 3, stem=4, widths=[8], blocks=[1])
    flipped = build_model("resnet_small", (12, 12, 1), 3, stem=4, widths=[8], blocks=[1], random_flip=True,
                          random_shift=0.1, test_time_flip=True)
    assert forward_flops(flipped) == forward_flops(plain)
    # within BatchNormalization's per-channel arithmetic, which does not grow with the flip's second image
    assert profiler_forward_flops(flipped) == pytest.approx(profiler_forward_flops(plain), rel=1e-3)


def test_training_record_counts_epochs_run_and_the_rate():
    import keras

    model = keras.Sequential([keras.Input((14, 14, 48)), keras.layers.Conv2D(48, 3, padding="same")])
    per_image = 3 * 2 * 14 * 14 * 9 * 48 * 48
    machine = {"gemm_gflops": 344.0, "conv_gflops": 316.0}
    record = training_record(model, images_per_epoch=1000, epochs_run=4, train_seconds=2.0, machine=machine)
    assert record["flops_per_image"] == per_image and record["train_flops"] == per_image * 1000 * 4
    assert record["achieved_gflops"] == pytest.approx(per_image * 4000 / 2.0 / 1e9, abs=0.05)
    assert record["utilisation"] == pytest.approx(record["achieved_gflops"] / 316.0, abs=1e-3)
    assert "flops_note" not in record
    line = describe({**record, "train_seconds": 2.0})
    assert line.startswith(f"training: {per_image * 4000:.1e} FLOPs in 2 s = ")
    assert "of the machine's 316 float32 conv GFLOPS" in line
    resumed = training_record(model, 1000, 4, 2.0, machine, resumed=True)
    assert resumed["train_flops"] == record["train_flops"] and "achieved_gflops" not in resumed
    assert "resumed" in resumed["flops_note"]
    model.trainable = False
    assert "frozen" in training_record(model, 1000, 4, 2.0, machine)["flops_note"]


def test_machine_gflops_measures_all_four_rates_quickly():
    import time

    start = time.perf_counter()
    rates = machine_gflops(seconds=0.1)
    assert set(rates) == {"gemm_gflops", "conv_gflops", "gemm_bf16_gflops", "conv_bf16_gflops"}
    assert all(rate > 0 for rate in rates.values())
    assert time.perf_counter() - start < 30  # a warm-up and one run each, even on a busy 2-core machine
