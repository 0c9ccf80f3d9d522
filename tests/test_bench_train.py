"""`kerascnn bench train` on tiny sizes: it runs end to end and reports what docs/benchmarks.md quotes."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from kerascnn.bench.train import (NUM_CLASSES, folder_memory_mb, generated_images, mb_per_10k_images, speed,
                                  write_folder)
from kerascnn.cli import main
from kerascnn.data.folder import scan_folder


def test_generated_folder_has_every_class(tmp_path):
    images, labels = generated_images(50)
    assert images.shape == (50, 28, 28, 1) and images.dtype == np.uint8
    scan = scan_folder(write_folder(tmp_path / "folder", 50))
    assert len(scan.paths) == 50 and len(scan.class_names) == NUM_CLASSES


def test_bench_train_reports_throughput_and_memory_above_the_baseline(capsys, tmp_path):
    code = main(["bench", "train", "--json", "--preset", "digits", "--images", "320", "--repeats", "1",
                 "--folder-sizes", "200", "400"])
    results = json.loads(capsys.readouterr().out)
    assert code == 0
    for loop in ("reference", "kerascnn", "fit"):
        assert results[f"{loop}_images_per_s"] > 0 and 0 < results[f"{loop}_cores_busy"] <= 2.5
    assert results["loop_ratio"] == pytest.approx(results["kerascnn_images_per_s"] / results["fit_images_per_s"],
                                                  abs=2e-3)
    assert results["speedup_vs_float32"] == pytest.approx(
        results["kerascnn_images_per_s"] / results["reference_images_per_s"], abs=2e-3)
    # FLOPs: the layer count agrees with TensorFlow's profiler; the run's total is per image x images x epochs
    assert results["flops_per_image"] == pytest.approx(results["profiler_flops_per_image"], rel=0.05)
    assert results["train_flops"] == results["flops_per_image"] * results["train_images"] * results["epochs"]
    assert results["achieved_gflops"] == pytest.approx(
        results["flops_per_image"] * results["kerascnn_images_per_s"] / 1e9, abs=0.1)
    assert results["utilisation"] == pytest.approx(results["achieved_gflops"] / results["conv_gflops"], rel=0.02, abs=2e-3)
    assert results["cpu"] and isinstance(results["bfloat16_units"], list)  # what explains the bfloat16 gain
    assert results["precision"] == "float32"  # a digits run is too short for the bfloat16 check (or the CPU lacks it)
    assert (results["small_folder_images"], results["large_folder_images"]) == (200, 400)
    assert results["cache"] is False and results["baseline_peak_mb"] > 0
    assert results["large_folder_mb_per_10k_images"] == pytest.approx(
        mb_per_10k_images(results["large_folder_peak_mb"], results["baseline_peak_mb"], 400), abs=0.01)
    # The measure tells streaming from caching: at the end of the epoch a streamed folder keeps (next to)
    # nothing per image, the same folder cached keeps its decoded images (28x28, 784 bytes each as uint8,
    # 3,136 as float32). Peak memory cannot tell them apart at this size (2026-12-01: 6.7 MB per 10,000
    # images streamed vs 7.1 cached, the folder scan's transient buffers dominating), so this reads the
    # resident memory after the epoch, with a 64-image shuffle buffer.
    folder = write_folder(tmp_path / "folder", 4000)
    streamed, cached = (mb_per_10k_images(folder_memory_mb(folder, 128, cache, shuffle_buffer=64)[1],
                                          results["baseline_resident_mb"], 4000) for cache in (False, True))
    assert streamed + 5 < cached, (streamed, cached)


def test_bench_train_times_full_size_epochs_and_counts_a_progressive_recipe_at_its_sizes(tmp_path):
    """A progressive-resizing recipe: the timed loops all train the full-size network (kerascnn's loop would
    otherwise shrink its first epoch and the reference not), while `train_flops` counts the smaller epoch at
    its share of the pixels, as the run's manifest does."""
    config = tmp_path / "progressive.toml"
    config.write_text('[data]\ndataset = "digits"\n[model]\nname = "resnet_small"\n'
                      'options = { stem = 8, widths = [8], blocks = [1], progressive_resizing = [[4, 1]] }\n'
                      '[train]\nepochs = 3\nbatch_size = 32\n')
    results = speed(argparse.Namespace(config=str(config), preset=None, images=320, repeats=1))
    full_size_epochs = (4 * 4) / (8 * 8) + 2
    assert results["train_flops"] == round(results["flops_per_image"] * results["train_images"] * full_size_epochs)
    assert results["train_seconds_at_kerascnn_speed"] == pytest.approx(
        results["train_images"] * full_size_epochs / results["kerascnn_images_per_s"], abs=0.1)
    assert results["kerascnn_images_per_s"] > 0 and results["reference_images_per_s"] > 0
