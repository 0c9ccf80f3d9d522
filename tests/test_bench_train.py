"""`kerascnn bench train` on tiny sizes: it runs end to end and reports what docs/benchmarks.md quotes."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from kerascnn.bench.train import (NUM_CLASSES, folder_memory_mb, generated_images, mb_per_10k_images, speed,
                                  write_folder)
from kerascnn.cli import main
from kerascnn.config import DataConfig
from kerascnn.data.datasets import load_data
from kerascnn.data.folder import scan_folder


def test_generated_folder_has_every_class(tmp_path):
    images, labels = generated_images(50)
    assert images.shape == (50, 28, 28, 1) and images.dtype == np.uint8
    scan = scan_folder(write_folder(tmp_path / "folder", 50))
    assert len(scan.paths) == 50 and len(scan.class_names) == NUM_CLASSES


def test_bench_train_reports_throughput_and_memory_above_the_baseline(capsys, tmp_path):
    code = main(["bench", "train", "--json", "--preset", "digits", "--images", "320", "--repeats", "1",
                 "--folder-sizes", "1100", "2100"])
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
    assert (results["small_folder_images"], results["large_folder_images"]) == (1100, 2100)
    assert results["cache"] is False and results["baseline_peak_mb"] > 0
    assert results["large_folder_mb_per_10k_images"] == pytest.approx(
        mb_per_10k_images(results["large_folder_peak_mb"], results["baseline_peak_mb"], 2100), abs=0.01)
    # Streamed, the epoch keeps next to nothing per image (the file list): 1,000 more images, about 0.5 MB
    # (2026-12-02: 0.44-0.57), where a cache of their 800 training and validation images would be 2.4 MB.
    # (Both folders train and validate on full and partial batches, so their traced steps are alike.)
    assert 0 <= results["large_folder_live_mb"] - results["small_folder_live_mb"] < 1.5
    assert results["kept_mb_per_10k_images"] == pytest.approx(
        (results["large_folder_live_mb"] - results["small_folder_live_mb"]) * 10000 / 1000, abs=0.02)


@pytest.mark.parametrize("sizes, message", [
    (["50", "400"], "--folder-sizes must be above the 100-image baseline folder"),
    (["400", "400"], "--folder-sizes 400 400: the second (LARGE) must be above the first (SMALL)"),
])
def test_impossible_folder_sizes_are_refused_before_anything_runs(capsys, sizes, message):
    assert main(["bench", "train", "--folder-sizes", *sizes]) == 2
    assert message in capsys.readouterr().err


def test_the_memory_measure_sees_a_cache_of_the_decoded_images(tmp_path):
    """Cached, the epoch keeps every training and validation image decoded (28x28 float32, 3,136 bytes);
    streamed, only a 64-image shuffle buffer. The live heap at the end of the epoch shows the difference
    to within a tenth; the resident size after the epoch could not (2026-12-01, on CI beside another
    test process: 146.3 MB per 10,000 images streamed, 145.6 cached)."""
    folder = write_folder(tmp_path / "folder", 4000)
    counts = load_data(DataConfig(dataset=str(folder), image_size=(28, 28))).counts
    streamed, cached = (folder_memory_mb(folder, 128, cache, shuffle_buffer=64)[1] for cache in (False, True))
    cache_mb = (counts["train"] + counts["validation"]) * 28 * 28 * 4 / 2**20
    assert cached - streamed == pytest.approx(cache_mb, rel=0.1), (streamed, cached, cache_mb)


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
