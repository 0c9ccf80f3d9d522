"""`kerascnn predict`, `kerascnn.load` and `kerascnn bench predict` over every artifact kind of a small run."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from kerascnn.cli import main
from kerascnn.config import load_config
from kerascnn.data.datasets import from_arrays
from kerascnn.errors import DataError, ModelLoadError
from kerascnn.predict import load
from kerascnn.runner import run

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ARTIFACTS = ["model.keras", "model.h5", "saved_model", "saved_model/1", "model.tflite", "model_float16.tflite",
             "model_dynamic.tflite", "model_int8.tflite", "model.onnx"]


def digit_pixels(index: int) -> np.ndarray:
    """One sklearn digit as the 0..255 uint8 8x8 image kerascnn's digits dataset holds."""
    return np.round(load_digits().images[index] * (255.0 / 16.0)).astype(np.uint8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small digits CNN with named classes, exported as every artifact kind."""
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    config = load_config(preset="digits", overrides=[
        "train.epochs=3", "train.verbose=0", "train.tensorboard=false", "model.options={filters=[8,16],dense=32}",
        'export.tflite=["float32","float16","dynamic","int8"]',
        'export.formats=["keras","h5","saved_model","tflite","onnx"]',
        f"run.output='{tmp_path_factory.mktemp('runs')}'", "run.name='small'"])
    data = from_arrays(images, digits.target, class_names=CLASS_NAMES, config=config.data, name="digits")
    return run(config, data=data).run_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of digit images: PNG at model size, and JPEG/BMP/GIF larger and in color."""
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(digit_pixels(0)).save(folder / "a_zero.png")
    Image.fromarray(digit_pixels(1)).resize((24, 24)).convert("RGB").save(folder / "b_one.jpg", quality=95)
    Image.fromarray(digit_pixels(2)).resize((16, 16)).convert("RGB").save(folder / "c_two.bmp")
    Image.fromarray(digit_pixels(3)).save(folder / "d_three.gif")
    return folder


def predict_json(capsys, *args) -> list[dict]:
    assert main(["predict", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_predict_runs_on_every_artifact_kind(run_dir, images, capsys, artifact):
    rows = predict_json(capsys, run_dir / artifact, images / "a_zero.png", images / "b_one.jpg", "--top-k", "3")
    assert [row["image"] for row in rows] == [str(images / "a_zero.png"), str(images / "b_one.jpg")]
    reference = load(run_dir / "model.keras").predict_proba([images / "a_zero.png", images / "b_one.jpg"])
    for row, expected in zip(rows, reference):
        classes = [p["class"] for p in row["predictions"]]
        probabilities = [p["probability"] for p in row["predictions"]]
        assert len(classes) == 3 and set(classes) <= set(CLASS_NAMES)
        assert probabilities == sorted(probabilities, reverse=True)
        if "_" not in artifact.split("/")[-1]:  # float artifacts: the same top class and probability
            assert classes[0] == CLASS_NAMES[int(expected.argmax())]
            assert probabilities[0] == pytest.approx(float(expected.max()), abs=1e-4)


def test_predict_csv_lists_top_k_rows_per_image_of_a_folder(run_dir, images, capsys):
    assert main(["predict", str(run_dir / "model.tflite"), str(images), "--csv", "--top-k", "2"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(row["image"].rsplit("/", 1)[-1], row["rank"]) for row in rows] == [
        (name, rank) for name in ("a_zero.png", "b_one.jpg", "c_two.bmp", "d_three.gif") for rank in ("1", "2")]
    assert all(row["class"] in CLASS_NAMES and 0.0 <= float(row["probability"]) <= 1.0 for row in rows)


def test_load_takes_paths_bytes_pil_images_and_arrays_alike(run_dir, images):
    predictor = load(run_dir / "model.tflite")
    path = images / "a_zero.png"
    from_path = predictor.predict_proba(path)
    np.testing.assert_allclose(predictor.predict_proba(path.read_bytes()), from_path, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(Image.open(path)), from_path, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(digit_pixels(0)), from_path, atol=1e-6)
    color = Image.open(images / "c_two.bmp")  # lossless: PIL and TF decode JPEG slightly differently
    np.testing.assert_allclose(predictor.predict_proba(color), predictor.predict_proba(images / "c_two.bmp"),
                               atol=1e-6)
    assert predictor.predict(path, top_k=2)[0][0][0] in CLASS_NAMES


def test_an_artifact_copied_alone_still_names_its_classes(run_dir, tmp_path):
    for name in ("model.tflite", "model_int8.tflite", "model.onnx"):
        shutil.copy(run_dir / name, tmp_path / name)
        assert load(tmp_path / name).class_names == CLASS_NAMES
    shutil.copytree(run_dir / "saved_model" / "1", tmp_path / "serving" / "7")
    assert load(tmp_path / "serving").class_names == CLASS_NAMES


def test_arrays_of_the_wrong_size_or_channels_are_refused(run_dir):
    predictor = load(run_dir / "model_int8.tflite")
    for bad in (np.zeros((2, 9, 9, 1)), np.zeros((8, 8, 3))):
        with pytest.raises(DataError, match=r"model takes \(8, 8, 1\)"):
            predictor.predict_proba(bad)


def test_non_models_are_refused_with_model_load_error(run_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.tflite").write_bytes(b"not a flatbuffer")
    (tmp_path / "fake.keras").write_bytes(b"not a zip")
    (tmp_path / "fake.onnx").write_bytes(b"not a protobuf")
    for path in ("notes.txt", "fake.tflite", "fake.keras", "fake.onnx", ".", "missing.tflite"):
        with pytest.raises(ModelLoadError):
            load(tmp_path / path)


@pytest.mark.parametrize("case", ["not a model", "undecodable image", "missing image", "top-k too large",
                                  "empty folder"])
def test_bad_input_is_one_line_and_exit_code_2(run_dir, images, tmp_path, capsys, case):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (tmp_path / "empty").mkdir()
    args = {"not a model": [tmp_path / "broken.png", images / "a_zero.png"],
            "undecodable image": [run_dir / "model.tflite", images / "a_zero.png", tmp_path / "broken.png"],
            "missing image": [run_dir / "model.tflite", tmp_path / "missing.png"],
            "top-k too large": [run_dir / "model.tflite", images / "a_zero.png", "--top-k", "11"],
            "empty folder": [run_dir / "model.tflite", tmp_path / "empty"]}[case]
    assert main(["predict", *map(str, args), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing half-printed for the images that did decode
    assert captured.err.startswith("kerascnn: error: ") and captured.err.count("\n") == 1


def test_bench_predict_times_every_artifact_against_raw_litert(run_dir, capsys):
    assert main(["bench", "predict", str(run_dir), "--json", "--repeats", "5", "--batch-size", "8"]) == 0
    results = json.loads(capsys.readouterr().out)
    for name in ("model.keras", "model.h5", "saved_model/1", "model.tflite", "model_int8.tflite", "model.onnx"):
        assert results[f"{name}.batch1_ms"] > 0 and results[f"{name}.throughput_img_s"] > 0
    for name in ("model.tflite", "model_float16.tflite", "model_dynamic.tflite", "model_int8.tflite"):
        assert results[f"{name}.predictor_over_raw"] == pytest.approx(
            results[f"{name}.batch1_ms"] / results[f"{name}.raw_litert_batch1_ms"], rel=1e-2)
        assert results[f"{name}.mediapipe_tasks_batch1_ms"] > 0  # the same file in MediaPipe Tasks


def test_training_folders_and_predict_decode_gray_bmp_gif_png_alike(tmp_path):
    from kerascnn.data.folder import file_dataset
    from kerascnn.predict import to_pixels

    rng = np.random.default_rng(0)
    paths = []
    for i, suffix in enumerate(["bmp", "gif", "png", "bmp"]):
        image = Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8))
        image = image.convert("RGB") if i == 3 else image
        paths.append(str(tmp_path / f"{i}.{suffix}"))
        image.save(paths[-1])
    loaded = np.stack([x for x, _ in file_dataset(paths, [0] * 4, 1, (8, 8)).as_numpy_iterator()])
    np.testing.assert_array_equal(loaded, to_pixels(paths, (8, 8, 1)))


PIL_MODES = ("1", "L", "P", "PA", "RGB", "RGBA", "LA", "CMYK", "I", "I;16", "F")
# Modes that hold the gray digit without loss: they must predict exactly what the L image predicts.
LOSSLESS_MODES = ("L", "LA", "RGB", "RGBA", "CMYK", "I", "I;16", "F")


def digit_in_mode(mode: str) -> Image.Image:
    gray = digit_pixels(7)
    if mode == "I;16":  # 16-bit: 0..255 scaled to 0..65535, as a 16-bit PNG of the same picture holds it
        return Image.fromarray(gray.astype(np.uint16) * 257)  # PIL reads uint16 arrays as mode I;16
    return Image.fromarray(gray).convert(mode)


@pytest.mark.parametrize("artifact", ["model.keras", "model.tflite"])
def test_pil_images_in_every_mode_predict_as_their_pixels_say(run_dir, artifact):
    predictor = load(run_dir / artifact)
    reference = predictor.predict_proba(digit_in_mode("L"))
    for mode in PIL_MODES:
        image = digit_in_mode(mode)
        assert image.mode == mode
        probabilities = predictor.predict_proba(image)
        assert probabilities.shape == (1, len(CLASS_NAMES)) and abs(probabilities.sum() - 1) < 1e-4, mode
        if mode in LOSSLESS_MODES:
            np.testing.assert_allclose(probabilities, reference, atol=2e-3, err_msg=mode)
        else:  # 1-bit and palette images predict what their own conversion to L or RGB predicts
            converted = image.convert("L" if mode == "1" else "RGBA" if mode == "PA" else "RGB")
            np.testing.assert_allclose(probabilities, predictor.predict_proba(converted), atol=1e-5, err_msg=mode)
