"""Image-folder scan and validation: unusual images work, malformed files are skipped with a reason."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kerascnn.cli import main
from kerascnn.config import DataConfig
from kerascnn.data.datasets import load_data
from kerascnn.data.folder import decode_image, scan_folder
from kerascnn.errors import DataError
from messy_images import REASONS, write_malformed, write_unusual, write_valid


@pytest.fixture
def messy(tmp_path):
    """root/a: every unusual-but-valid case; root/b: plain images plus malformed files."""
    root = tmp_path / "messy photos"
    unusual = write_unusual(root / "a")
    plain = write_valid(root / "b", 12, 200)
    malformed = write_malformed(root / "b", len(REASONS) * 2)
    return root, unusual, plain, malformed


def test_unusual_images_are_kept_and_malformed_files_skipped_with_reasons(messy):
    root, unusual, plain, malformed = messy
    scan = scan_folder(root)
    assert sorted(scan.paths) == sorted(str(p) for p in unusual + plain)
    assert scan.class_names == ["a", "b"]
    assert scan.channels == 3
    reasons = {s.path: s.reason for s in scan.skipped}
    assert set(reasons) == {str(p) for p in malformed}
    for path, expected in malformed.items():
        assert reasons[str(path)].startswith(expected), (path, reasons[str(path)])
    summary = scan.summary()
    assert summary["files_seen"] == len(unusual) + len(plain) + len(malformed)
    assert summary["images"] == len(unusual) + len(plain) and summary["skipped"] == len(malformed)
    assert sum(summary["skipped_by_reason"].values()) == len(malformed)


def test_every_split_of_a_messy_folder_decodes_without_error(messy):
    root, unusual, plain, _ = messy
    data = load_data(DataConfig(dataset=str(root), image_size=(16, 16), validation_split=0.25, test_split=0.25))
    seen = 0
    for split in ("train", "validation", "test"):
        for pixels, label in getattr(data, split).as_numpy_iterator():
            assert pixels.shape == (16, 16, 3) and np.isfinite(pixels).all()
            assert 0 <= pixels.min() <= pixels.max() <= 255
            seen += 1
    assert seen == len(unusual) + len(plain) == sum(data.counts.values())


@pytest.mark.parametrize("name", ["palette.png", "palette.gif", "animated.gif", "gray_alpha.png", "rgba.png",
                                  "rgba.bmp", "gray.bmp", "cmyk.jpg"])
def test_training_pixels_match_what_pil_shows(messy, name):
    """The decoder gives the image a viewer shows: palette applied, alpha dropped, a GIF's first frame."""
    root = messy[0]
    with Image.open(root / "a" / name) as image:
        image.seek(0)
        expected = np.asarray(image.convert("RGB"), np.float32)
    pixels = decode_image(tf.constant(str(root / "a" / name)), 3, expected.shape[:2]).numpy()
    tolerance = 3 if name.endswith(".jpg") else 0  # libjpeg's and PIL's CMYK conversions round differently
    assert np.abs(pixels - expected).max() <= tolerance


def test_grayscale_folder_of_mixed_formats_trains_on_one_channel(tmp_path):
    """Gray PNG, BMP and gray+alpha PNG: one channel, although tf.io.decode_image(channels=1) refuses BMP."""
    rng = np.random.default_rng(0)
    for label in ("dark", "light"):
        (tmp_path / label).mkdir()
        for i, (fmt, mode) in enumerate([("PNG", "L"), ("BMP", "L"), ("PNG", "LA"), ("JPEG", "L")] * 3):
            image = Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8)).convert(mode)
            image.save(tmp_path / label / f"{i}.{fmt.lower()}", format=fmt)
    data = load_data(DataConfig(dataset=str(tmp_path), image_size=(9, 11)))
    assert data.input_shape == (9, 11, 1)
    assert sum(1 for _ in data.train.concatenate(data.validation).concatenate(data.test)) == 24


def test_layout_rule_nested_folders_empty_classes_and_root_files(tmp_path, caplog):
    write_valid(tmp_path / "cats" / "2023" / "summer", 3, 50)
    write_valid(tmp_path / "dogs", 3, 200)
    (tmp_path / "empty").mkdir()
    write_malformed(tmp_path / "broken", 3)  # a class folder holding only unusable files
    write_valid(tmp_path / ".cache", 2, 100)  # hidden folders are not classes
    (tmp_path / "README.md").write_text("about this dataset")
    with caplog.at_level(logging.WARNING):
        scan = scan_folder(tmp_path)
    assert scan.class_names == ["cats", "dogs"]
    assert list(scan.labels) == [0, 0, 0, 1, 1, 1]
    assert scan.empty_classes == ["broken", "empty"]
    assert {s.reason for s in scan.skipped if s.path.endswith("README.md")} == {"not inside a class folder"}
    assert "has no usable images" in caplog.text and "skipped_files.csv" in caplog.text
    # the warning names the first skipped files itself: a run that fails before its run directory exists
    # writes no skipped_files.csv
    first = scan.skipped[0]
    assert f"{first.path} (" in caplog.text and f"and {len(scan.skipped) - 3} more" in caplog.text


def test_strict_makes_skipped_files_an_error_listing_them(messy):
    root, _, _, malformed = messy
    with pytest.raises(DataError) as error:
        scan_folder(root, strict=True)
    message = str(error.value)
    assert "\n" not in message and f"{len(malformed)} files" in message and "--strict" in message
    assert sum(str(path) in message for path in malformed) == 5  # the first five are named, the rest counted
    assert "and 9 more" in message


def test_cli_strict_exits_2_and_writes_nothing(messy, tmp_path, capsys):
    code = main(["train", "--dataset", str(messy[0]), "--strict", "--output", str(tmp_path / "runs"), "--epochs", "1"])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_missing_folder_and_single_class_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    write_valid(tmp_path / "only", 4, 10)
    write_malformed(tmp_path / "bad", 2)
    with pytest.raises(DataError, match="one class only"):
        scan_folder(tmp_path)


# Issue 20: shapes said out loud.

def _write(path, size, mode="L", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size[::-1], value if mode == "L" else (value, 0, 0)).save(path)


def test_image_size_is_the_median_of_the_images_capped(tmp_path):
    for i, size in enumerate([(10, 10), (12, 14), (30, 20), (12, 16)]):
        _write(tmp_path / "small" / "ab"[i % 2] / f"{i}.png", size)
    assert scan_folder(tmp_path / "small").inferred_size() == (12, 15)
    for i, size in enumerate([(300, 400), (500, 260), (240, 300), (400, 230)]):
        _write(tmp_path / "big" / "ab"[i % 2] / f"{i}.png", size)
    assert scan_folder(tmp_path / "big").inferred_size() == (224, 224)


def test_color_mode_forces_the_channels_a_few_rgb_files_would_change(tmp_path):
    for i in range(8):
        _write(tmp_path / "ab"[i % 2] / f"{i}.png", (8, 8), "L" if i else "RGB")
    assert load_data(DataConfig(dataset=str(tmp_path))).input_shape == (8, 8, 3)  # auto: one RGB file -> rgb
    data = load_data(DataConfig(dataset=str(tmp_path), color_mode="grayscale"))
    assert data.input_shape == (8, 8, 1) and data.folder_scan.rgb_files() == 1
    image, _ = next(data.train.as_numpy_iterator())
    assert image.shape == (8, 8, 1)


def test_a_run_prints_and_records_the_inferred_shape(tmp_path, capsys):
    from kerascnn.config import load_config
    from kerascnn.rundir import read_run_config
    from kerascnn.runner import run

    for i in range(24):
        _write(tmp_path / "images" / "ab"[i % 2] / f"{i}.png", (12, 10), value=40 + 150 * (i % 2))
    config = load_config(values={"data.dataset": str(tmp_path / "images"), "model.name": "mlp",
                                 "model.options": {"hidden": [8]}, "run.output": str(tmp_path / "runs"),
                                 "run.name": "r", "train.epochs": 1, "train.tensorboard": False,
                                 "evaluate.tsne_sample": 0, "export.formats": ["keras"]})
    result = run(config)
    out = capsys.readouterr().out
    assert repr(result).startswith(f"RunResult(run_dir={str(tmp_path / 'runs' / 'r')!r}, model=") and len(repr(result)) < 400
    assert "Trained: mlp on " in (tmp_path / "runs" / "r" / "report.md").read_text()  # the report's training context
    assert f"data: {tmp_path / 'images'}: " in out and "2 classes, 12x10x1 (the median image size; set " \
                                                       "data.image_size to change it; grayscale: every image is)" in out
    assert read_run_config(tmp_path / "runs" / "r").data.image_size == (12, 10)
