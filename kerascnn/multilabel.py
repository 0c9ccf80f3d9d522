"""Multi-label decisions and metrics: per-class thresholds chosen on validation scores, test metrics at them.

A multi-label model gives each class an independent sigmoid score. `choose_thresholds` picks one
decision threshold a class on the validation split (`evaluate.thresholds`): the one with the best F1
(`max_f1`), the lowest reaching a target precision (`precision`, the most recall at that precision),
or the highest reaching a target recall (`recall`, the most precision at that recall), as MediaPipe
Model Maker's multi-label options do. `multilabel_metrics` scores the test split at those thresholds
with scikit-learn: mean average precision, per-class ROC AUC and average precision, precision, recall
and F1, subset accuracy (every label right) and Hamming loss (the fraction of wrong label decisions).

Example:
    thresholds = choose_thresholds(val_scores, val_targets, names)
    multilabel_metrics(test_scores, test_targets, thresholds, names)["mean_average_precision"]
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, hamming_loss, log_loss,
                             precision_recall_curve, precision_recall_fscore_support, roc_auc_score)

DEFAULT_THRESHOLD = 0.5  # for a class the validation split never (or always) shows


def _target_of(target: float | Mapping[str, float], name: str) -> float:
    return float(target.get(name, 0.9)) if isinstance(target, Mapping) else float(target)


def choose_threshold(scores: np.ndarray, truth: np.ndarray, rule: str = "max_f1", target: float = 0.9) -> float:
    """One class's threshold (call it when score >= threshold) read off scikit-learn's PR curve.

    The rule picks a validation score; the threshold is set halfway down to the next lower validation
    score, which makes the same decisions on the validation split with a margin on both sides (a
    threshold at a saturated score such as 0.9996 would be out of reach of a quantized artifact).
    """
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth).astype(bool)
    if truth.all() or not truth.any():
        return DEFAULT_THRESHOLD
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    if rule == "max_f1":
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        chosen = thresholds[int(np.argmax(f1))]  # the lowest threshold of the best F1
    elif rule == "precision":
        reached = np.flatnonzero(precision >= target)
        chosen = thresholds[reached[0]] if len(reached) else thresholds[-1]
    else:
        reached = np.flatnonzero(recall >= target)  # recall falls as the threshold rises
        chosen = thresholds[reached[-1]] if len(reached) else thresholds[0]
    below = scores[scores < chosen]
    return float((chosen + below.max()) / 2 if len(below) else chosen)


def choose_thresholds(scores: np.ndarray, targets: np.ndarray, class_names: list[str], rule: str = "max_f1",
                      target: float | Mapping[str, float] = 0.9) -> list[float]:
    """One threshold a class from validation `scores` (N x classes) and multi-hot `targets`.

    Args:
        rule: max_f1 | precision | recall (see the module docstring).
        target: the precision or recall aimed at: one number or {class name: target}.
    """
    return [choose_threshold(scores[:, k], targets[:, k], rule, _target_of(target, name))
            for k, name in enumerate(class_names)]


def decide(scores: np.ndarray, thresholds) -> np.ndarray:
    """Multi-hot decisions: score >= the class's threshold."""
    return np.asarray(scores) >= np.asarray(thresholds, np.float32)[None, :]


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, thresholds, class_names: list[str]) -> dict:
    """Test metrics of a multi-label model at per-class thresholds, JSON-ready.

    `accuracy` is the subset accuracy (all of an image's labels right), so that a multi-label run
    reports an accuracy like any other.
    """
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets).astype(int)
    called = decide(scores, thresholds).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(targets, called, zero_division=0)
    has_both = [0 < targets[:, k].sum() < len(targets) for k in range(len(class_names))]
    auc = [float(roc_auc_score(targets[:, k], scores[:, k])) if ok else None for k, ok in enumerate(has_both)]
    ap = [float(average_precision_score(targets[:, k], scores[:, k])) if targets[:, k].any() else None
          for k in range(len(class_names))]
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    present_ap = [a for a in ap if a is not None]
    return {
        "n": int(len(targets)),
        "multi_label": True,
        "class_names": list(class_names),
        "accuracy": float(accuracy_score(targets, called)),
        "subset_accuracy": float(accuracy_score(targets, called)),
        "hamming_loss": float(hamming_loss(targets, called)),
        "loss": float(np.mean([log_loss(targets[:, k], clipped[:, k], labels=[0, 1])
                               for k in range(len(class_names))])),
        "mean_average_precision": float(np.mean(present_ap)) if present_ap else None,
        "micro_f1": float(f1_score(targets, called, average="micro", zero_division=0)),
        "macro_f1": float(np.mean(f1)),
        "thresholds": {name: float(t) for name, t in zip(class_names, thresholds)},
        "per_class": {name: {"threshold": float(thresholds[k]), "precision": float(precision[k]),
                             "recall": float(recall[k]), "f1": float(f1[k]), "support": int(support[k]),
                             "roc_auc": auc[k], "average_precision": ap[k]}
                      for k, name in enumerate(class_names)},
    }
