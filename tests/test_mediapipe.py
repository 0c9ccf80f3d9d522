"""Every TFLite variant runs unchanged in MediaPipe Tasks' ImageClassifier, with our class names, and
MediaPipe's own metadata reader finds the labels and normalisation kerascnn wrote."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerascnn.config import DataConfig, ExportConfig
from kerascnn.data.datasets import from_arrays, load_data
from kerascnn.export import export
from kerascnn.models import build_model
from kerascnn.predict import load
from kerascnn.tflite_metadata import metadata_modules, read_class_names

VARIANTS = {"float32": "model.tflite", "float16": "model_float16.tflite", "dynamic": "model_dynamic.tflite",
            "int8": "model_int8.tflite"}
MIN_AGREEMENT = {"float32": 0.99, "float16": 0.99, "dynamic": 0.99, "int8": 0.97}
RGB_CLASSES = ["red", "green", "blue"]


def rgb_data():
    """16x16 RGB images whose brightest channel is the class: a colour task a CNN learns in one epoch."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 70)
    images = rng.normal(70, 25, (len(labels), 16, 16, 3))
    images[np.arange(len(labels)), :, :, labels] += 110
    return from_arrays(np.clip(images, 0, 255).round().astype(np.uint8), labels, class_names=RGB_CLASSES)


def trained_run(data, folder, **export_options):
    model = build_model("cnn", data.input_shape, data.num_classes, filters=[8], dense=16)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(data.train.batch(16), epochs=1, verbose=0)
    config = ExportConfig(formats=("tflite",), tflite=tuple(VARIANTS), author="Ada Lovelace",
                          license="Apache-2.0", **export_options)
    return export(model, folder, data, config)


@pytest.fixture(scope="module", params=["rgb", "gray"])
def run(request, tmp_path_factory):
    """(data, run folder, artifacts) for an RGB model and a gray (digits) model, all four variants."""
    data = rgb_data() if request.param == "rgb" else load_data(DataConfig(dataset="digits", classes=(0, 1, 2)))
    folder = tmp_path_factory.mktemp(request.param)
    return data, folder, trained_run(data, folder)


def classify_all(path, images):
    """(category names of the first image in index order, top-1 indices) from MediaPipe Tasks itself."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
    names, top1 = None, []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                  data=np.ascontiguousarray(rgb.astype(np.uint8))))
            categories = result.classifications[0].categories
            names = names or [c.category_name for c in sorted(categories, key=lambda c: c.index)]
            top1.append(categories[0].index)  # MediaPipe sorts by score
    return names, np.array(top1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_in_mediapipe_tasks_with_our_names_and_agrees_with_predict(run, variant):
    data, folder, artifacts = run
    path = folder / VARIANTS[variant]
    images = data.arrays["test"][0]
    names, mediapipe_top1 = classify_all(path, images)
    assert names == list(data.class_names)
    predictor = load(path)
    assert predictor.input_shape == data.input_shape  # gray models still take gray pixels in kerascnn
    ours = [predictor.class_names.index(row[0][0]) for row in predictor.predict(images)]
    assert (mediapipe_top1 == ours).mean() >= MIN_AGREEMENT[variant]
    check = artifacts[VARIANTS[variant]]["mediapipe_tasks"]  # the export's own check, in the manifest
    assert check["n"] == len(images) and check["criterion"] == ("exact" if variant == "float32" else "quantized")
    if variant == "float32":
        assert check["passed"] and check["top1_agreement"] == 1.0 and check["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_mediapipe_metadata_displayer_shows_labels_and_normalisation(run, variant):
    data, folder, _ = run
    metadata, _, _ = metadata_modules()
    displayer = metadata.MetadataDisplayer.with_model_file(str(folder / VARIANTS[variant]))
    assert displayer.get_packed_associated_file_list() == ["labels.txt"]
    assert displayer.get_associated_file_buffer("labels.txt").decode().splitlines() == list(data.class_names)
    shown = json.loads(displayer.get_metadata_json())
    assert (shown["name"], shown["version"], shown["author"], shown["license"]) == (folder.name, "1", "Ada Lovelace",
                                                                                   "Apache-2.0")
    assert shown["min_parser_version"] == "1.0.0"
    assert f"{len(data.class_names)} classes" in shown["description"]
    subgraph = shown["subgraph_metadata"][0]
    image, = subgraph["input_tensor_metadata"]
    assert image["content"]["content_properties"]["color_space"] == "RGB"
    assert image["process_units"] == [{"options_type": "NormalizationOptions", "options": {"mean": [0.0],
                                                                                          "std": [1.0]}}]
    scores, = subgraph["output_tensor_metadata"]
    assert scores["associated_files"][0]["name"] == "labels.txt"
    assert scores["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    if variant == "int8":  # the stored pixel range and the quantization as the file has them
        from ai_edge_litert.interpreter import Interpreter

        scale, zero_point = Interpreter(model_path=str(folder / VARIANTS[variant])).get_input_details()[0]["quantization"]
        assert image["stats"] == {"min": [float(zero_point)], "max": [float(min(255, round(255 / scale + zero_point)))]}
        assert f"real value = {scale:.6g} x (q - {zero_point})" in image["description"]
    else:
        assert image["stats"] == {"min": [0.0], "max": [255.0]}


def test_export_table_has_a_mediapipe_row_under_each_tflite_file(run, capsys):
    from kerascnn.cli import MEDIAPIPE_ROW, print_artifacts

    print_artifacts(run[2])
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines[0:8:2]] == list(VARIANTS.values())
    assert all(line.startswith(MEDIAPIPE_ROW) and line.split()[-1] in ("ok", "FAILED") for line in lines[1:8:2])


@pytest.mark.parametrize("run", ["rgb"], indirect=True)  # a fresh process each: once is enough
def test_a_file_copied_alone_names_its_classes_from_the_standard_metadata(run, tmp_path):
    data, folder, _ = run
    alone = tmp_path / "copied.tflite"
    shutil.copy(folder / "model_int8.tflite", alone)  # no labels.txt or manifest.json beside it
    assert read_class_names(alone.read_bytes()) == list(data.class_names)
    script = (f"import sys; from kerascnn.predict import load; p = load({str(alone)!r}); "
              f"print(p.class_names); assert 'mediapipe' not in sys.modules and 'tensorflow' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(list(data.class_names))


@pytest.mark.parametrize("run", ["gray"], indirect=True)  # an RGB file into a gray model's file
def test_the_readme_snippet_runs_our_file_in_mediapipe_tasks(run, tmp_path):
    data, folder, _ = run
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("## Use it on Android/iOS/web with MediaPipe Tasks")[1].split("```python\n")[1]
    snippet = snippet.split("```")[0].replace("saved_models/mine/model_int8.tflite", str(folder / "model_int8.tflite"))
    image = data.arrays["test"][0][0].astype(np.uint8)
    Image.fromarray(np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image).save(tmp_path / "seven.png")
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)  # a fresh process, as a user runs it: no kerascnn imported
    assert result.returncode == 0, result.stderr[-2000:]
    printed = [line.split()[0] for line in result.stdout.strip().splitlines()]
    assert len(printed) == 3 and set(printed) <= set(data.class_names)
    assert printed[0] == load(folder / "model_int8.tflite").predict(tmp_path / "seven.png")[0][0][0]


def test_gray_input_option_keeps_one_channel_and_mediapipe_is_skipped(tmp_path):
    data = load_data(DataConfig(dataset="digits", classes=(0, 1)))
    model = build_model("mlp", data.input_shape, data.num_classes, hidden=[8])
    artifacts = export(model, tmp_path, data, ExportConfig(formats=("tflite",), tflite=("float32",),
                                                          tflite_gray_input=True))
    from ai_edge_litert.interpreter import Interpreter

    assert list(Interpreter(model_path=str(tmp_path / "model.tflite")).get_input_details()[0]["shape"]) == [1, 8, 8, 1]
    assert artifacts["model.tflite"]["mediapipe_tasks"] == {
        "skipped": "MediaPipe Tasks cannot run model.tflite: Only RGB color space is supported for now."}
    assert artifacts["model.tflite"]["parity"]["passed"]
    metadata, _, _ = metadata_modules()
    shown = json.loads(metadata.MetadataDisplayer.with_model_file(str(tmp_path / "model.tflite")).get_metadata_json())
    image = shown["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert image["content"]["content_properties"]["color_space"] == "GRAYSCALE"


def test_minimum_parser_version_follows_mediapipes_rules():
    import flatbuffers

    from kerascnn.tflite_metadata import _minimum_parser_version

    _, _, fb = metadata_modules()

    def version(subgraph_changes=None, files=None):
        subgraph = fb.SubGraphMetadataT()
        subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [fb.TensorMetadataT()], [fb.TensorMetadataT()]
        subgraph.outputTensorMetadata[0].associatedFiles = files
        for key, value in (subgraph_changes or {}).items():
            setattr(subgraph, key, value)
        model = fb.ModelMetadataT()
        model.subgraphMetadata = [subgraph]
        builder = flatbuffers.Builder(0)
        builder.Finish(model.Pack(builder), b"M001")
        return _minimum_parser_version(bytes(builder.Output()))

    def file(kind, file_version=None):
        entry = fb.AssociatedFileT()
        entry.name, entry.type, entry.version = "f.txt", kind, file_version
        return [entry]

    assert version(files=file(fb.AssociatedFileType.TENSOR_AXIS_LABELS)) == "1.0.0"
    assert version(files=file(fb.AssociatedFileType.VOCABULARY)) == "1.0.1"
    assert version(files=file(fb.AssociatedFileType.TENSOR_AXIS_LABELS, "2")) == "1.4.1"
    assert version({"inputProcessUnits": []}) == "1.1.0"
    assert version({"outputTensorGroups": [fb.TensorGroupT()]}) == "1.2.0"
    assert version({"customMetadata": [fb.CustomMetadataT()]}) == "1.5.0"
