"""Diagnostics against scikit-learn on predictions whose answers are known, and the model introspection
(layer tracing, embeddings, Grad-CAM) on tiny untrained models."""

import keras
import numpy as np
import pytest
from sklearn.metrics import (f1_score, precision_score, recall_score, roc_auc_score, top_k_accuracy_score)

from kerascnn.config import EvaluateConfig, load_config
from kerascnn.data.datasets import from_arrays
from kerascnn.errors import ConfigError
from kerascnn.evaluation import (NotApplicable, diagnostics, embeddings, evaluate, gradcam, positive_class_index,
                                 predict_split, split_images, threshold_analysis, trace_layers)
from kerascnn.models import build_model

# Three classes, eight examples; argmax predictions are [0, 0, 1, 1, 1, 2, 2, 0].
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2])
PROBABILITIES = np.array([
    [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1],
    [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
    [0.1, 0.2, 0.7], [0.2, 0.1, 0.7], [0.5, 0.2, 0.3]])
NAMES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def multi():
    return diagnostics(PROBABILITIES, LABELS, NAMES)


def test_confusion_matrix_counts_and_rows(multi):
    assert multi["confusion_matrix"]["counts"] == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert multi["confusion_matrix"]["labels"] == NAMES
    np.testing.assert_allclose(multi["confusion_matrix"]["normalized"],
                               [[2 / 3, 1 / 3, 0], [0, 1, 0], [1 / 3, 0, 2 / 3]], atol=1e-6)


def test_per_class_metrics_match_sklearn(multi):
    predicted = PROBABILITIES.argmax(1)
    precision = precision_score(LABELS, predicted, average=None)
    recall = recall_score(LABELS, predicted, average=None)
    f1 = f1_score(LABELS, predicted, average=None)
    for k, name in enumerate(NAMES):
        row = multi["per_class"][name]
        assert row["precision"] == pytest.approx(precision[k])
        assert row["recall"] == row["sensitivity"] == pytest.approx(recall[k])
        assert row["f1"] == pytest.approx(f1[k])
        assert row["support"] == int((LABELS == k).sum())
    # Specificity by hand from the confusion matrix: of the 5 non-cats, 1 fox was called cat.
    assert multi["per_class"]["cat"]["specificity"] == pytest.approx(4 / 5)
    assert multi["per_class"]["dog"]["specificity"] == pytest.approx(5 / 6)
    assert multi["per_class"]["fox"]["specificity"] == pytest.approx(1.0)


def test_accuracy_top_k_and_auc_match_sklearn(multi):
    assert multi["accuracy"] == pytest.approx(6 / 8)
    assert multi["top_k_accuracy"] == {}  # top-3 of three classes is always right, so it is left out
    assert multi["roc_auc"]["macro_ovr"] == pytest.approx(roc_auc_score(LABELS, PROBABILITIES, multi_class="ovr"))
    assert multi["roc_auc"]["micro_ovr"] == pytest.approx(
        roc_auc_score(np.eye(3)[LABELS], PROBABILITIES, average="micro"))
    for k, name in enumerate(NAMES):
        assert multi["per_class"][name]["roc_auc"] == pytest.approx(roc_auc_score(LABELS == k, PROBABILITIES[:, k]))
    assert multi["positive_class"] is None and multi["threshold"] is None


def test_top_k_accuracy_with_many_classes():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(6), size=50)
    labels = rng.integers(0, 6, size=50)
    metrics = diagnostics(probabilities, labels, [str(i) for i in range(6)])
    for k in (3, 5):
        assert metrics["top_k_accuracy"][f"top_{k}"] == pytest.approx(
            top_k_accuracy_score(labels, probabilities, k=k, labels=range(6)))


# Binary: positives score 0.9, 0.8, 0.7, 0.3; negatives 0.6, 0.4, 0.2, 0.1.
SCORES = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.4, 0.2, 0.1])
IS_POSITIVE = np.array([True] * 4 + [False] * 4)


def test_threshold_reaching_target_sensitivity_and_its_specificity():
    three_quarters = threshold_analysis(SCORES, IS_POSITIVE, 0.75)["at_target"]
    assert three_quarters["threshold"] == pytest.approx(0.7)
    assert (three_quarters["sensitivity"], three_quarters["specificity"]) == (0.75, 1.0)
    everyone = threshold_analysis(SCORES, IS_POSITIVE, 1.0)["at_target"]
    assert everyone["threshold"] == pytest.approx(0.3)
    assert (everyone["sensitivity"], everyone["specificity"]) == (1.0, 0.5)  # 0.6 and 0.4 become false alarms
    assert (everyone["tp"], everyone["fn"], everyone["fp"], everyone["tn"]) == (4, 0, 2, 2)


def test_youden_threshold_maximises_j():
    youden = threshold_analysis(SCORES, IS_POSITIVE, 0.95)["youden"]
    assert youden["threshold"] == pytest.approx(0.7)
    assert youden["j"] == pytest.approx(0.75)


def test_binary_task_reports_the_second_class_as_positive():
    probabilities = np.stack([1 - SCORES, SCORES], axis=1)
    metrics = diagnostics(probabilities, IS_POSITIVE.astype(int), ["benign", "malignant"], target_sensitivity=1.0)
    assert metrics["positive_class"] == "malignant"
    assert metrics["roc_auc"]["binary"] == pytest.approx(roc_auc_score(IS_POSITIVE, SCORES))
    assert metrics["threshold"]["at_target"]["threshold"] == pytest.approx(0.3)
    assert metrics["threshold"]["argmax"]["sensitivity"] == 0.75  # 0.3 < 0.5 is missed by the plain decision


def test_chosen_positive_class_in_a_multi_class_task():
    metrics = diagnostics(PROBABILITIES, LABELS, NAMES, target_sensitivity=1.0, positive_class="fox")
    at_target = metrics["threshold"]["at_target"]
    assert metrics["threshold"]["positive_class"] == "fox"
    assert at_target["threshold"] == pytest.approx(0.3) and at_target["sensitivity"] == 1.0
    assert at_target["specificity"] == pytest.approx(1.0)  # no cat or dog gives fox more than 0.1


def test_unknown_positive_class_names_the_nearest_one():
    with pytest.raises(ConfigError, match=r"'fxo'.*did you mean 'fox'"):
        positive_class_index(NAMES, "fxo")


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
def test_quantized_probabilities_not_summing_to_one_still_get_an_auc():
    coarse = np.round(PROBABILITIES * 255 * 0.97) / 255  # as an int8 artifact's dequantized output
    metrics = diagnostics(coarse, LABELS, NAMES)
    assert metrics["roc_auc"]["macro_ovr"] == pytest.approx(roc_auc_score(np.eye(3)[LABELS], coarse, average="macro"))


def test_a_class_missing_from_the_test_set_has_no_auc():
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    metrics = diagnostics(PROBABILITIES, labels, NAMES, positive_class="fox")
    assert metrics["per_class"]["fox"]["roc_auc"] is None
    assert metrics["threshold"] is None
    # the macro average runs over the classes present: cat and dog, each one-vs-rest
    present = [roc_auc_score(labels == k, PROBABILITIES[:, k]) for k in (0, 1)]
    assert metrics["roc_auc"]["macro_ovr"] == pytest.approx(np.mean(present))
    assert metrics["per_class"]["cat"]["roc_auc"] == pytest.approx(present[0])


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_target_sensitivity_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match=r"evaluate.target_sensitivity must be in \(0, 1\]"):
        EvaluateConfig(target_sensitivity=value)


def test_evaluate_section_loads_from_overrides():
    config = load_config(overrides=["evaluate.target_sensitivity=0.99", 'evaluate.positive_class="8"',
                                    "evaluate.report=false"])
    assert config.evaluate == EvaluateConfig(report=False, target_sensitivity=0.99, positive_class="8")
    assert "evaluate" in config.to_dict()


# ---- introspection on tiny models ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0, 255, (6, 8, 8, 1)).astype(np.float32)


@pytest.mark.parametrize("name", ["cnn", "cnn_subclassed"])
def test_gradcam_heatmaps_for_sequential_and_subclassed_models(name, images):
    model = build_model(name, (8, 8, 1), 3, filters=(4, 8), dense=8)
    heatmaps, layer = gradcam(model, images, np.array([0, 1, 2, 0, 1, 2]))
    assert heatmaps.shape == (6, 8, 8)
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    assert layer == "conv_1"  # the last feature map at least 4x4
    assert model.layers[-1].activation is keras.activations.softmax  # the logits switch is undone


def test_gradcam_on_a_functional_model(images):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="probabilities")(x))
    heatmaps, layer = gradcam(model, images, np.zeros(6, int))
    assert layer == "features" and heatmaps.shape == (6, 8, 8)
    features, name = embeddings(model, images)
    assert features.shape == (6, 4) and name == "pool"


def test_embeddings_are_the_penultimate_activations(images):
    model = build_model("mlp", (8, 8, 1), 3, hidden=(5,))
    features, name = embeddings(model, images)
    assert features.shape == (6, 5)
    assert name == "dense_0"  # named after the layer, not the dropout that passes it on
    with pytest.raises(NotApplicable, match="no convolutional feature map"):
        gradcam(model, images, np.zeros(6, int))


@keras.saving.register_keras_serializable(package="kerascnn_tests")
class Residual(keras.Model):
    """A subclassed model whose call is not its layers in order."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(64)
        self.out = keras.layers.Dense(2, activation="softmax")

    def call(self, x):
        x = self.flatten(x)
        return self.out(x + self.dense(x))


def test_a_subclassed_model_that_is_not_a_chain_is_not_traced(images):
    model = Residual()
    model(images)
    with pytest.raises(NotApplicable, match="does not apply its layers in order"):
        trace_layers(model, images.shape[1:])


def test_split_images_returns_the_requested_positions_in_order():
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, (60, 4, 4, 1)), np.arange(60) % 3
    data = from_arrays(x, y)
    expected, _ = data.arrays["test"]
    got = split_images(data, [7, 0, 5], batch_size=4)
    np.testing.assert_array_equal(got, expected[[7, 0, 5]].astype(np.float32))
    assert split_images(data, []).shape == (0, 4, 4, 1)


def test_evaluate_still_gives_accuracy_and_loss(images):
    data = from_arrays(np.random.default_rng(3).integers(0, 256, (40, 8, 8, 1)), np.arange(40) % 2)
    model = build_model("mlp", (8, 8, 1), 2, hidden=(4,))
    metrics = evaluate(model, data)
    probabilities, labels = predict_split(lambda x: model(x, training=False), data)
    assert set(metrics) == {"accuracy", "loss"}
    assert metrics["accuracy"] == pytest.approx(float((probabilities.argmax(1) == labels).mean()))
