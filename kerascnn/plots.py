"""The evaluation report's figures, drawn with matplotlib on the Agg canvas.

Each function returns a `matplotlib.figure.Figure` attached to its own Agg canvas, never touching
pyplot's global figure state: the report runs inside training jobs and notebooks alike, and
`png_bytes(figure)` turns a figure into the PNG the report embeds.

Example:
    png = png_bytes(confusion_matrix_figure(metrics["confusion_matrix"]))
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_curve, roc_curve

# Above this many classes, confusion cells lose their numbers and ROC curves their legend entries.
MAX_LABELLED_CLASSES = 20


def new_figure(width: float, height: float, **kwargs) -> Figure:
    """A figure with its own Agg canvas and constrained layout."""
    figure = Figure(figsize=(width, height), layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _class_colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def show_image(ax, image: np.ndarray, title: str | None = None) -> None:
    """Draw raw pixels (0..255, HWC, 1 or 3 channels) without axes; small images stay crisp."""
    pixels = np.clip(image, 0, 255)
    interpolation = "nearest" if max(pixels.shape[:2]) < 64 else "antialiased"
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=255, interpolation=interpolation)
    else:
        ax.imshow(pixels.astype(np.uint8), interpolation=interpolation)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def confusion_matrix_figure(confusion: dict) -> Figure:
    """Counts and row-normalized confusion matrices side by side, true classes as rows."""
    names = confusion["labels"]
    n = len(names)
    side = min(max(3.8, 0.4 * n + 2.4), 12.0)
    figure = new_figure(2 * side + 0.6, side)
    axes = figure.subplots(1, 2)
    panels = ((np.asarray(confusion["counts"]), "d", "Counts"),
              (np.asarray(confusion["normalized"]), ".2f", "Row-normalized (recall on the diagonal)"))
    for ax, (matrix, fmt, title) in zip(axes, panels):
        display = ConfusionMatrixDisplay(matrix, display_labels=names)
        display.plot(ax=ax, cmap="Blues", colorbar=False, values_format=fmt, include_values=n <= MAX_LABELLED_CLASSES,
                     xticks_rotation=45 if max(len(s) for s in names) > 2 else "horizontal",
                     im_kw={"vmin": 0} if fmt == "d" else {"vmin": 0, "vmax": 1})
        ax.set_title(title)
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        if n <= MAX_LABELLED_CLASSES:
            for text in display.text_.ravel():
                text.set_fontsize(max(6, 12 - n // 3))
    return figure


def _roc_axes(ax) -> None:
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance (AUC = 0.5)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.grid(alpha=0.3)


def pr_figure(scores: np.ndarray, targets: np.ndarray, class_names: list[str], per_class: dict) -> Figure:
    """Precision-recall curves, one a class (one-vs-rest; multi-hot `targets` N x classes), with each
    class's average precision and, where the metrics give one, its decision threshold marked."""
    figure = new_figure(7.5, 6.5)
    ax = figure.subplots()
    n = len(class_names)
    for k, (name, color) in enumerate(zip(class_names, _class_colors(n))):
        row = per_class[name]
        if row.get("average_precision") is None:
            continue
        precision, recall, _ = precision_recall_curve(targets[:, k], scores[:, k])
        label = f"{name} (AP = {row['average_precision']:.3f})" if n <= MAX_LABELLED_CLASSES else None
        ax.plot(recall, precision, color=color, linewidth=1.2, alpha=0.85, label=label, drawstyle="steps-post")
        if "threshold" in row:
            ax.plot(row["recall"], row["precision"], "o", color=color)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall curves, one class vs the rest" + (" (dots: chosen thresholds)"
                                                                    if any("threshold" in r for r in per_class.values())
                                                                    else ""))
    if n <= MAX_LABELLED_CLASSES:
        ax.legend(loc="lower left", fontsize=8)
    return figure


def roc_figure(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str], metrics: dict) -> Figure:
    """ROC curves: the positive class of a binary task with its chosen thresholds marked, or one
    curve a class (one-vs-rest) plus the micro-average for multi-class tasks."""
    figure = new_figure(7.5, 6.5)
    ax = figure.subplots()
    n = len(class_names)
    onehot = np.eye(n, dtype=int)[labels]
    threshold = metrics.get("threshold")
    if n == 2 and metrics["positive_class"] is not None:
        positive = class_names.index(metrics["positive_class"])
        fpr, tpr, _ = roc_curve(onehot[:, positive], probabilities[:, positive])
        auc = metrics["roc_auc"]["binary"]
        ax.plot(fpr, tpr, color="C0", linewidth=2, label=f"{class_names[positive]} (AUC = {auc:.3f})")
        ax.set_title(f"ROC curve, positive class: {class_names[positive]}")
    else:
        aucs = metrics["per_class"]
        for k, (name, color) in enumerate(zip(class_names, _class_colors(n))):
            if aucs[name]["roc_auc"] is None:
                continue
            fpr, tpr, _ = roc_curve(onehot[:, k], probabilities[:, k])
            label = f"{name} (AUC = {aucs[name]['roc_auc']:.3f})" if n <= MAX_LABELLED_CLASSES else None
            ax.plot(fpr, tpr, color=color, linewidth=1.2, alpha=0.85, label=label)
        fpr, tpr, _ = roc_curve(onehot.ravel(), probabilities.ravel())
        micro, macro = metrics["roc_auc"]["micro_ovr"], metrics["roc_auc"]["macro_ovr"]
        ax.plot(fpr, tpr, color="black", linewidth=2, linestyle=":", label=f"micro-average (AUC = {micro:.3f})")
        ax.set_title(f"ROC curves, one class vs the rest (macro AUC = {macro:.3f})")
    if threshold:
        for key, marker, text in (("at_target", "o", f"sensitivity ≥ {threshold['target_sensitivity']:g}"),
                                  ("youden", "s", "Youden's J")):
            point = threshold[key]
            ax.plot(1 - point["specificity"], point["sensitivity"], marker, color="C3" if marker == "o" else "C2",
                    markersize=9, label=f"{text}: t = {point['threshold']:.3g} ({threshold['positive_class']})")
    _roc_axes(ax)
    ax.legend(loc="lower right", fontsize=8 if n <= 10 else 7)
    return figure


def threshold_figure(scores: np.ndarray, is_positive: np.ndarray, threshold: dict, negative: str) -> Figure:
    """Score distributions of the positive class and the `negative` rest, and sensitivity/specificity
    against the threshold, with the target-sensitivity and Youden thresholds marked."""
    is_positive = np.asarray(is_positive, bool)
    positive = threshold["positive_class"]
    figure = new_figure(9, 7.5)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[1, 1.2])
    bins = np.linspace(0, 1, 41)
    top.hist(scores[~is_positive], bins=bins, alpha=0.6, color="C0", label=negative)
    top.hist(scores[is_positive], bins=bins, alpha=0.6, color="C3", label=positive)
    top.set_yscale("log")
    top.set_ylabel("test images (log scale)")
    top.set_title(f"Predicted probability of {positive!r}, by true class")
    fpr, tpr, cuts = roc_curve(is_positive, scores, drop_intermediate=False)
    cuts = np.clip(cuts, 0.0, 1.0)  # the first cut is +inf (nothing called positive)
    bottom.step(cuts, tpr, where="post", color="C3", linewidth=2, label="sensitivity")
    bottom.step(cuts, 1 - fpr, where="post", color="C0", linewidth=2, label="specificity")
    bottom.set_xlabel(f"threshold: {positive!r} when probability ≥ threshold")
    bottom.set_ylabel("rate")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_xlim(0, 1)
    bottom.grid(alpha=0.3)
    for key, color, text in (("at_target", "C3", f"sensitivity ≥ {threshold['target_sensitivity']:g}"),
                             ("youden", "C2", "Youden's J")):
        point = threshold[key]
        for ax in (top, bottom):
            ax.axvline(point["threshold"], color=color, linestyle="--", linewidth=1.2)
        bottom.plot([], [], color=color, linestyle="--",
                    label=f"{text}: t = {point['threshold']:.3g} (sens. {point['sensitivity']:.3f}, "
                          f"spec. {point['specificity']:.3f})")
    top.legend(fontsize=8)
    bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    return figure


def training_curves_figure(history: pd.DataFrame) -> Figure:
    """Loss and accuracy by epoch, training against validation, from history.csv."""
    figure = new_figure(11, 4.2)
    metrics = [m for m in ("loss", "accuracy") if m in history]
    axes = np.atleast_1d(figure.subplots(1, len(metrics)))
    epochs = history["epoch"] + 1 if "epoch" in history else pd.Series(range(1, len(history) + 1))
    for ax, metric in zip(axes, metrics):
        ax.plot(epochs, history[metric], "o-", color="C0", label=f"training {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], "s-", color="C1", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return figure


def top_losses_figure(images: np.ndarray, true: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                      losses: np.ndarray, class_names: list[str], columns: int = 6) -> Figure:
    """The most confidently wrong test images, each titled with true and predicted class."""
    rows = int(np.ceil(len(images) / columns))
    figure = new_figure(1.9 * columns, 2.25 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image, t, p, c, loss in zip(axes, images, true, predicted, confidence, losses):
        show_image(ax, image, f"true: {class_names[t]}\npred: {class_names[p]} ({c:.2f})\nloss {loss:.2f}")
    return figure


def embedding_figure(points: np.ndarray, labels: np.ndarray, predicted: np.ndarray, class_names: list[str],
                     layer: str) -> Figure:
    """A 2-D t-SNE map coloured by true class; misclassified images ringed in black."""
    figure = new_figure(8.5, 6.5)
    ax = figure.subplots()
    wrong = labels != predicted
    for k, (name, color) in enumerate(zip(class_names, _class_colors(len(class_names)))):
        mine = labels == k
        ax.scatter(points[mine, 0], points[mine, 1], s=16, color=color, alpha=0.8,
                   label=name if len(class_names) <= MAX_LABELLED_CLASSES else None)
    if wrong.any():
        ax.scatter(points[wrong, 0], points[wrong, 1], s=60, facecolors="none", edgecolors="black",
                   linewidths=1.0, label="misclassified")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of the penultimate layer ({layer}), {len(points)} test images")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return figure


def gradcam_figure(images: np.ndarray, heatmaps: np.ndarray, true: np.ndarray, predicted: np.ndarray,
                   confidence: np.ndarray, class_names: list[str], layer: str) -> Figure:
    """Each image above its Grad-CAM heatmap for the predicted class."""
    n = len(images)
    figure = new_figure(max(1.9 * n, 5.0), 4.6)
    axes = figure.subplots(2, n, squeeze=False)
    for column, (image, heat, t, p, c) in enumerate(zip(images, heatmaps, true, predicted, confidence)):
        show_image(axes[0, column], image, f"true: {class_names[t]}\npred: {class_names[p]} ({c:.2f})")
        show_image(axes[1, column], image)
        axes[1, column].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1,
                               interpolation="bilinear", extent=axes[1, column].images[0].get_extent())
    figure.suptitle(f"Grad-CAM at layer {layer!r}: red marks what raised the predicted class's score", fontsize=10)
    return figure
