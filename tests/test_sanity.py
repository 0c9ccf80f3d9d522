"""Sanity warnings after training: chance-level accuracy, one class for every image, train far above validation."""

import numpy as np
import pytest

from kerascnn.sanity import chance_margin, sanity_warnings

CLASSES = [str(i) for i in range(10)]


def _one_hot(predicted, k=10):
    return np.eye(k)[predicted]


def test_the_issues_case_warns_about_chance_one_class_and_the_inference_mode():
    """mobilenet_v3_small from scratch, 2 epochs: train 0.69, validation 0.10, every test image 'shirt'."""
    labels = np.repeat(np.arange(10), 40)
    warnings = sanity_warnings(_one_hot(np.full(400, 6)), labels, CLASSES, train_accuracy=0.69, val_accuracy=0.10)
    assert len(warnings) == 3
    assert warnings[0].startswith("test accuracy 0.100 is within the margin of chance (0.100 +/- 0.030 on 400")
    assert "BatchNormalization moving statistics" in warnings[0] and "more epochs" in warnings[0]
    assert "predicts '6' for 100.0% of test images, which are 10.0% '6'" in warnings[1]
    assert "far above validation accuracy 0.100" in warnings[2]


def test_a_model_that_did_not_learn_is_told_to_train_longer():
    labels = np.repeat(np.arange(10), 40)
    predicted = np.random.default_rng(0).integers(0, 10, 400)
    warnings = sanity_warnings(_one_hot(predicted), labels, CLASSES, train_accuracy=0.11, val_accuracy=0.1)
    assert len(warnings) == 1 and "did not learn" in warnings[0] and "train.epochs" in warnings[0]


def test_overfitting_is_named_with_its_fixes():
    labels = np.repeat(np.arange(10), 40)
    predicted = np.where(np.arange(400) % 10 < 6, labels, (labels + 1) % 10)  # 60 % right, every class predicted
    warnings = sanity_warnings(_one_hot(predicted), labels, CLASSES, train_accuracy=0.99, val_accuracy=0.6)
    assert len(warnings) == 1 and "memorises" in warnings[0] and "augment" in warnings[0]


def test_a_sane_model_gets_no_warning():
    labels = np.repeat(np.arange(10), 40)
    predicted = np.where(np.arange(400) % 10 < 9, labels, (labels + 3) % 10)
    assert sanity_warnings(_one_hot(predicted), labels, CLASSES, train_accuracy=0.93, val_accuracy=0.9) == []
    # a majority class that is truly most images is not "one class for everything"
    labels = np.r_[np.zeros(97, int), np.ones(3, int)]
    assert not any("predicts" in w for w in sanity_warnings(_one_hot(np.zeros(100, int), 2), labels, ["a", "b"]))


def test_chance_margin_shrinks_with_the_test_set():
    assert chance_margin(0.1, 400) == pytest.approx(0.03)
    assert chance_margin(0.5, 100) == pytest.approx(0.1)
    assert chance_margin(0.1, 100_000) == 0.02
