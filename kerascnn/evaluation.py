"""Test-set metrics of a trained model, computed with scikit-learn on its predicted probabilities."""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, log_loss

from kerascnn.data.datasets import ImageData


def predict_split(predict_proba: Callable[[np.ndarray], np.ndarray], data: ImageData, split: str = "test",
                  batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of one split, batch by batch, for any predict function."""
    probabilities, labels = [], []
    for images, batch_labels in getattr(data, split).batch(batch_size).as_numpy_iterator():
        probabilities.append(np.asarray(predict_proba(images)))
        labels.append(batch_labels)
    return np.concatenate(probabilities), np.concatenate(labels)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and cross-entropy loss of predicted probabilities against integer labels."""
    classes = np.arange(probabilities.shape[1])
    return {"accuracy": float(accuracy_score(labels, probabilities.argmax(axis=1))),
            "loss": float(log_loss(labels, probabilities, labels=classes))}


def evaluate(model, data: ImageData, batch_size: int = 256) -> dict[str, float]:
    """Accuracy and loss of a Keras model (or a Predictor) on `data.test`.

    Example:
        evaluate(model, data)  # {"accuracy": 0.97, "loss": 0.11}
    """
    predict = model.predict_proba if hasattr(model, "predict_proba") else (
        lambda images: model(images, training=False))
    return classification_metrics(*predict_split(predict, data, "test", batch_size))
