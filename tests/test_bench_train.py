"""`kerascnn bench train` on tiny sizes: it runs end to end and reports what docs/benchmarks.md quotes."""

from __future__ import annotations

import json

import numpy as np

from kerascnn.bench.train import NUM_CLASSES, generated_images, write_folder
from kerascnn.cli import main
from kerascnn.data.folder import scan_folder


def test_generated_folder_has_every_class(tmp_path):
    images, labels = generated_images(50)
    assert images.shape == (50, 28, 28, 1) and images.dtype == np.uint8
    scan = scan_folder(write_folder(tmp_path / "folder", 50))
    assert len(scan.paths) == 50 and len(scan.class_names) == NUM_CLASSES


def test_bench_train_reports_throughput_and_memory_ratios(capsys):
    code = main(["bench", "train", "--json", "--images", "600", "--epochs", "1", "--repeats", "1",
                 "--folder-sizes", "100", "300"])
    results = json.loads(capsys.readouterr().out)
    assert code == 0
    assert results["fit_images_per_s"] > 0 and results["kerascnn_images_per_s"] > 0
    assert results["ratio"] == round(results["kerascnn_images_per_s"] / results["fit_images_per_s"], 3)
    assert (results["small_folder_images"], results["large_folder_images"]) == (100, 300)
    assert 0.5 < results["memory_ratio"] < 2.0
