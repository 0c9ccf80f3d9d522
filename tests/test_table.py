"""Labels from a table: CSV files and DataFrames, single- and multi-label, with every kind of bad row."""

import csv
import json

import numpy as np
import pandas as pd
import pytest

from kerascnn.config import DataConfig
from kerascnn.data.datasets import load_data
from kerascnn.data.table import from_dataframe
from kerascnn.errors import DataError
from messy_images import malformed_bytes, write_valid


def _bad_rows(root):
    """Rows that must be skipped, each with the start of the reason the scan must give."""
    (root / "broken.png").write_bytes(malformed_bytes("truncated", np.random.default_rng(0)))
    (root / "notes.txt").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    return [("missing.png", "cat", "missing file"), ("img_a/img_0.png", "dog", "duplicate row"),
            ("img_a/img_1.png", "", "empty label"), ("broken.png", "cat", "not a decodable image"),
            ("notes.txt", "cat", "not an image file"), ("empty.png", "dog", "empty file"), ("", "cat", "empty file name")]


def _table(root, multi_label=False):
    cats = write_valid(root / "img_a", 10, 40)
    dogs = write_valid(root / "img_b", 10, 200, seed=1)
    rows = [(p.relative_to(root).as_posix(), "cat") for p in cats] + [(p.relative_to(root).as_posix(), "dog")
                                                                      for p in dogs]
    if multi_label:  # every third cat also shows a bird
        rows = [(name, f"{label} bird" if i % 3 == 0 else label) for i, (name, label) in enumerate(rows)]
    bad = _bad_rows(root)
    return rows + [(name, label) for name, label, _ in bad], {reason for _, _, reason in bad}


def _write(path, rows, header=("filename", "label"), extra=None):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*header, *([extra] if extra else [])])
        writer.writerows([*row, *(["x"] if extra else [])] for row in rows)
    return path


def test_csv_beside_its_images_skips_every_bad_row_by_name(tmp_path, caplog):
    rows, reasons = _table(tmp_path)
    table = _write(tmp_path / "labels.csv", rows, extra="photographer")
    data = load_data(str(table))
    assert data.class_names == ["cat", "dog"] and not data.multi_label
    assert sum(data.counts.values()) == 20
    skipped = data.folder_scan.skipped
    assert {s.reason.split(":")[0] for s in skipped} == reasons
    assert any("missing.png" in s.path and "row 22" in s.reason for s in skipped)
    assert "photographer" in caplog.text  # the unknown column is named
    out = tmp_path / "skipped.csv"
    data.folder_scan.write_skipped(out)
    assert len(pd.read_csv(out)) == len(reasons)
    images, labels = next(data.train.batch(32).as_numpy_iterator())
    assert images.shape[1:] == (8, 8, 3) and labels.dtype == np.int32  # the median size of the images


def test_strict_stops_on_bad_rows_and_unknown_columns(tmp_path):
    rows, _ = _table(tmp_path)
    table = _write(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError, match=r"data.strict: 7 rows .*missing\.png"):
        load_data(DataConfig(dataset=str(table), strict=True))
    clean = _write(tmp_path / "clean.csv", rows[:20], extra="notes")
    with pytest.raises(DataError, match="unknown columns 'notes'"):
        load_data(DataConfig(dataset=str(clean), strict=True))


def test_multi_label_table_is_recognised_by_its_column_or_separator(tmp_path):
    rows, _ = _table(tmp_path, multi_label=True)
    images = tmp_path
    table = _write(tmp_path / "tags.csv", rows, header=("filename", "labels"))
    data = load_data(DataConfig(labels_csv=str(table), image_root=str(images)))
    assert data.multi_label and data.class_names == ["bird", "cat", "dog"]
    _, labels = next(data.train.batch(64).as_numpy_iterator())
    assert labels.dtype == np.float32 and labels.shape[1] == 3 and set(np.unique(labels)) <= {0.0, 1.0}
    assert (labels.sum(axis=1) >= 1).all() and (labels.sum(axis=1) == 2).any()
    # a `label` column whose values hold the separator is multi-label too; data.multi_label = false overrules
    piped = _write(tmp_path / "piped.csv", [(n, lab.replace(" ", "|")) for n, lab in rows])
    assert load_data(DataConfig(dataset=str(piped), label_separator="|")).multi_label
    single = load_data(DataConfig(dataset=str(piped), label_separator="|", multi_label=False))
    assert not single.multi_label and "cat|bird" in single.class_names


def test_from_dataframe_and_missing_columns(tmp_path):
    rows, _ = _table(tmp_path)
    frame = pd.DataFrame(rows[:20], columns=["filename", "label"])
    data = from_dataframe(frame, tmp_path, DataConfig(image_size=(8, 8)))
    assert data.input_shape == (8, 8, 3) and data.class_names == ["cat", "dog"]
    with pytest.raises(DataError, match="has no label column .*did you mean 'labels'"):
        from_dataframe(frame.rename(columns={"label": "lables"}), tmp_path)
    with pytest.raises(DataError, match="image root .* is not a folder"):
        from_dataframe(frame, tmp_path / "nowhere")


def test_cli_trains_on_a_table_under_another_image_root_with_balanced_class_weights(tmp_path, capsys):
    from kerascnn.cli import main

    rows, reasons = _table(tmp_path / "images")
    table = _write(tmp_path / "labels.csv", rows)  # not beside its images: data.image_root says where
    code = main(["train", "--dataset", str(table), "--set", f"data.image_root={tmp_path / 'images'}",
                 "--set", 'train.class_weight="balanced"', "--model", "mlp", "--set", "model.options.hidden=[8]",
                 "--set", "data.image_size=[8,8]", "--epochs", "1", "--output", str(tmp_path / "runs"), "--name", "t",
                 "--no-report", "--set", 'export.formats=["keras"]', "--set", "train.verbose=0"])
    assert code == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "t"
    skipped = pd.read_csv(run_dir / "skipped_files.csv")
    assert {reason.split(":")[0] for reason in skipped["reason"]} == reasons
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["class_names"] == ["cat", "dog"] and manifest["scan"]["skipped"] == len(reasons)
    assert sum(manifest["counts_per_class"]["train"].values()) == manifest["counts"]["train"]
