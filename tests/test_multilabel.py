"""Multi-label: sigmoid heads, thresholds chosen on validation, metrics, export parity and predicted label sets."""

import csv
import json

import keras
import numpy as np
import pytest
from PIL import Image

from kerascnn.cli import main
from kerascnn.config import load_config
from kerascnn.errors import ConfigError
from kerascnn.models import build_model
from kerascnn.models.heads import is_multi_label, sigmoid_head
from kerascnn.models.transfer import build_transfer_model
from kerascnn.multilabel import choose_threshold, multilabel_metrics
from kerascnn.predict import load
from kerascnn.runner import run


def test_threshold_rules_read_the_precision_recall_curve():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    truth = np.array([0, 0, 1, 0, 1, 0, 1, 1])
    # The rule picks a score; the threshold sits halfway down to the next lower score.
    assert choose_threshold(scores, truth, "max_f1") == pytest.approx(0.25)  # at 0.3: P 4/6, R 1 -> F1 0.8
    assert choose_threshold(scores, truth, "precision", 1.0) == pytest.approx(0.75)  # 0.8: P 1
    assert choose_threshold(scores, truth, "recall", 0.75) == pytest.approx(0.5)  # 0.6: R 3/4
    assert choose_threshold(scores, np.zeros(8), "max_f1") == 0.5  # a class validation never shows


def test_metrics_at_thresholds():
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    scores = np.array([[0.9, 0.2], [0.8, 0.4], [0.3, 0.7], [0.6, 0.1]])
    metrics = multilabel_metrics(scores, targets, [0.5, 0.5], ["a", "b"])
    assert metrics["subset_accuracy"] == pytest.approx(0.5)  # rows 1 and 3 right
    assert metrics["hamming_loss"] == pytest.approx(2 / 8)
    assert metrics["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert metrics["mean_average_precision"] == pytest.approx(1.0)  # both classes ranked perfectly


def test_sigmoid_head_for_builders_and_transfer_models():
    for model in (build_model("cnn", (8, 8, 1), 3, filters=(4,), dense=8),
                  build_transfer_model("mobilenet_v2", (32, 32, 3), 3, "from_scratch", alpha=0.35)):
        sigmoid_head(model)
        assert is_multi_label(model)
        out = np.asarray(model(np.random.default_rng(0).uniform(0, 255, (2, *model.input_shape[1:])), training=False))
        assert not np.allclose(out.sum(axis=1), 1.0)  # independent probabilities
    with pytest.raises(ConfigError, match="cannot be made multi-label"):
        sigmoid_head(build_model("cnn_subclassed", (8, 8, 1), 3))


def _tagged_images(root, count=90, seed=0):
    """8x8 images: a bright top half means `top`, a green left half `left`; both, one, never neither."""
    rng = np.random.default_rng(seed)
    (root / "im").mkdir(parents=True)
    rows = []
    for i in range(count):
        top, left = [(1, 0), (0, 1), (1, 1)][i % 3]
        pixels = np.full((8, 8, 3), 30, np.uint8)
        if top:
            pixels[:4] = 220
        if left:
            pixels[:, :4, 1] = 220
        pixels = np.clip(pixels + rng.integers(-15, 16, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "im" / f"{i}.png")
        rows.append((f"im/{i}.png", " ".join(t for t, on in (("top", top), ("left", left)) if on)))
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "labels"), *rows])
    return root / "labels.csv"


def test_multi_label_csv_trains_exports_with_parity_and_predicts_label_sets(tmp_path, capsys):
    table = _tagged_images(tmp_path / "data")
    config = load_config(values={"data.dataset": str(table), "data.image_size": [8, 8], "model.name": "mlp",
                                 "model.options": {"hidden": [32]}, "train.epochs": 12, "train.verbose": 0,
                                 "train.learning_rate": 0.01, "train.tensorboard": False, "run.output": str(tmp_path),
                                 "run.name": "tags", "evaluate.tsne_sample": 0,
                                 "export.formats": ["keras", "h5", "saved_model", "tflite", "onnx"],
                                 "export.tflite": ["float32", "int8"]})
    keras.utils.set_random_seed(0)
    result = run(config)
    manifest = result.manifest
    assert manifest["multi_label"] and set(manifest["thresholds"]) == {"left", "top"}
    assert result.test_metrics["subset_accuracy"] >= 0.8 and result.test_metrics["mean_average_precision"] >= 0.95
    exact = [name for name, entry in manifest["artifacts"].items() if entry["parity"]["criterion"] == "exact"]
    assert {"model.keras", "model.h5", "saved_model/1", "model.tflite", "model.onnx"} <= set(exact)
    assert all(entry["parity"]["max_abs_diff"] <= 1e-4 for name, entry in manifest["artifacts"].items()
               if name in exact)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["per_class"]["top"]["average_precision"] is not None and (result.run_dir / "pr.png").is_file()
    both, only_top = tmp_path / "data" / "im" / "2.png", tmp_path / "data" / "im" / "0.png"
    for artifact in ("model.keras", "model.tflite", "saved_model/1", "model.onnx", "model_int8.tflite"):
        predictor = load(result.run_dir / artifact)
        assert predictor.thresholds == pytest.approx([manifest["thresholds"][c] for c in predictor.class_names],
                                                     abs=1e-6)
        found = [sorted(c for c, _ in row) for row in predictor.predict_labels([both, only_top])]
        assert found == [["left", "top"], ["top"]], artifact
    assert main(["predict", str(result.run_dir / "model.keras"), str(both), str(only_top), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [sorted(r["labels"]) for r in rows] == [["left", "top"], ["top"]]
    assert all(p["probability"] >= p["threshold"] for r in rows for p in r["predictions"])
