"""The evaluation report of a run: metrics.json, the figures, report.html (self-contained) and report.md.

`write_report(run_dir, data, model)` evaluates a Keras model or any `Predictor` on the test split
and writes the report; the runner calls it after training, and `kerascnn evaluate` through
`kerascnn.runner.evaluate_run`. The report of `model.keras` lives in the run directory itself; the report of any
other artifact in `reports/<artifact>/`, with its per-class change against model.keras, so a user
sees what e.g. quantization cost each class.

Everything is computed in memory first and written last, so a failed evaluation writes nothing.

Example:
    report = write_report("saved_models/digits-cnn", data, load("saved_models/digits-cnn/model.tflite"),
                          artifact="model.tflite")
    print(report.metrics["accuracy"], report.folder / "report.html")
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kerascnn import plots
from kerascnn.config import EvaluateConfig
from kerascnn.data.imagedata import ImageData
from kerascnn.data.sampling import counts_per_class
from kerascnn.errors import DataError
from kerascnn.evaluation import (NotApplicable, diagnostics, embeddings, gradcam, per_example_loss,
                                 positive_class_index, predict_function, predict_split, split_images,
                                 validation_thresholds)
from kerascnn.models.transfer import BACKBONE_LAYER
from kerascnn.multilabel import multilabel_metrics
from kerascnn.rundir import (HISTORY_FILE, HTML_FILE, KERAS_FILE, MARKDOWN_FILE, METRICS_FILE, REPORTS_DIR,
                             read_manifest, write_bytes_atomically)

DEFAULT_ARTIFACT = KERAS_FILE
TOP_LOSSES = 12
GRADCAM_IMAGES = 8
MAX_GRADCAM_IMAGES = 20  # up to this many classes each get one Grad-CAM image
# File -> (title, what the reader should look for), in report order.
FIGURES = {
    "confusion_matrix.png": ("Confusion matrix", "Rows are true classes, columns predicted ones; off-diagonal "
                             "cells are the mistakes."),
    "pr.png": ("Precision-recall curves", "Precision against recall as the threshold sweeps, one class against "
               "the rest; with rare classes this, not ROC, shows the false alarms each found positive costs."),
    "roc.png": ("ROC curves", "Sensitivity against 1 − specificity as the decision threshold sweeps from 1 to 0; "
                "the closer to the top-left corner (AUC 1), the better."),
    "threshold.png": ("Choosing the threshold", "Where the two classes' probabilities fall, and what each "
                      "threshold costs: moving it left misses fewer positives (type II errors) and raises more "
                      "false alarms (type I errors)."),
    "training_curves.png": ("Training curves", "A validation loss rising while the training loss falls means "
                            "over-fitting."),
    "top_losses.png": ("Top losses", "The most confidently wrong test images, with the loss of each."),
    "embedding_tsne.png": ("Embedding (t-SNE)", "Test images placed by the similarity of their penultimate-layer "
                           "activations; well-separated clusters mean classes the network tells apart."),
    "gradcam.png": ("Grad-CAM", "Where the network looked: the regions that raised the predicted class's score."),
}


@dataclasses.dataclass
class Report:
    """An evaluation report: metrics.json's content, the figures (PNG bytes), notes on what was skipped,
    and the folder it was saved in (None until `save`)."""

    metrics: dict
    figures: dict[str, bytes]
    notes: list[str]
    folder: Path | None = None

    @property
    def html_path(self) -> Path | None:
        return None if self.folder is None else self.folder / HTML_FILE


def report_folder(run_dir: str | Path, artifact: str = DEFAULT_ARTIFACT) -> Path:
    """Where an artifact's report goes: the run directory for model.keras, else reports/<artifact>/."""
    run_dir = Path(run_dir)
    if artifact == DEFAULT_ARTIFACT:
        return run_dir
    return run_dir / REPORTS_DIR / artifact.strip("/").replace("/", "-")


def keras_model_of(model):
    """The Keras model behind a Keras model or a Predictor over a .keras/.h5 file; None for other artifacts."""
    import keras

    if isinstance(model, keras.Model):
        return model
    return getattr(getattr(model, "runtime", None), "model", None)


def build_report(data: ImageData, model, config: EvaluateConfig | None = None, artifact: str = DEFAULT_ARTIFACT,
                 history: pd.DataFrame | None = None, reference: dict | None = None, seed: int = 0) -> Report:
    """Evaluate `model` (Keras model or Predictor) on `data.test` and draw the figures, writing nothing.

    Args:
        data: the ImageData whose test split is evaluated.
        model: a Keras model or a Predictor over any artifact.
        config: an EvaluateConfig (default EvaluateConfig()).
        artifact: the artifact's name, shown in the report (default model.keras).
        history: the training history (history.csv) for the training curves, if any.
        reference: metrics.json of model.keras, to show this artifact's change per class.
        seed: seed of the t-SNE sample and layout (default 0).
    """
    config = config or EvaluateConfig()
    start = time.perf_counter()
    if data.multi_label:
        return _multilabel_report(data, model, config, artifact, history, start)
    positive_class_index(data.class_names, config.positive_class)  # a bad name fails before any work
    probabilities, labels = predict_split(predict_function(model), data)
    metrics = {"artifact": artifact, "dataset": data.name, "split": "test",
               **diagnostics(probabilities, labels, data.class_names, config.target_sensitivity,
                             config.positive_class), "counts_per_class": counts_per_class(data)}
    if reference and (reference.get("class_names"), reference.get("dataset"), reference.get("n")) == \
            (data.class_names, data.name, metrics["n"]):
        metrics["reference"] = compare(metrics, reference)
    notes: list[str] = []
    figures = {"confusion_matrix.png": plots.confusion_matrix_figure(metrics["confusion_matrix"])}
    figures["pr.png"] = plots.pr_figure(probabilities, np.eye(data.num_classes, dtype=int)[labels], data.class_names,
                                        metrics["per_class"])
    if any(row["roc_auc"] is not None for row in metrics["per_class"].values()):
        figures["roc.png"] = plots.roc_figure(probabilities, labels, data.class_names, metrics)
    if metrics["threshold"]:
        positive = data.class_names.index(metrics["threshold"]["positive_class"])
        negative = data.class_names[1 - positive] if data.num_classes == 2 else f"not {data.class_names[positive]}"
        figures["threshold.png"] = plots.threshold_figure(probabilities[:, positive], labels == positive,
                                                          metrics["threshold"], negative)
    elif metrics["positive_class"] is not None:
        notes.append(f"no threshold for {metrics['positive_class']!r}: the test set does not hold both that class "
                     f"and others")
    if history is not None and "loss" in history:
        figures["training_curves.png"] = plots.training_curves_figure(history)
    else:
        notes.append("training curves skipped: the run directory has no history.csv")
    figures.update(_image_figures(data, model, probabilities, labels, config, seed, notes))
    pngs = {name: plots.png_bytes(figure) for name, figure in figures.items()}
    metrics["notes"] = notes
    metrics["report_seconds"] = round(time.perf_counter() - start, 2)
    metrics["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Report(metrics=metrics, figures=pngs, notes=notes)


def _multilabel_report(data: ImageData, model, config: EvaluateConfig, artifact: str, history: pd.DataFrame | None,
                       start: float) -> Report:
    """The report of a multi-label model: thresholds chosen on validation (`evaluate.thresholds`), the
    test metrics at them, per-class precision-recall curves and the training curves."""
    predict = predict_function(model)
    thresholds = validation_thresholds(model, data, config.thresholds, config.threshold_target)
    scores, targets = predict_split(predict, data)
    metrics = {"artifact": artifact, "dataset": data.name, "split": "test", "threshold_rule": config.thresholds,
               **multilabel_metrics(scores, targets, thresholds, data.class_names),
               "counts_per_class": counts_per_class(data)}
    notes: list[str] = ["confusion matrix, ROC, top losses, t-SNE and Grad-CAM are drawn for single-label runs"]
    figures = {"pr.png": plots.pr_figure(scores, targets.astype(int), data.class_names, metrics["per_class"])}
    if history is not None and "loss" in history:
        figures["training_curves.png"] = plots.training_curves_figure(history)
    metrics["notes"] = notes
    metrics["report_seconds"] = round(time.perf_counter() - start, 2)
    metrics["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Report(metrics=metrics, figures={name: plots.png_bytes(f) for name, f in figures.items()}, notes=notes)


def compare(metrics: dict, reference: dict) -> dict:
    """Accuracy and per-class recall of this artifact minus those of the reference (model.keras)."""
    return {"artifact": reference.get("artifact", DEFAULT_ARTIFACT), "accuracy": reference["accuracy"],
            "accuracy_change": metrics["accuracy"] - reference["accuracy"],
            "recall_change": {name: row["recall"] - reference["per_class"][name]["recall"]
                              for name, row in metrics["per_class"].items()}}


def _image_figures(data: ImageData, model, probabilities: np.ndarray, labels: np.ndarray, config: EvaluateConfig,
                   seed: int, notes: list[str]) -> dict:
    """Top losses, t-SNE and Grad-CAM: the figures that need test images (read in one pass)."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    losses = per_example_loss(probabilities, labels)
    wrong = np.flatnonzero(predicted != labels)
    top = wrong[np.argsort(-losses[wrong], kind="stable")][:TOP_LOSSES]
    keras_model = keras_model_of(model)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(labels), size=min(config.tsne_sample, len(labels)), replace=False))
    # Grad-CAM shows the first image of each class, then the second of each, ...: every class appears.
    rank = pd.Series(labels).groupby(labels).cumcount().to_numpy()
    cam = np.lexsort((labels, rank))[:max(GRADCAM_IMAGES, min(data.num_classes, MAX_GRADCAM_IMAGES))]
    wanted = np.union1d(top, np.concatenate([sample, cam]) if keras_model is not None else np.array([], int))
    pixels = dict(zip(wanted.tolist(), split_images(data, wanted)))
    figures = {}
    if len(top):
        figures["top_losses.png"] = plots.top_losses_figure(
            np.stack([pixels[i] for i in top]), labels[top], predicted[top], confidence[top], losses[top],
            data.class_names)
    else:
        notes.append("top losses skipped: no test image is misclassified")
    if keras_model is None:
        notes.append("t-SNE and Grad-CAM skipped: they read the network's inner layers, which only a Keras "
                     "artifact (.keras, .h5) exposes")
        return figures
    if len(sample) >= 10:
        try:
            points, layer = tsne(keras_model, np.stack([pixels[i] for i in sample]), seed)
            figures["embedding_tsne.png"] = plots.embedding_figure(points, labels[sample], predicted[sample],
                                                                   data.class_names, layer)
        except NotApplicable as exc:
            notes.append(f"t-SNE skipped: {exc}")
    else:
        notes.append(f"t-SNE skipped: it needs at least 10 test images (evaluate.tsne_sample = "
                     f"{config.tsne_sample}, {len(labels)} test images)")
    try:
        images = np.stack([pixels[i] for i in cam])
        heatmaps, layer = gradcam(keras_model, images, predicted[cam])
        figures["gradcam.png"] = plots.gradcam_figure(images, heatmaps, labels[cam], predicted[cam], confidence[cam],
                                                      data.class_names, layer)
    except NotApplicable as exc:
        if any(layer.name == BACKBONE_LAYER and hasattr(layer, "layers") for layer in keras_model.layers):
            exc = ("a transfer model's feature maps are inside its nested `backbone` model, which Grad-CAM cannot "
                   "open from the outside; the other figures are unaffected")
        notes.append(f"Grad-CAM skipped: {exc}")
    return figures


def tsne(model, images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D t-SNE (scikit-learn) of the penultimate-layer activations, after PCA to 50 dimensions.

    Runs single-threaded: after training, TensorFlow's busy worker threads slow scikit-learn's OpenMP
    loops about sixfold on 2 cores (measured: 7.9 s against 1.4 s for 360 digits).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    features, layer = embeddings(model, images)
    with threadpool_limits(limits=1):
        if features.shape[1] > 50:
            features = PCA(n_components=min(50, len(features)), random_state=seed).fit_transform(features)
        perplexity = min(30.0, (len(features) - 1) / 3)
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                      random_state=seed).fit_transform(features)
    return points, layer


def save(report: Report, folder: str | Path) -> Report:
    """Write metrics.json, the figures, report.md and report.html into `folder`; drop stale figures."""
    report.folder = Path(folder)
    report.folder.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        if name in report.figures:
            write_bytes_atomically(report.folder / name, report.figures[name])
        else:
            (report.folder / name).unlink(missing_ok=True)
    write_bytes_atomically(report.folder / METRICS_FILE,
                  (json.dumps(report.metrics, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    write_bytes_atomically(report.folder / MARKDOWN_FILE, render_markdown(report).encode("utf-8"))
    write_bytes_atomically(report.folder / HTML_FILE, render_html(report).encode("utf-8"))
    return report


def write_report(run_dir: str | Path, data: ImageData, model, config: EvaluateConfig | None = None,
                 artifact: str = DEFAULT_ARTIFACT, seed: int = 0) -> Report:
    """Evaluate `model` on `data.test` and write the report into the run directory (see `report_folder`).

    Example:
        write_report(result.run_dir, result.data, result.model)
    """
    run_dir = Path(run_dir)
    folder = report_folder(run_dir, artifact)
    history = pd.read_csv(run_dir / HISTORY_FILE) if (run_dir / HISTORY_FILE).is_file() else None
    reference = None
    if folder != run_dir and (run_dir / METRICS_FILE).is_file():
        reference = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    report = build_report(data, model, config, artifact, history, reference, seed)
    manifest = read_manifest(run_dir)
    if manifest is not None:  # what was trained, and the run's sanity warnings, shown on the page
        report.metrics["training"] = {key: manifest.get(key) for key in TRAINING_CONTEXT if key in manifest}
        report.metrics["warnings"] = manifest.get("warnings", [])
    return save(report, folder)


# Manifest keys the report repeats as its training context.
TRAINING_CONTEXT = ("model", "transfer", "dataset", "input_shape", "counts", "epochs_run", "train_seconds",
                    "strategy")


def training_sentence(metrics: dict) -> str:
    """One line: the model, how it was trained, on what and for how long (empty without a manifest)."""
    t = metrics.get("training")
    if not t:
        return ""
    counts = t.get("counts") or {}
    model = t.get("model", "?") + (f" ({t['transfer']})" if t.get("transfer") else "")
    return (f"Trained: {model} on {t.get('dataset')} ({'x'.join(map(str, t.get('input_shape') or []))} images; "
            f"{counts.get('train', 0)} train / {counts.get('validation', 0)} validation / {counts.get('test', 0)} "
            f"test), {t.get('epochs_run')} epochs in {t.get('train_seconds', 0):.1f} s.")


def check_compatible(predictor, data: ImageData, artifact: str) -> None:
    """Refuse an artifact whose classes or input shape are not those of the data it is evaluated on."""
    if list(predictor.class_names) != list(data.class_names):
        raise DataError(f"{artifact} predicts the classes [{', '.join(predictor.class_names)}] but dataset "
                        f"{data.name!r} has [{', '.join(data.class_names)}]; evaluate it on the dataset it was "
                        f"trained on")
    if tuple(predictor.input_shape) != tuple(data.input_shape):
        raise DataError(f"{artifact} takes images of shape {tuple(predictor.input_shape)} but dataset {data.name!r} "
                        f"gives {tuple(data.input_shape)}; set data.image_size to the model's height and width")


# ---- rendering -------------------------------------------------------------------------------------------------

def summary_rows(metrics: dict) -> list[tuple[str, str]]:
    """(label, value) lines of the headline table."""
    rows = [("Artifact", metrics["artifact"]), ("Dataset", f"{metrics['dataset']} ({metrics['split']} split)"),
            ("Test images", str(metrics["n"]))]
    if metrics.get("multi_label"):
        return rows + [("Subset accuracy (every label right)", f"{metrics['subset_accuracy']:.4f}"),
                       ("Hamming loss", f"{metrics['hamming_loss']:.4f}"),
                       ("Mean average precision", _number(metrics["mean_average_precision"])),
                       ("Micro F1 / macro F1", f"{metrics['micro_f1']:.4f} / {metrics['macro_f1']:.4f}"),
                       ("Loss (binary cross-entropy)", f"{metrics['loss']:.4f}"),
                       ("Thresholds chosen on validation by", metrics["threshold_rule"])]
    rows += [("Accuracy", f"{metrics['accuracy']:.4f}"),
             ("Balanced accuracy (mean recall)", f"{metrics['balanced_accuracy']:.4f}"),
             ("Macro F1", f"{metrics['macro_f1']:.4f}"),
             ("Mean average precision (PR)", _number(metrics["mean_average_precision"])),
             ("Loss (cross-entropy)", f"{metrics['loss']:.4f}")]
    rows += [(f"Top-{key.split('_')[1]} accuracy", f"{value:.4f}") for key, value in metrics["top_k_accuracy"].items()]
    auc = metrics["roc_auc"]
    if "binary" in auc:
        rows.append((f"ROC AUC ({metrics['positive_class']})", _number(auc["binary"])))
    else:
        rows += [("ROC AUC, one-vs-rest macro", _number(auc["macro_ovr"])),
                 ("ROC AUC, one-vs-rest micro", _number(auc["micro_ovr"]))]
    if "reference" in metrics:
        ref = metrics["reference"]
        rows.append((f"Accuracy change vs {ref['artifact']}", f"{ref['accuracy_change']:+.4f}"))
    return rows


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def threshold_table(threshold: dict) -> pd.DataFrame:
    """The decision rules for the positive class: argmax, the target-sensitivity threshold, Youden's J."""
    rules = {"argmax (the model's own decision)": {"threshold": None, **threshold["argmax"]},
             f"sensitivity ≥ {threshold['target_sensitivity']:g}": threshold["at_target"],
             "Youden's J (max sensitivity + specificity)": threshold["youden"]}
    columns = ["sensitivity", "specificity", "tp", "fn", "fp", "tn"]
    return pd.DataFrame([{"rule": rule, "threshold": "–" if point["threshold"] is None else f"{point['threshold']:.4g}",
                          **{c: point[c] for c in columns}} for rule, point in rules.items()])


def threshold_sentence(threshold: dict) -> str:
    point, positive = threshold["at_target"], threshold["positive_class"]
    return (f"To reach a sensitivity of at least {threshold['target_sensitivity']:g} for {positive!r}, call an image "
            f"{positive!r} when its probability is ≥ {point['threshold']:.4g}: it finds {point['tp']} of "
            f"{point['tp'] + point['fn']} (sensitivity {point['sensitivity']:.4f}) at a specificity of "
            f"{point['specificity']:.4f} ({point['fp']} of {point['fp'] + point['tn']} other images flagged).")


def counts_frame(metrics: dict) -> pd.DataFrame:
    """Images per class (rows) and split (columns)."""
    return pd.DataFrame(metrics["counts_per_class"]).rename_axis("class").reset_index()


def per_class_frame(metrics: dict) -> pd.DataFrame:
    table = pd.DataFrame(metrics["per_class"]).T.astype(float).astype({"support": int})
    if "reference" in metrics:
        table[f"recall change vs {metrics['reference']['artifact']}"] = pd.Series(metrics["reference"]["recall_change"])
    return table.rename_axis("class").reset_index()


def _title(metrics: dict) -> str:
    return f"Evaluation of {metrics['artifact']} on {metrics['dataset']}"


def render_markdown(report: Report) -> str:
    """report.md: the tables in Markdown, figures linked as the PNG files beside it."""
    m = report.metrics
    lines = [f"# {_title(m)}", "", f"Created {m['created']} in {m['report_seconds']} s.", ""]
    if training_sentence(m):
        lines += [training_sentence(m), ""]
    if m.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {warning}" for warning in m["warnings"]] + [""]
    lines += [pd.DataFrame(summary_rows(m), columns=["metric", "value"]).to_markdown(index=False), ""]
    if m.get("threshold"):
        lines += ["## Decision threshold", "", threshold_sentence(m["threshold"]), "",
                  threshold_table(m["threshold"]).to_markdown(index=False, floatfmt=".4f"), ""]
    lines += ["## Per class", "", per_class_frame(m).to_markdown(index=False, floatfmt=".4f"), ""]
    if "counts_per_class" in m:
        lines += ["## Images per class and split", "", counts_frame(m).to_markdown(index=False), ""]
    for name, (title, caption) in FIGURES.items():
        if name in report.figures:
            lines += [f"## {title}", "", caption, "", f"![{title}]({name})", ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { padding: .3em .8em; border-bottom: 1px solid #e4e4e4; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.caption, .meta { color: #555; } .notes li { color: #8a5a00; } .warnings li { color: #b00020; }
"""


def _html_table(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(index=index, border=0, na_rep="–", float_format=lambda v: f"{v:.4f}")


def render_html(report: Report) -> str:
    """report.html: one self-contained page, figures embedded as base64 PNG."""
    m = report.metrics
    parts = [f"<h1>{html.escape(_title(m))}</h1>",
             f"<p class='meta'>Created {html.escape(m['created'])} in {m['report_seconds']} s.</p>"]
    if training_sentence(m):
        parts.append(f"<p class='meta'>{html.escape(training_sentence(m))}</p>")
    if m.get("warnings"):
        parts += ["<h2>Warnings</h2>", "<ul class='warnings'>"] + [
            f"<li>{html.escape(warning)}</li>" for warning in m["warnings"]] + ["</ul>"]
    parts.append(_html_table(pd.DataFrame(summary_rows(m), columns=["metric", "value"]), index=False))
    if m.get("threshold"):
        parts += ["<h2>Decision threshold</h2>", f"<p>{html.escape(threshold_sentence(m['threshold']))}</p>",
                  _html_table(threshold_table(m["threshold"]), index=False)]
    parts += ["<h2>Per class</h2>", _html_table(per_class_frame(m), index=False)]
    if "counts_per_class" in m:
        parts += ["<h2>Images per class and split</h2>", _html_table(counts_frame(m), index=False)]
    for name, (title, caption) in FIGURES.items():
        if name in report.figures:
            data = base64.b64encode(report.figures[name]).decode("ascii")
            parts += [f"<h2>{html.escape(title)}</h2>", f"<p class='caption'>{html.escape(caption)}</p>",
                      f"<img src='data:image/png;base64,{data}' alt='{html.escape(title)}' data-file='{name}'>"]
    if report.notes:
        parts += ["<h2>Notes</h2>", "<ul class='notes'>"] + [f"<li>{html.escape(n)}</li>" for n in report.notes]
        parts.append("</ul>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<title>{html.escape(_title(m))}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
