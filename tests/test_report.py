"""The evaluation report end to end: written after `kerascnn train`, rewritten by `kerascnn evaluate`
for any artifact, self-contained HTML whose figures decode, and one-line errors for bad input."""

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix, recall_score

from kerascnn.cli import build_parser, config_from_args, main
from kerascnn.config import DataConfig, EvaluateConfig
from kerascnn.data.datasets import from_arrays, load_data
from kerascnn.errors import ConfigError
from kerascnn.evaluation import predict_split, threshold_analysis
from kerascnn.models import build_model
from kerascnn.predict import load
from kerascnn.report import FIGURES, write_report

TINY = ["--epochs", "1", "--set", "model.options={filters = [8, 16], dense = 32}", "--set", "train.verbose=0",
        "--set", 'export.formats=["keras", "saved_model"]', "--set", "evaluate.tsne_sample=120"]


def train(root, name, *extra):
    assert main(["train", "--output", str(root), "--name", name, *TINY, *extra]) == 0
    return root / name


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("runs"), "digits", "--set", 'export.formats=["keras", "saved_model", "tflite"]',
                 "--set", 'export.tflite=["float32"]')


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("runs"), "three-vs-eight", "--set", "data.classes=[3, 8]")


class Tables(HTMLParser):
    """The <table>s of a page as lists of rows of cell texts (header row first)."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def html_tables(page: str) -> list[list[list[str]]]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The pipe tables of a Markdown text, without their |---| rule lines."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if current is None:
                current = []
                tables.append(current)
            if not all(set(cell) <= set("-:") for cell in cells):
                current.append(cells)
        else:
            current = None
    return tables


def per_class_table(tables) -> dict[str, dict[str, str]]:
    """class name -> column -> cell, from the table whose header starts with "class"."""
    header, *rows = next(table for table in tables if table and table[0][0] == "class")
    return {row[0]: dict(zip(header, row)) for row in rows}


class EmbeddedImages(HTMLParser):
    """Collects the <img> tags of a page."""

    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def embedded_figures(page: str) -> dict[str, bytes]:
    parser = EmbeddedImages()
    parser.feed(page)
    figures = {}
    for image in parser.images:
        prefix, _, payload = image["src"].partition(",")
        assert prefix == "data:image/png;base64", "figures are embedded, never linked"
        figures[image["data-file"]] = base64.b64decode(payload, validate=True)
    return figures


def test_training_writes_the_report(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    for key in ("accuracy", "loss", "top_k_accuracy", "per_class", "confusion_matrix", "roc_auc"):
        assert key in metrics
    assert set(metrics["per_class"]["7"]) >= {"precision", "recall", "sensitivity", "specificity", "f1", "support"}
    assert set(metrics["roc_auc"]) == {"macro_ovr", "micro_ovr"}
    assert np.asarray(metrics["confusion_matrix"]["counts"]).sum() == metrics["n"]
    markdown = (digits_run / "report.md").read_text()
    for name in ("confusion_matrix.png", "roc.png", "training_curves.png", "top_losses.png",
                 "embedding_tsne.png", "gradcam.png"):
        image = Image.open(digits_run / name)
        image.load()
        assert image.format == "PNG" and min(image.size) > 200, name
        assert f"]({name})" in markdown, name  # report.md shows each figure it wrote
    assert not (digits_run / "threshold.png").exists()  # ten classes and no positive class chosen
    assert markdown.startswith("# Evaluation of model.keras on digits")


def test_report_html_and_markdown_show_the_numbers_in_metrics_json(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    tables = {"report.html": html_tables((digits_run / "report.html").read_text(encoding="utf-8")),
              "report.md": markdown_tables((digits_run / "report.md").read_text(encoding="utf-8"))}
    for page, found in tables.items():
        rows = per_class_table(found)
        assert list(rows) == metrics["class_names"], page
        for name, row in rows.items():
            for column in ("precision", "recall", "specificity", "f1", "roc_auc"):
                assert float(row[column]) == pytest.approx(metrics["per_class"][name][column], abs=5e-5), (page, name)
            assert int(row["support"]) == metrics["per_class"][name]["support"]
        summary = {row[0]: row[1] for row in found[0][1:]}
        assert float(summary["Accuracy"]) == pytest.approx(metrics["accuracy"], abs=5e-5), page
        assert int(summary["Test images"]) == metrics["n"]
    assert sum(metrics["per_class"][name]["support"] for name in metrics["class_names"]) == metrics["n"]


def test_report_html_is_self_contained_and_every_figure_decodes(digits_run):
    page = (digits_run / "report.html").read_text(encoding="utf-8")
    figures = embedded_figures(page)
    assert set(figures) == {name for name in FIGURES if (digits_run / name).is_file()}
    for name, png in figures.items():
        image = Image.open(io.BytesIO(png))
        image.load()
        assert image.format == "PNG" and min(image.size) > 200, name
        assert png == (digits_run / name).read_bytes()
    assert "<table" in page and "Per class" in page


def test_metrics_agree_with_sklearn_on_the_saved_model(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    data = load_data("digits")
    probabilities, labels = predict_split(load(digits_run / "model.keras").predict_proba, data)
    predicted = probabilities.argmax(1)
    assert metrics["confusion_matrix"]["counts"] == confusion_matrix(labels, predicted).tolist()
    recalls = recall_score(labels, predicted, average=None)
    assert [metrics["per_class"][name]["recall"] for name in data.class_names] == pytest.approx(recalls)


def test_evaluating_another_artifact_reports_beside_the_run(digits_run, capsys):
    assert main(["evaluate", str(digits_run), "--artifact", "saved_model/1"]) == 0
    folder = digits_run / "reports" / "saved_model-1"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["artifact"] == "saved_model/1"
    assert metrics["reference"]["accuracy_change"] == pytest.approx(0.0, abs=1e-9)  # the SavedModel agrees
    assert not (folder / "gradcam.png").exists()
    assert any("only a Keras artifact" in note for note in metrics["notes"])
    assert set(embedded_figures((folder / "report.html").read_text())) == {p.name for p in folder.glob("*.png")}
    assert f"report: {folder / 'report.html'}" in capsys.readouterr().out


def test_evaluating_the_tflite_file_reports_its_own_numbers(digits_run, capsys):
    assert main(["evaluate", str(digits_run), "--artifact", "model.tflite", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    folder = digits_run / "reports" / "model.tflite"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert printed["accuracy"] == metrics["accuracy"] and metrics["artifact"] == "model.tflite"
    parity = json.loads((digits_run / "manifest.json").read_text())["artifacts"]["model.tflite"]["parity"]
    assert metrics["accuracy"] == pytest.approx(parity["accuracy"]) and metrics["n"] == parity["n"]
    # the change against model.keras is export's accuracy_drop: 0, or a numerical tie (|dp| <= 1e-6) that
    # the one-epoch model's TFLite file breaks the other way
    assert metrics["reference"]["accuracy_change"] == pytest.approx(-parity["accuracy_drop"], abs=1e-9)
    data = load_data("digits")
    probabilities, labels = predict_split(load(digits_run / "model.tflite").predict_proba, data)
    assert metrics["confusion_matrix"]["counts"] == confusion_matrix(labels, probabilities.argmax(1)).tolist()
    assert list(per_class_table(html_tables((folder / "report.html").read_text()))) == data.class_names


def test_binary_task_reports_the_threshold_for_the_target_sensitivity(binary_run, capsys):
    assert json.loads((binary_run / "metrics.json").read_text())["threshold"]["target_sensitivity"] == 0.95
    assert main(["evaluate", str(binary_run), "--target-sensitivity", "0.99"]) == 0
    metrics = json.loads((binary_run / "metrics.json").read_text())
    threshold = metrics["threshold"]
    assert metrics["class_names"] == ["3", "8"] and threshold["positive_class"] == "8"
    assert threshold["target_sensitivity"] == 0.99
    assert threshold["at_target"]["sensitivity"] >= 0.99
    data = load_data(DataConfig(dataset="digits", classes=(3, 8)))
    probabilities, labels = predict_split(load(binary_run / "model.keras").predict_proba, data)
    recomputed = threshold_analysis(probabilities[:, 1], labels == 1, 0.99)["at_target"]
    assert threshold["at_target"] == pytest.approx(recomputed)
    assert "binary" in metrics["roc_auc"]
    assert (binary_run / "threshold.png").is_file()
    assert "threshold for '8' at sensitivity >= 0.99" in capsys.readouterr().out
    assert main(["evaluate", str(binary_run), "--positive-class", "3"]) == 0
    assert json.loads((binary_run / "metrics.json").read_text())["threshold"]["positive_class"] == "3"


def _listing(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize("args, message", [
    (["--target-sensitivity", "1.5"], "evaluate.target_sensitivity must be in (0, 1], got 1.5"),
    (["--target-sensitivity", "0"], "evaluate.target_sensitivity must be in (0, 1]"),
    (["--positive-class", "nine"], "positive class 'nine' is not a class of this dataset"),
    (["--set", "data.classes=[3, 5]"], "model.keras predicts the classes [3, 8] but dataset 'digits' has [3, 5]"),
    (["--artifact", "model_int8.tflite"], "has no model_int8.tflite; pass --artifact with one of its models"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(binary_run, capsys, args, message):
    before = _listing(binary_run)
    assert main(["evaluate", str(binary_run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert _listing(binary_run) == before


def test_run_directory_without_a_model_is_refused(binary_run, tmp_path, capsys):
    (tmp_path / "config.toml").write_text((binary_run / "config.toml").read_text())
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "has no model.keras" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "not a kerascnn run directory" in capsys.readouterr().err


def test_no_report_flag_turns_the_report_off():
    assert config_from_args(build_parser().parse_args(["train", "--no-report"])).evaluate.report is False
    assert config_from_args(build_parser().parse_args(["train"])).evaluate.report is True


def test_subclassed_model_gets_grad_cam_and_a_bad_positive_class_writes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    data = from_arrays(rng.integers(0, 256, (80, 8, 8, 1)), np.arange(80) % 2, class_names=["benign", "malignant"])
    model = build_model("cnn_subclassed", (8, 8, 1), 2, filters=(4, 8), dense=8)
    with pytest.raises(ConfigError, match="did you mean 'malignant'"):
        write_report(tmp_path, data, model, EvaluateConfig(positive_class="malignnt"))
    assert list(tmp_path.iterdir()) == []
    report = write_report(tmp_path, data, model, EvaluateConfig(tsne_sample=0))
    assert {"gradcam.png", "threshold.png", "roc.png"} <= set(report.figures)
    assert "embedding_tsne.png" not in report.figures
    assert any(note.startswith("t-SNE skipped") for note in report.notes)
    assert any(note.startswith("training curves skipped") for note in report.notes)
