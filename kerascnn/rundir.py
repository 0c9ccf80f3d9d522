"""The run directory: its names, the one atomic writer, and reading a run's config and manifest.

Every module that reads or writes a run directory takes its names from here, so the layout is
written down once:

    <run>/config.toml            the resolved config (image size included)
    <run>/manifest.json          versions, data, metrics, artifacts with parity
    <run>/model.keras, model.h5, model*.tflite, model.onnx, labels.txt
    <run>/saved_model/<version>/ TF Serving layout
    <run>/history.csv, checkpoints/, logs/, reports/, skipped_files.csv, metrics.json, report.*

A run directory is recognised by its config.toml. This module sits on the floor of the package
(it imports only config and errors), so data, models, training, export and predict may all use it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from kerascnn.config import RunConfig, load_config
from kerascnn.errors import NotARunDirectory

CONFIG_FILE = "config.toml"
MANIFEST_FILE = "manifest.json"
HISTORY_FILE = "history.csv"
LABELS_FILE = "labels.txt"
KERAS_FILE = "model.keras"
H5_FILE = "model.h5"
SAVED_MODEL_DIR = "saved_model"
CHECKPOINT_FILE = "checkpoints/best.keras"
BACKUP_DIR = "checkpoints/backup"
TRAINED_MODEL = "checkpoints/trained.keras"  # written when fitting ends: the mark of a finished training
LOG_DIR = "logs"
REPORTS_DIR = "reports"
SKIPPED_FILES_CSV = "skipped_files.csv"
METRICS_FILE, HTML_FILE, MARKDOWN_FILE = "metrics.json", "report.html", "report.md"
TEMPORARY_PREFIX = ".tmp-"
STAGING_PREFIXES = (TEMPORARY_PREFIX, ".export-", ".incoming-")  # what a killed writer can leave behind


def temporary_path(path: Path) -> Path:
    """A hidden name beside `path` with the same suffix (Keras picks the file format by suffix)."""
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{path.name}")


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary path)`, then rename the finished file onto `path`: a reader (or a kill)
    never sees a half-written file."""
    temporary = temporary_path(Path(path))
    write(temporary)
    os.replace(temporary, path)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_bytes_atomically(path: Path, content: bytes) -> None:
    write_atomically(path, lambda temporary: temporary.write_bytes(content))


def write_json_atomically(path: Path, value: Any) -> None:
    write_text_atomically(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def move_into_place(source: Path, target: Path) -> None:
    """Replace `target` by `source` (file or folder) with renames on the same filesystem."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        old = target.with_name(f"{TEMPORARY_PREFIX}{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old)
    else:
        os.replace(source, target)


def remove_staging(folder: Path) -> list[Path]:
    """Delete what killed writers left in `folder` and its subfolders (hidden `.tmp-*`, `.export-*`,
    `.incoming-*` entries); return what was removed."""
    removed = []
    for path in sorted(Path(folder).rglob(".*"), key=lambda p: len(p.parts)):
        if path.name.startswith(STAGING_PREFIXES) and (path.exists() or path.is_symlink()):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def require_run_dir(run_dir: str | Path) -> Path:
    """`run_dir` as a Path; NotARunDirectory (one line with the fix) if it is missing or has no config.toml."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise NotARunDirectory(f"{str(run_dir)!r} does not exist, so it is not a kerascnn run directory; pass a "
                               f"folder written by `kerascnn train` (e.g. saved_models/<run name>)")
    if not (run_dir / CONFIG_FILE).is_file():
        raise NotARunDirectory(f"{str(run_dir)!r} is not a kerascnn run directory (it has no {CONFIG_FILE}); "
                               f"pass a folder written by `kerascnn train`")
    return run_dir


def read_run_config(run_dir: str | Path, overrides: list[str] = (),
                    values: Mapping[str, Any] | None = None) -> RunConfig:
    """The run's stored config.toml with `values` ({"train.epochs": 5}) and `overrides` applied on top."""
    return load_config(require_run_dir(run_dir) / CONFIG_FILE, overrides=overrides, values=values)


def read_manifest(run_dir: str | Path) -> dict | None:
    """The run's manifest.json, or None while the run has not finished."""
    path = Path(run_dir) / MANIFEST_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_manifest(run_dir: str | Path, manifest: dict) -> None:
    write_json_atomically(Path(run_dir) / MANIFEST_FILE, manifest)
