"""Test-set metrics of a trained model, computed with scikit-learn on its predicted probabilities.

`evaluate` gives accuracy and loss; `diagnostics` gives what a clinician-style review needs:
per-class precision, recall (sensitivity), specificity and F1, the confusion matrix, ROC AUC and,
for a positive class, the decision threshold reaching a target sensitivity and Youden's J
threshold. `trace_layers` opens a Keras model up for the report's embedding and Grad-CAM figures.

Example:
    probabilities, labels = predict_split(predictor.predict_proba, data)
    diagnostics(probabilities, labels, data.class_names, target_sensitivity=0.95)["roc_auc"]
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, classification_report,
                             confusion_matrix, log_loss, recall_score, roc_auc_score, roc_curve,
                             top_k_accuracy_score)

from kerascnn.data.imagedata import ImageData
from kerascnn.errors import ConfigError, first_line, suggest
from kerascnn.multilabel import choose_thresholds, multilabel_metrics

TOP_K = (3, 5)
# Grad-CAM reads the last feature map at least this many pixels wide and high, so that a network which
# pools down to 1x1 (the default `cnn` on 8x8 digits) still gets a heatmap with some resolution.
MIN_CAM_SIZE = 4


class NotApplicable(Exception):
    """A diagnostic this model or artifact cannot give; the message becomes a note in the report."""


def predict_split(predict_proba: Callable[[np.ndarray], np.ndarray], data: ImageData, split: str = "test",
                  batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of one split, batch by batch, for any predict function."""
    probabilities, labels = [], []
    for images, batch_labels in getattr(data, split).batch(batch_size).as_numpy_iterator():
        probabilities.append(np.asarray(predict_proba(images)))
        labels.append(batch_labels)
    return np.concatenate(probabilities), np.concatenate(labels)


def split_images(data: ImageData, positions, split: str = "test", batch_size: int = 256) -> np.ndarray:
    """The images at `positions` (in that order) of one split, read in one pass without keeping the rest."""
    positions = [int(p) for p in positions]
    if not positions:
        return np.zeros((0, *data.input_shape), np.float32)
    wanted, found, start = set(positions), {}, 0
    for images, _ in getattr(data, split).batch(batch_size).as_numpy_iterator():
        found.update({i: images[i - start] for i in wanted if start <= i < start + len(images)})
        start += len(images)
        if len(found) == len(wanted):
            break
    return np.stack([found[p] for p in positions])


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and cross-entropy loss of predicted probabilities against integer labels."""
    classes = np.arange(probabilities.shape[1])
    return {"accuracy": float(accuracy_score(labels, probabilities.argmax(axis=1))),
            "loss": float(log_loss(labels, probabilities, labels=classes))}


def evaluate(model, data: ImageData, batch_size: int = 256, thresholds: list[float] | None = None) -> dict:
    """Accuracy and loss of a Keras model (or a Predictor) on `data.test`; for multi-label data, the
    metrics of `kerascnn.multilabel` at `thresholds` (default: chosen for max F1 on the validation split).

    Example:
        evaluate(model, data)  # {"accuracy": 0.97, "loss": 0.11}
    """
    if data.multi_label:
        if thresholds is None:
            thresholds = validation_thresholds(model, data, batch_size=batch_size)
        return multilabel_metrics(*predict_split(predict_function(model), data, "test", batch_size), thresholds,
                                  data.class_names)
    return classification_metrics(*predict_split(predict_function(model), data, "test", batch_size))


def validation_thresholds(model, data: ImageData, rule: str = "max_f1", target=0.9, batch_size: int = 256) -> list:
    """Per-class decision thresholds of a multi-label model, chosen on the validation split."""
    scores, targets = predict_split(predict_function(model), data, "validation", batch_size)
    return choose_thresholds(scores, targets, data.class_names, rule, target)


def predict_function(model) -> Callable[[np.ndarray], np.ndarray]:
    """Raw pixels -> probabilities for a Predictor (`predict_proba`) or a Keras model (inference call)."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba
    return lambda images: np.asarray(model(images, training=False))


def positive_class_index(class_names: list[str], positive_class: str | None) -> int | None:
    """Index of the class whose threshold is reported: the named one, else the second of two, else none."""
    if positive_class is None:
        return 1 if len(class_names) == 2 else None
    if positive_class not in class_names:
        raise ConfigError(f"positive class {positive_class!r} is not a class of this dataset"
                          f"{suggest(positive_class, class_names)}; classes: {', '.join(class_names)}")
    return class_names.index(positive_class)


def per_class_table(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row a class: precision, recall, sensitivity (= recall), specificity, F1, support, one-vs-rest AUC."""
    classes = list(range(len(class_names)))
    predicted = probabilities.argmax(axis=1)
    report = classification_report(labels, predicted, labels=classes, target_names=class_names,
                                   output_dict=True, zero_division=0)
    # scikit-learn has no specificity score: it is the recall of the negatives, one class against the rest.
    specificity = [recall_score(labels != k, predicted != k, zero_division=0) for k in classes]
    table = pd.DataFrame({
        "precision": [report[name]["precision"] for name in class_names],
        "recall": [report[name]["recall"] for name in class_names],
        "specificity": specificity,
        "f1": [report[name]["f1-score"] for name in class_names],
        "support": [int(report[name]["support"]) for name in class_names],
        "roc_auc": one_vs_rest_auc(probabilities, labels),
        "average_precision": one_vs_rest_average_precision(probabilities, labels),
    }, index=pd.Index(class_names, name="class"))
    table.insert(2, "sensitivity", table["recall"])
    return table


def one_vs_rest_auc(probabilities: np.ndarray, labels: np.ndarray) -> list[float | None]:
    """ROC AUC of each class's probability against the rest; None where the test set lacks that class."""
    onehot = np.eye(probabilities.shape[1], dtype=int)[labels]
    return [float(roc_auc_score(onehot[:, k], probabilities[:, k])) if 0 < onehot[:, k].sum() < len(labels)
            else None for k in range(probabilities.shape[1])]


def one_vs_rest_average_precision(probabilities: np.ndarray, labels: np.ndarray) -> list[float | None]:
    """Average precision (area under the precision-recall curve) of each class against the rest; None
    where the test set lacks that class. PR, unlike ROC, shows what a rare class costs in false alarms."""
    onehot = np.eye(probabilities.shape[1], dtype=int)[labels]
    return [float(average_precision_score(onehot[:, k], probabilities[:, k])) if onehot[:, k].any() else None
            for k in range(probabilities.shape[1])]


def roc_auc_summary(probabilities: np.ndarray, labels: np.ndarray, positive: int | None) -> dict:
    """Binary AUC of the positive class, or one-vs-rest macro and micro AUC for multi-class tasks.

    The one-hot (multilabel) form of roc_auc_score equals `multi_class="ovr"` and, unlike it, also
    accepts quantized artifacts whose probabilities do not sum to exactly 1.
    """
    onehot = np.eye(probabilities.shape[1], dtype=int)[labels]
    present = [k for k in range(onehot.shape[1]) if 0 < onehot[:, k].sum() < len(labels)]
    summary: dict = {}
    if probabilities.shape[1] == 2:
        summary["binary"] = float(roc_auc_score(onehot[:, positive], probabilities[:, positive])) if present else None
    else:
        summary["macro_ovr"] = float(roc_auc_score(onehot[:, present], probabilities[:, present], average="macro")) \
            if present else None
        summary["micro_ovr"] = float(roc_auc_score(onehot, probabilities, average="micro")) if present else None
    return summary


def operating_point(is_positive: np.ndarray, called_positive: np.ndarray) -> dict:
    """Sensitivity, specificity and the four counts of one decision rule."""
    tn, fp, fn, tp = confusion_matrix(is_positive, called_positive, labels=[False, True]).ravel()
    return {"sensitivity": float(recall_score(is_positive, called_positive, zero_division=0)),
            "specificity": float(recall_score(~is_positive, ~called_positive, zero_division=0)),
            "tp": int(tp), "fn": int(fn), "fp": int(fp), "tn": int(tn)}


def threshold_analysis(scores: np.ndarray, is_positive: np.ndarray, target_sensitivity: float = 0.95) -> dict:
    """Decision thresholds on a positive-class score, read off scikit-learn's ROC curve.

    `at_target` is the highest threshold whose sensitivity reaches `target_sensitivity` (so the one
    with the best specificity among them); `youden` maximises Youden's J = sensitivity + specificity - 1.
    The rule is "positive when score >= threshold".
    """
    scores, is_positive = np.asarray(scores), np.asarray(is_positive, bool)
    fpr, tpr, thresholds = roc_curve(is_positive, scores, drop_intermediate=False)
    # thresholds[0] is +inf (nothing called positive): it never reaches a target > 0 and has J = 0.
    reached = int(np.flatnonzero(tpr >= target_sensitivity)[0])
    youden = 1 + int(np.argmax(tpr[1:] - fpr[1:]))
    at = {name: {"threshold": float(thresholds[i]), **operating_point(is_positive, scores >= thresholds[i])}
          for name, i in (("at_target", reached), ("youden", youden))}
    at["youden"]["j"] = float(tpr[youden] - fpr[youden])
    return {"target_sensitivity": target_sensitivity, **at}


def diagnostics(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str],
                target_sensitivity: float = 0.95, positive_class: str | None = None) -> dict:
    """Everything metrics.json holds, JSON-ready, from test probabilities and labels.

    Args:
        probabilities: N x classes predicted probabilities.
        labels: N integer labels.
        class_names: label index -> name.
        target_sensitivity: sensitivity the reported threshold must reach (default 0.95).
        positive_class: class name whose thresholds are reported (default: the second class of a
            binary task; none for multi-class).

    Example:
        diagnostics(p, y, ["benign", "malignant"])["threshold"]["at_target"]["specificity"]
    """
    probabilities, labels = np.asarray(probabilities), np.asarray(labels).astype(int)
    classes = list(range(len(class_names)))
    positive = positive_class_index(class_names, positive_class)
    counts = confusion_matrix(labels, probabilities.argmax(axis=1), labels=classes)
    normalized = confusion_matrix(labels, probabilities.argmax(axis=1), labels=classes, normalize="true")
    table = per_class_table(probabilities, labels, class_names)
    metrics = {
        "n": int(len(labels)),
        "class_names": list(class_names),
        **classification_metrics(probabilities, labels),
        "balanced_accuracy": float(balanced_accuracy_score(labels, probabilities.argmax(axis=1))),
        "macro_f1": float(table["f1"].mean()),
        "mean_average_precision": float(table["average_precision"].dropna().mean()),
        "top_k_accuracy": {f"top_{k}": float(top_k_accuracy_score(labels, probabilities, k=k, labels=classes))
                           for k in TOP_K if k < len(classes)},
        "per_class": {name: _json_row(row) for name, row in table.iterrows()},
        "macro_avg": _json_row(table.drop(columns="support").mean(numeric_only=True)),
        "confusion_matrix": {"labels": list(class_names), "counts": counts.tolist(),
                             "normalized": np.nan_to_num(normalized).round(6).tolist()},
        "roc_auc": roc_auc_summary(probabilities, labels, positive),
        "positive_class": None if positive is None else class_names[positive],
        "threshold": None,
    }
    if positive is not None:
        is_positive = labels == positive
        if 0 < is_positive.sum() < len(labels):
            metrics["threshold"] = {"positive_class": class_names[positive],
                                    **threshold_analysis(probabilities[:, positive], is_positive, target_sensitivity),
                                    "argmax": operating_point(is_positive, probabilities.argmax(axis=1) == positive)}
    return metrics


def _json_row(row: pd.Series) -> dict:
    return {key: (None if value is None or pd.isna(value) else int(value) if key == "support" else float(value))
            for key, value in row.items()}


def per_example_loss(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each example (Keras' sparse categorical cross-entropy on probabilities)."""
    import keras

    return np.asarray(keras.losses.sparse_categorical_crossentropy(labels, probabilities))


@dataclasses.dataclass
class LayerTrace:
    """A Keras model as a graph whose inner tensors can be read.

    Attributes:
        inputs: the symbolic input.
        steps: (layer, symbolic input, symbolic output) of each top-level layer, in call order; the last
            one is the output layer, its input the penultimate representation.
    """

    inputs: object
    steps: list[tuple[object, object, object]]

    @property
    def output_layer(self):
        return self.steps[-1][0]

    @property
    def features(self):
        return self.steps[-1][1]

    @property
    def features_name(self) -> str:
        """The layer that produced `features`, looking through dropouts (identities at inference)."""
        import keras

        tensor = self.features
        producers = {id(out): (layer, inp) for layer, inp, out in self.steps}
        while id(tensor) in producers:
            layer, tensor_in = producers[id(tensor)]
            if not isinstance(layer, keras.layers.Dropout):
                return layer.name
            tensor = tensor_in
        return "input"

    def model(self, *tensors):
        import keras

        try:
            return keras.Model(self.inputs, tensors[0] if len(tensors) == 1 else list(tensors))
        except ValueError as exc:  # e.g. a nested backbone whose input name repeats the model's
            raise NotApplicable(f"its inner layers cannot be made into a model ({first_line(exc)})") from None


def trace_layers(model, input_shape: tuple[int, ...]) -> LayerTrace:
    """A readable graph of `model`: its own for functional models; for Sequential and subclassed
    models, its layers chained on a new input, kept only if that reproduces the model's output."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not layers:
        raise NotApplicable(f"model {model.name!r} exposes no layers")
    if not isinstance(model, keras.Sequential) and hasattr(model, "inputs"):  # functional: has a graph
        try:
            return LayerTrace(model.inputs[0], [(layer, layer.input, layer.output) for layer in layers])
        except (AttributeError, ValueError) as exc:  # a layer called more than once has no single output
            raise NotApplicable(f"the inner layers of {model.name!r} cannot be read ({exc})") from None
    try:  # chaining arbitrary user layers can fail in many ways; any failure means "not traceable"
        inputs = keras.Input(tuple(input_shape))
        x, steps = inputs, []
        for layer in layers:
            steps.append((layer, x, x := layer(x)))
        view = keras.Model(inputs, x)
        # Probes at several scales: at one scale alone a saturated softmax can hide a difference.
        probe = np.random.default_rng(0).uniform(0, 1, (3, *input_shape)) * np.array([255.0, 1.0, 0.01]).reshape(
            3, *[1] * len(input_shape))
        probe = probe.astype(np.float32)
        same = np.allclose(np.asarray(view(probe, training=False)), np.asarray(model(probe, training=False)),
                           atol=1e-5)
    except Exception as exc:
        raise NotApplicable(f"the layers of {type(model).__name__} {model.name!r} cannot be chained into a "
                            f"graph ({type(exc).__name__})") from None
    if not same:
        raise NotApplicable(f"{type(model).__name__} {model.name!r} does not apply its layers in order, so its "
                            f"inner layers cannot be read")
    return LayerTrace(inputs, steps)


def embeddings(model, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, str]:
    """Penultimate-layer activations (the input of the output layer) of `images`, flattened, and that layer."""
    trace = trace_layers(model, images.shape[1:])
    extractor = trace.model(trace.features)
    features = np.concatenate([np.asarray(extractor(images[i:i + batch_size], training=False))
                               for i in range(0, len(images), batch_size)])
    if len(features) != len(images):
        raise NotApplicable(f"layer {trace.features_name!r} sees {len(features)} rows for {len(images)} images "
                            f"(test-time augmentation inside the model), so it is no per-image embedding")
    return features.reshape(len(features), -1), trace.features_name


def cam_layer(trace: LayerTrace) -> tuple[str, object]:
    """(name, output) of the feature map Grad-CAM reads: among the 4-D outputs from the first
    convolution (or nested backbone model) on, the last one at least MIN_CAM_SIZE pixels in height and
    width, else the last one at all."""
    import keras

    convolutions = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.Model)
    first = next((i for i, (layer, _, _) in enumerate(trace.steps) if isinstance(layer, convolutions)), None)
    maps = [(layer.name, out) for layer, _, out in trace.steps[first:-1] if len(out.shape) == 4] \
        if first is not None else []
    if not maps:
        raise NotApplicable("the model has no convolutional feature map, so Grad-CAM does not apply")
    large = [(name, out) for name, out in maps if min(out.shape[1], out.shape[2]) >= MIN_CAM_SIZE]
    return (large or maps)[-1]


@contextlib.contextmanager
def _logits(layer):
    """Let a softmax output layer return its logits for a while: Grad-CAM differentiates the class
    score before the softmax, whose saturated gradient would blank the heatmap (as in the Keras example)."""
    import keras

    if getattr(layer, "activation", None) is not keras.activations.softmax:
        yield
        return
    layer.activation = keras.activations.linear
    try:
        yield
    finally:
        layer.activation = keras.activations.softmax


def gradcam(model, images: np.ndarray, class_ids: np.ndarray) -> tuple[np.ndarray, str]:
    """Grad-CAM heatmaps (N x H x W in 0..1, image size) for `class_ids`, and the layer they come from.

    Hand-written after Selvaraju et al. (2017) and the Keras "Grad-CAM class activation visualization"
    example, since neither Keras nor TensorFlow ships it: weight each channel of a feature map by the
    mean gradient of the class logit, sum, keep the positive part, scale to 0..1 and resize.
    """
    import tensorflow as tf

    trace = trace_layers(model, images.shape[1:])
    name, feature_map = cam_layer(trace)
    grad_model = trace.model(feature_map, trace.steps[-1][2])
    with _logits(trace.output_layer), tf.GradientTape() as tape:
        maps, scores = grad_model(tf.constant(images, tf.float32), training=False)
        if maps.shape[0] != len(images) or scores.shape[0] != len(images):
            raise NotApplicable(f"layer {name!r} sees a batch of {maps.shape[0]} for {len(images)} images "
                                f"(test-time augmentation inside the model)")
        class_scores = tf.gather(scores, tf.constant(class_ids, tf.int32), batch_dims=1)
    gradients = tape.gradient(class_scores, maps)
    if gradients is None:
        raise NotApplicable(f"the class scores do not depend on layer {name!r}")
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))
    cams = cams / (tf.reduce_max(cams, axis=(1, 2), keepdims=True) + 1e-12)
    heatmaps = tf.image.resize(cams[..., None], images.shape[1:3], method="bilinear")[..., 0]
    return np.clip(heatmaps.numpy(), 0.0, 1.0), name
