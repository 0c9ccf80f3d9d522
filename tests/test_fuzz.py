"""Fuzzing: the config parser and the folder loader take any input without an unexpected exception."""

from __future__ import annotations

import csv
import dataclasses
import json
import tomllib
import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kerascnn.config import RunConfig, config_from_dict, load_config
from kerascnn.data.folder import file_dataset, scan_folder
from kerascnn.errors import ConfigError, DataError
from kerascnn.runner import run
from messy_images import REASONS, encoded, malformed_bytes, write_malformed, write_valid

SECTIONS = {f.name: [g.name for g in dataclasses.fields(typing.get_type_hints(RunConfig)[f.name])]
            for f in dataclasses.fields(RunConfig)}
MODEL_OPTIONS = ["filters", "dense", "dropout", "conv_dropout", "hidden", "kernel_initializer"]

scalars = st.one_of(st.booleans(), st.integers(), st.integers(-3, 40), st.floats(allow_nan=True),
                    st.floats(0, 1), st.text(max_size=12), st.sampled_from(["cnn", "mlp", "digits", "adam", "cosine",
                                                                             "keras", "float32", "saved_models"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=3), max_leaves=8)


@st.composite
def config_mappings(draw):
    """Nested mappings near the real schema: real and misspelt sections and keys, values of any type."""
    mapping = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "trian", "extra"]), max_size=5, unique=True)):
        keys = SECTIONS.get(section, []) + ["epoch", "bogus"]
        table = draw(st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), values, max_size=4))
        if section == "model" and draw(st.booleans()):
            table["options"] = draw(st.dictionaries(st.sampled_from(MODEL_OPTIONS), values, max_size=3))
        mapping[section] = draw(st.just(table) | values)
    return mapping


def toml_nulls(mapping):
    """Values of None, as the Python API may pass for optional fields (TOML itself has no null)."""
    return st.just({section: {key: None for key in table} if isinstance(table, dict) else table
                    for section, table in mapping.items()})


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_mappings().flatmap(lambda mapping: st.just(mapping) | toml_nulls(mapping)))
def test_any_mapping_is_a_valid_config_or_a_config_error(mapping):
    try:
        config = config_from_dict(mapping)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert isinstance(config, RunConfig)
    # What is accepted survives the trip through config.toml that `--resume` relies on.
    assert config_from_dict(tomllib.loads(config.to_toml())).to_toml() == config.to_toml()


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.text(max_size=40) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
    [f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys] + ["model.options.filters", "x.y"]),
    st.text(max_size=15)), max_size=4))
def test_any_override_text_is_a_valid_config_or_a_config_error(overrides):
    try:
        assert isinstance(load_config(overrides=overrides), RunConfig)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None, database=None)
@given(st.text(max_size=200))
def test_any_toml_text_is_a_config_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("toml") / "config.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)


file_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1,
                     max_size=16).filter(lambda name: name not in (".", "..") and len(name.encode()) < 200)


@settings(max_examples=25, deadline=None, database=None)
@given(files=st.lists(st.tuples(file_names, st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".jpeg", ".txt", ""]),
                                st.sampled_from(list(REASONS) + ["valid"]), st.integers(0, 2 ** 32 - 1)),
                      max_size=12, unique_by=lambda f: f[0] + f[1]))
def test_folder_loader_sorts_every_file_into_used_or_skipped(tmp_path_factory, files):
    """Random names and contents: every file is used or skipped with a reason; the used ones all decode."""
    root = tmp_path_factory.mktemp("fuzz")
    write_valid(root / "a", 2, 40)
    write_valid(root / "b", 2, 210)
    for i, (stem, suffix, kind, seed) in enumerate(files):
        path = root / "ab"[i % 2] / f"{stem}{suffix}"
        rng = np.random.default_rng(seed)
        valid = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
        path.write_bytes(encoded(valid, "PNG") if kind == "valid" else malformed_bytes(kind, rng))
    try:
        scan = scan_folder(root)
    except DataError as exc:  # only when the fuzzed files remove a class
        assert "\n" not in str(exc)
        return
    all_files = {str(p) for p in root.rglob("*") if p.is_file()}
    assert set(scan.paths) | {s.path for s in scan.skipped} == all_files
    assert not set(scan.paths) & {s.path for s in scan.skipped}
    assert all(s.reason for s in scan.skipped)
    decoded = list(file_dataset(scan.paths, scan.labels, scan.channels, (8, 8)).as_numpy_iterator())
    assert len(decoded) == len(scan.paths)


def test_a_folder_with_hundreds_of_malformed_files_trains_and_reports_them(tmp_path):
    root = tmp_path / "photos"
    expected = {}
    for label, value in (("cats", 40), ("dogs", 215)):
        write_valid(root / label, 30, value, size=12)
        expected.update(write_malformed(root / label, 160, seed=value))
    config = load_config(values={"data.dataset": str(root), "data.image_size": [12, 12], "run.output": str(tmp_path),
                                 "run.name": "run", "train.epochs": 1, "train.verbose": 0, "train.tensorboard": False,
                                 "model.options": {"filters": [4], "dense": 16}, "export.formats": ["keras"]})
    result = run(config)
    with open(result.run_dir / "skipped_files.csv", newline="", encoding="utf-8") as f:
        rows = {row["path"]: row["reason"] for row in csv.DictReader(f)}
    assert set(rows) == {str(p) for p in expected}
    assert all(rows[str(p)].startswith(reason) for p, reason in expected.items())
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["scan"]["skipped"] == 320 and manifest["scan"]["images"] == 60
    assert sum(manifest["counts"].values()) == 60
    assert manifest["epochs_run"] == 1


@pytest.mark.parametrize("text", ["train.epochs=1e400", "train.learning_rate=1e400", "train.learning_rate=nan",
                                  "data.validation_split=inf", "run.name=\"a\\u0000b\"", "data.dataset=\"x\\u0000\""])
def test_values_found_by_fuzzing_are_config_errors(text):
    with pytest.raises(ConfigError):
        load_config(overrides=[text])
