"""Sanity checks after training: warnings for a model that looks trained but is not usable.

Three symptoms, each with its likely cause and fix in the message:
    chance      test accuracy within a margin of what always guessing the most frequent class gets
                (two binomial standard errors on the test split, at least 2 points);
    one class   (nearly) every test image predicted as the same class while the labels are mixed;
    gap         final training accuracy far above validation accuracy.

They are warnings, not errors: the run's files are written; the CLI prints them, the manifest
stores them under `warnings` and the report shows them.

Example:
    for warning in sanity_warnings(probabilities, labels, class_names, train_accuracy=0.69, val_accuracy=0.1):
        print("WARNING:", warning)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

MIN_CHANCE_MARGIN = 0.02
ONE_CLASS_SHARE = 0.95   # predictions of one class above this share of the test images ...
GAP = 0.25               # ... training accuracy above validation accuracy by more than this
TRAINED = 0.5            # a training accuracy at which the model has clearly learned something


def chance_level(labels: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent test class (1/k for balanced classes)."""
    return float(np.bincount(labels).max() / len(labels))


def chance_margin(chance: float, n: int) -> float:
    """Two standard errors of a binomial accuracy at `chance` on `n` images, at least 2 points."""
    return max(MIN_CHANCE_MARGIN, 2 * math.sqrt(chance * (1 - chance) / n))


def last_value(history: pd.DataFrame | None, column: str) -> float | None:
    """The last recorded value of a history column (e.g. the final epoch's `accuracy`), or None."""
    if history is None or column not in history or history[column].dropna().empty:
        return None
    return float(history[column].dropna().iloc[-1])


def sanity_warnings(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str],
                    train_accuracy: float | None = None, val_accuracy: float | None = None) -> list[str]:
    """Warnings about a trained model's test predictions and final accuracies (empty: all looks sane).

    Args:
        probabilities: (n, k) test-split class probabilities of the trained model.
        labels: (n,) true class indices.
        class_names: the k class names.
        train_accuracy: the final epoch's training accuracy (None skips what needs it).
        val_accuracy: the trained model's validation accuracy (None skips the gap check).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or len(class_names) < 2:
        return []
    predicted = np.asarray(probabilities).argmax(axis=1)
    accuracy = float((predicted == labels).mean())
    chance = chance_level(labels)
    margin = chance_margin(chance, len(labels))
    # Learning in training mode but not in inference mode points at what differs between the two:
    # BatchNormalization's moving statistics (and dropout).
    modes_differ = train_accuracy is not None and train_accuracy >= TRAINED and train_accuracy - accuracy > GAP
    warnings = []
    if modes_differ:
        cause = (f"training accuracy reached {train_accuracy:.3f}, so the model learns in training mode but not "
                 f"in inference mode: BatchNormalization moving statistics that too few steps left near their "
                 f"initial values are the usual cause; train for more epochs or use pre-trained weights "
                 f"(--weights imagenet or PATH)")
    else:
        cause = ("the model did not learn: train for more epochs (train.epochs), try another "
                 "train.learning_rate, and check the labels (`kerascnn inspect`); a backbone with frozen "
                 "random weights cannot learn (use --transfer from_scratch)")
    if accuracy <= chance + margin:
        warnings.append(f"test accuracy {accuracy:.3f} is within the margin of chance ({chance:.3f} +/- "
                        f"{margin:.3f} on {len(labels)} test images): {cause}")
    counts = np.bincount(predicted, minlength=len(class_names))
    top = int(counts.argmax())
    share, true_share = counts[top] / len(labels), float((labels == top).mean())
    if share >= ONE_CLASS_SHARE and true_share < ONE_CLASS_SHARE:
        warnings.append(f"the model predicts {class_names[top]!r} for {share:.1%} of test images, which are "
                        f"{true_share:.1%} {class_names[top]!r}: it ignores its input; "
                        + (cause if accuracy <= chance + margin else
                           "balance the classes (data.max_train_examples, more images of the others) and train "
                           "longer"))
    if train_accuracy is not None and val_accuracy is not None and train_accuracy - val_accuracy > GAP:
        fix = ("the moving statistics of BatchNormalization or dropout make inference differ from training; train "
               "for more steps" if val_accuracy <= chance + margin else
               "the model memorises its training images; add augmentation (augment.*), more images or "
               "regularisation, or stop earlier (train.patience)")
        warnings.append(f"final training accuracy {train_accuracy:.3f} is far above validation accuracy "
                        f"{val_accuracy:.3f}: {fix}")
    return warnings
