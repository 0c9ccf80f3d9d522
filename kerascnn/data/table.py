"""Labels from a table: a CSV file (`--dataset labels.csv`) or a pandas DataFrame (`from_dataframe`).

The table has a file-name column (`filename`, or `path` / `image` / `file`) and one label column:

    filename,label            one class per image
    filename,labels           several classes per image, separated by `data.label_separator` (" ")

A table is multi-label when its label column is `labels` or a value holds the separator, unless
`data.multi_label` says otherwise. File names are relative to `data.image_root` (default: the
folder of the CSV file); absolute paths are used as they are.

Bad rows are reported by row number and file name and skipped with a warning (they go to
`skipped_files.csv`, like the files an image-folder scan skips), or, with `data.strict`, stop the run
with an error listing them: a missing file, an empty label, a duplicate row (a file listed again),
a file that is not a decodable image (the folder scan's own check). Unknown columns are named in a
warning (an error under `strict`) and ignored. The usable rows become a `FolderScan`, so splitting,
streaming from disk and the run directory's records are the image folder's own
(`kerascnn.data.folder`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kerascnn.config import DataConfig
from kerascnn.data.decode import IMAGE_EXTENSIONS
from kerascnn.data.folder import STRICT_LISTED, FolderScan, SkippedFile, _validate, split_scan
from kerascnn.errors import DataError, suggest
from kerascnn.rundir import SKIPPED_FILES_CSV

FILE_COLUMNS = ("filename", "path", "image", "file")
LABEL_COLUMNS = ("label", "labels")
log = logging.getLogger(__name__)


def _columns(frame: pd.DataFrame, source: str, strict: bool) -> tuple[str, str]:
    """(file column, label column) of a table; unknown columns are warned about (an error when strict)."""
    names = [str(c) for c in frame.columns]
    file_column = next((c for c in FILE_COLUMNS if c in names), None)
    label_column = next((c for c in LABEL_COLUMNS if c in names), None)
    if file_column is None or label_column is None:
        missing = "file-name column (filename)" if file_column is None else "label column (label or labels)"
        unknown = [c for c in names if c not in FILE_COLUMNS + LABEL_COLUMNS]
        hint = next((suggest(c, FILE_COLUMNS + LABEL_COLUMNS) for c in unknown if suggest(c, FILE_COLUMNS + LABEL_COLUMNS)),
                    "")
        raise DataError(f"{source} has no {missing}; its columns are {', '.join(names) or '(none)'}{hint}; "
                        f"write a header line such as filename,label or filename,labels")
    unknown = [c for c in names if c not in (file_column, label_column)]
    if unknown:
        message = (f"{source}: unknown columns {', '.join(map(repr, unknown))} are ignored; a label table has "
                   f"{file_column!r} and {label_column!r}")
        if strict:
            raise DataError(f"data.strict: {message}; remove them or drop --strict")
        log.warning("%s", message)
    return file_column, label_column


def scan_table(frame: pd.DataFrame, image_root: str | Path, config: DataConfig | None = None,
               source: str = "the label table") -> FolderScan:
    """Check a label table row by row (see the module docstring) and return its usable rows as a scan.

    Args:
        frame: the table (file names and labels as strings).
        image_root: folder the file names are relative to.
        config: the DataConfig (`strict`, `label_separator`, `multi_label`); default DataConfig().
        source: how messages name the table (e.g. the CSV path).

    Example:
        scan = scan_table(pd.read_csv("labels.csv", dtype=str), "images/")
    """
    config = config or DataConfig()
    start = time.perf_counter()
    root = Path(image_root)
    if not root.is_dir():
        raise DataError(f"image root {str(root)!r} of {source} is not a folder; set data.image_root to the folder "
                        f"its file names are relative to")
    file_column, label_column = _columns(frame, source, config.strict)
    separator = config.label_separator
    texts = frame[[file_column, label_column]].astype("string").fillna("")
    multi_label = config.multi_label
    if multi_label is None:
        multi_label = label_column == "labels" or texts[label_column].str.strip().str.contains(
            separator, regex=False).any()
    skipped, rows, seen = [], [], {}
    for number, (name, text) in enumerate(zip(texts[file_column].str.strip(), texts[label_column]), start=2):
        where = f"row {number}"  # the header is row 1, as a spreadsheet counts
        path = root / name if name else root
        tags = [t.strip() for t in text.split(separator)] if multi_label else [text.strip()]
        tags = list(dict.fromkeys(t for t in tags if t))
        if not name:
            skipped.append(SkippedFile(f"{source}:{number}", f"empty file name: {where} names no file"))
        elif not tags:
            skipped.append(SkippedFile(str(path), f"empty label: {where} gives {name!r} no label"))
        elif str(path) in seen:
            first = seen[str(path)]
            same = "the same labels" if rows[first][1] == tags else f"other labels ({separator.join(tags)})"
            skipped.append(SkippedFile(str(path), f"duplicate row: {where} lists {name!r} again, with {same}; "
                                                  f"the first row ({rows[first][2]}) is kept"))
        elif not path.is_file():
            skipped.append(SkippedFile(str(path), f"missing file: {where} names {name!r}, which is not a file "
                                                  f"under {str(root)!r}"))
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(SkippedFile(str(path), f"not an image file: {where}: extension {path.suffix or '(none)'!r} "
                                                  f"is not one of {', '.join(IMAGE_EXTENSIONS)}"))
        elif path.stat().st_size == 0:
            skipped.append(SkippedFile(str(path), f"empty file: {where}: 0 bytes"))
        else:
            seen[str(path)] = len(rows)
            rows.append((str(path), tags, where))
    shapes, failures = _validate([Path(p) for p, _, _ in rows])  # native (height, width, channels) per usable file
    skipped += [SkippedFile(rows[i][0], f"{reason} ({rows[i][2]})") for i, reason in sorted(failures.items())]
    usable = [(row, shapes[i]) for i, row in enumerate(rows) if i in shapes]
    if config.strict and skipped:
        problems = [f"{s.path} ({s.reason})" for s in skipped[:STRICT_LISTED]]
        if len(skipped) > STRICT_LISTED:
            problems.append(f"and {len(skipped) - STRICT_LISTED} more")
        raise DataError(f"data.strict: {len(skipped)} rows of {source} are not usable: {'; '.join(problems)}; "
                        f"fix or remove them, or drop --strict to skip them")
    if skipped:
        log.warning("skipped %d of %d rows of %s that are not usable (listed in %s)", len(skipped), len(frame), source,
                    SKIPPED_FILES_CSV)
    class_names = sorted({tag for (_, tags, _), _ in usable for tag in tags})
    if not usable:
        raise DataError(f"{source} has no usable rows (files under {str(root)!r} with a label); "
                        f"see the reasons in {SKIPPED_FILES_CSV} or run with --strict")
    if len(class_names) < 2:
        raise DataError(f"{source} has one class only ({class_names[0]!r}); a classifier needs at least 2")
    index = {name: i for i, name in enumerate(class_names)}
    if multi_label:
        labels = np.zeros((len(usable), len(class_names)), np.float32)
        for row, ((_, tags, _), _) in enumerate(usable):
            labels[row, [index[t] for t in tags]] = 1.0
    else:
        labels = np.asarray([index[tags[0]] for (_, tags, _), _ in usable], np.int64)
    return FolderScan(root=root, paths=[p for (p, _, _), _ in usable], labels=labels, class_names=class_names,
                      channels=1 if all(shape[2] <= 2 for _, shape in usable) else 3,
                      sizes=[shape[:2] for _, shape in usable], file_channels=[shape[2] for _, shape in usable],
                      skipped=skipped, files_seen=len(frame), seconds=time.perf_counter() - start)


def read_table(path: str | Path) -> pd.DataFrame:
    """A label CSV as strings (no value is read as a number or NaN), or DataError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label table {str(path)!r} does not exist; pass the path of a CSV file with columns "
                        f"filename,label or filename,labels")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{str(path)!r} is not a readable CSV table ({str(exc).strip().splitlines()[0]}); write "
                        f"a header line filename,label and one row per image") from None


def table_path(config: DataConfig) -> Path | None:
    """The label table a DataConfig names (`data.labels_csv`, or a `data.dataset` ending in .csv), or None."""
    if config.labels_csv:
        return Path(config.labels_csv)
    if config.dataset.lower().endswith(".csv"):
        return Path(config.dataset)
    return None


def load_table(config: DataConfig, seed: int = 42):
    """An ImageData over the label table that `config` names, split and streamed like an image folder."""
    path = table_path(config)
    root = Path(config.image_root) if config.image_root else path.parent
    scan = scan_table(read_table(path), root, config, source=str(path))
    return split_scan(scan, config, seed, str(path))


def from_dataframe(frame: pd.DataFrame, image_root: str | Path = ".", config: DataConfig | None = None,
                   seed: int = 42, name: str = "dataframe"):
    """An ImageData from a pandas DataFrame of file names and labels (the columns of a label CSV).

    Args:
        frame: columns `filename` and `label` (one class) or `labels` (several, space-separated).
        image_root: folder the file names are relative to (default: the working directory).
        config: a DataConfig for the splits, image size, separator and strictness (default DataConfig()).
        seed: seed of the splits (default 42).
        name: the dataset's name in reports (default "dataframe").

    Example:
        data = from_dataframe(pd.DataFrame({"filename": ["a.png", "b.png"], "label": ["cat", "dog"]}), "photos")
    """
    config = config or DataConfig(dataset=name)
    frame = frame.astype(str).where(frame.notna(), "")
    return split_scan(scan_table(frame, image_root, config, source=name), config, seed, name)
