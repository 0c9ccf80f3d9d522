"""`kerascnn inspect`: planted exact and near duplicates across splits, no false positive among distinct
digits, cleanlab's candidates catch planted label flips, and the CLI's JSON/HTML/CSV."""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from kerascnn.audit import inspect
from kerascnn.cli import main
from kerascnn.config import DataConfig
from kerascnn.data.datasets import from_arrays, load_data
from kerascnn.runner import leak_warnings


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return np.round(d.images * (255.0 / 16.0)).astype(np.uint8), d.target


def _planted_folder(root, digits, per_class=40):
    """root/<digit>/<i>.png for digits 0-2, plus copies of six of them: byte copies, enlarged, JPEG."""
    images, labels = digits
    originals = []
    for k in range(3):
        (root / str(k)).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == k)[:per_class]):
            path = root / str(k) / f"{i}.png"
            Image.fromarray(images[index]).save(path)
            originals.append(path)
    planted = {}
    for n, path in enumerate(originals[::20]):  # six originals, two of each class
        image = Image.open(path)
        if n % 3 == 0:
            copy = path.with_name(f"copy_{n}.png")
            shutil.copy(path, copy)
        elif n % 3 == 1:
            copy = path.with_name(f"big_{n}.png")
            image.resize((32, 32), Image.Resampling.BILINEAR).save(copy)
        else:
            copy = path.with_name(f"jpeg_{n}.jpg")
            buffer = io.BytesIO()
            image.convert("RGB").resize((28, 28), Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=75)
            copy.write_bytes(buffer.getvalue())
        planted[str(copy)] = (str(path), ["exact", "near", "near"][n % 3])
    conflict = root / "1" / "conflict.png"  # digit 0's image filed under 1 too: one image, two labels
    shutil.copy(originals[5], conflict)
    planted[str(conflict)] = (str(originals[5]), "exact")
    return planted


def test_planted_duplicates_are_found_with_their_splits(tmp_path, digits):
    planted = _planted_folder(tmp_path / "digits", digits)
    audit = inspect(str(tmp_path / "digits"), label_issues=False)
    groups = audit.result["duplicates"]
    found = {frozenset(m["path"] for m in g["members"]): g for g in groups}
    data = load_data(DataConfig(dataset=str(tmp_path / "digits")))
    split_of = {str(p): split for split, (paths, _) in data.files.items() for p in paths}
    for copy, (original, kind) in planted.items():
        group = found.get(frozenset([copy, original]))
        assert group is not None and group["kind"] == kind, (copy, kind)
        assert {m["path"]: m["split"] for m in group["members"]} == {copy: split_of[copy], original: split_of[original]}
        assert group["across_splits"] == (split_of[copy] != split_of[original])
        assert group["conflicting_labels"] == ("conflict" in copy) != group["within_class"]
    assert len(groups) == len(planted)  # nothing else: no false positive among the distinct digits
    assert any(g["across_splits"] for g in groups)  # leakage is among them (seeded split)


def test_no_near_duplicate_among_distinct_digits(digits):
    result = inspect("digits", label_issues=False).result
    assert result["duplicates"] == [] and result["duplicate_summary"]["phash_candidates"] > 1000
    assert result["counts"]["total"]["0"] == 178 and result["properties"]["sizes"] == {"8x8": 1797}


def test_cleanlab_candidates_include_most_planted_label_flips(digits):
    images, labels = digits
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(labels), size=len(labels) // 20, replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    data = from_arrays(images, noisy, class_names=[str(k) for k in range(10)])
    # An audit path is "split/position"; the pixels lead back to the original index (digits has no duplicates).
    original = {images[i].tobytes(): i for i in range(len(images))}
    index_of = {f"{split}/{i}": original[image.tobytes()] for split, (x, _) in data.arrays.items()
                for i, image in enumerate(x)}
    result = inspect(data, near_duplicates=False).result
    candidates = {index_of[issue["path"]] for issue in result["label_issues"]}
    recall = len(candidates & set(flipped.tolist())) / len(flipped)
    precision = len(candidates & set(flipped.tolist())) / len(candidates)
    assert recall >= 0.6 and precision >= 0.5, (recall, precision)
    issue = result["label_issues"][0]
    assert set(issue) == {"path", "split", "given_label", "suggested_label", "score"}


def test_cli_json_and_output_files(tmp_path, digits, capsys):
    _planted_folder(tmp_path / "digits", digits)
    assert main(["inspect", str(tmp_path / "digits"), "--json", "--output", str(tmp_path / "audit")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"counts", "duplicates", "label_issues"} <= set(result)
    assert all({"path", "split"} <= set(m) for g in result["duplicates"] for m in g["members"])
    for name in ("audit.html", "audit.json", "duplicates.csv", "label_issues.csv", "unreadable.csv"):
        assert (tmp_path / "audit" / name).is_file(), name
    assert len(pd.read_csv(tmp_path / "audit" / "duplicates.csv")) == sum(len(g["members"]) for g in result["duplicates"])
    assert "<h2>Duplicates</h2>" in (tmp_path / "audit" / "audit.html").read_text()


def test_train_warns_on_leaked_test_images_and_deduplicate_removes_them(digits):
    images, labels = digits
    x = np.concatenate([images[:300], images[:30]])  # 30 images twice: some copies land in the test split
    y = np.concatenate([labels[:300], labels[:30]])
    warning = leak_warnings(from_arrays(x, y))
    assert warning and "exact copies of training or validation images" in warning[0]
    clean = from_arrays(x, y, config=DataConfig(dataset="arrays", deduplicate=True))
    assert leak_warnings(clean) == [] and sum(clean.counts.values()) == 300
