"""Image-folder datasets: `root/<class>/<image>`, scanned and validated, then streamed from disk through tf.data.

Layout rule: each immediate sub-folder of the root is a class (sorted by name; hidden folders such
as `.git` are not classes); every file below it, in nested folders at any depth, belongs to that
class. Files directly in the root belong to no class and are skipped. A class folder left without
a usable image is dropped with a warning (with `strict`, it is an error).

Before any training, every file is checked: hidden and system files (`.DS_Store`, `Thumbs.db`,
macOS `._*` resource forks), files without an image extension and empty files are skipped, and
every remaining file is decoded in parallel (tf.data) by the decoder training uses,
`tf.io.decode_image`, so a file that passes the scan cannot fail mid-epoch. What was skipped, and
why, is kept on the `FolderScan` (the runner writes it to `skipped_files.csv`); `strict=True`
makes any skipped file an error that lists them.

Files are split stratified (scikit-learn, seeded) into train/validation/test and decoded on the fly
by `kerascnn.data.decode` (the decoding serving uses too), so the images never sit in memory all at once (unless `data.cache` keeps the decoded tensors after
the first epoch).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from sklearn.model_selection import train_test_split

from kerascnn.config import DataConfig
from kerascnn.data.decode import IMAGE_EXTENSIONS, decode_encoded_image, decode_native
from kerascnn.data.duplicates import content_hash, first_of_each
from kerascnn.data.imagedata import ImageData, cap_examples, select_classes, stratified_split
from kerascnn.errors import DataError
from kerascnn.rundir import SKIPPED_FILES_CSV

SYSTEM_FILES = ("thumbs.db", "ehthumbs.db", "desktop.ini", ".ds_store")
# Without data.image_size, a folder's images are resized to the median height and width of its usable
# images, each side capped here (224: the size most keras.applications weights were trained at).
MAX_INFERRED_SIDE = 224
COLOR_MODE_CHANNELS = {"auto": None, "grayscale": 1, "rgb": 3}  # auto: 1 if every image is grayscale, else 3
STRICT_LISTED = 5  # skipped files named in a strict-mode error; the rest are counted
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file under a class folder that is not used, and why."""

    path: str
    reason: str


@dataclasses.dataclass
class FolderScan:
    """What a scan of an image folder found.

    Attributes:
        root: the dataset folder.
        paths, labels: the usable images and their class indices.
        class_names: class index -> class folder name.
        channels: 1 if every usable image is grayscale (with or without alpha), else 3.
        sizes: (height, width) of each usable image, in the order of `paths`.
        skipped: files that are not used, with the reason.
        empty_classes: class folders dropped because they hold no usable image.
        files_seen: files found under the class folders (and the root).
        seconds: wall time of the scan.
    """

    root: Path
    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    channels: int = 3
    sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    skipped: list[SkippedFile] = dataclasses.field(default_factory=list)
    empty_classes: list[str] = dataclasses.field(default_factory=list)
    files_seen: int = 0
    seconds: float = 0.0
    file_channels: list[int] = dataclasses.field(default_factory=list)

    def summary(self) -> dict:
        """The scan's counts, as the manifest keeps them."""
        return {"files_seen": self.files_seen, "images": len(self.paths), "skipped": len(self.skipped),
                "skipped_by_reason": dict(Counter(_reason_kind(s.reason) for s in self.skipped)),
                "empty_classes": self.empty_classes, "seconds": round(self.seconds, 3)}

    def inferred_size(self) -> tuple[int, int]:
        """The median (height, width) of the usable images, each side capped at MAX_INFERRED_SIDE."""
        heights, widths = np.asarray(self.sizes).reshape(-1, 2).T
        return tuple(int(min(MAX_INFERRED_SIDE, round(float(np.median(side))))) for side in (heights, widths))

    def rgb_files(self) -> int:
        """How many usable images are in colour (what makes `color_mode = auto` choose rgb)."""
        return sum(c > 2 for c in self.file_channels)

    def write_skipped(self, path: Path) -> None:
        """Write `path` (csv: path, reason), one row a skipped file; a header only when none was."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "reason"])
            writer.writerows((s.path, s.reason) for s in self.skipped)


SKIPPED_NAMED = 3  # skipped files the scan's warning names, with their reasons


def _reason_kind(reason: str) -> str:
    """The part of a reason before the colon ("not a decodable image: ..." -> "not a decodable image")."""
    return reason.split(":", 1)[0]


def _list_files(root: Path) -> tuple[list[tuple[Path, int]], list[SkippedFile], list[str], int]:
    """(candidate image files with their class index, skipped files, class names, files seen) by name and size."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped = [SkippedFile(str(p), "not inside a class folder") for p in sorted(root.iterdir()) if p.is_file()]
    candidates, seen = [], len(skipped)
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            seen += 1
            parts = path.relative_to(class_dir).parts
            if any(part.startswith(".") for part in parts) or path.name.lower() in SYSTEM_FILES:
                skipped.append(SkippedFile(str(path), "hidden or system file"))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(SkippedFile(str(path), f"not an image file: extension {path.suffix or '(none)'!r} "
                                                      f"is not one of {', '.join(IMAGE_EXTENSIONS)}"))
            elif path.stat().st_size == 0:
                skipped.append(SkippedFile(str(path), "empty file: 0 bytes"))
            else:
                candidates.append((path, label))
    return candidates, skipped, [d.name for d in class_dirs], seen


def _probe(path: tf.Tensor):
    """(native shape, first 29 bytes) of one file; raises, as training would, if it does not decode."""
    contents = tf.io.read_file(path)
    return tf.shape(decode_native(contents))[-3:], tf.strings.substr(contents, 0, 29)


def _is_8bit_bmp(head: bytes) -> bool:
    return head[:2] == b"BM" and len(head) > 28 and head[28] == 8  # bits per pixel, at byte 28 of a BMP


def _decode_error(path: str) -> str:
    """The decoder's own message for a file tf.data dropped, without TensorFlow's op decorations."""
    try:
        _probe(tf.constant(path))
    except tf.errors.OpError as exc:
        message = re.sub(r"\{\{[^}]*\}\}|\[Op:\w+\].*$", "", exc.message.splitlines()[0]).strip()
        return f"not a decodable image: {message or type(exc).__name__}"
    return "not a decodable image: it changed while being scanned"


def _is_palette_bmp(path: str) -> bool:
    """True for an 8-bit BMP with a colour table: TensorFlow's BMP decoder returns its palette indices
    as gray levels, so such a file would train as noise. PIL reads the header to tell (its mode "P");
    a BMP whose table is the identity gray ramp decodes correctly and PIL reports it as "L"."""
    try:
        with Image.open(path) as image:
            return image.mode == "P"
    except (OSError, ValueError, Image.DecompressionBombError):  # PIL cannot tell: trust TensorFlow's decode
        return False


def _validate(files: list[Path]) -> tuple[dict[int, tuple[int, int, int]], dict[int, str]]:
    """({index: native (height, width, channels)} of the files that decode, {index: reason} of those that do not)."""
    if not files:
        return {}, {}
    paths = [str(p) for p in files]
    probes = (tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), np.asarray(paths, dtype=str)))
              .map(lambda i, p: (i, *_probe(p)), num_parallel_calls=tf.data.AUTOTUNE)
              .ignore_errors()  # a file that fails to decode is dropped here, and its reason asked below
              .batch(1024))
    channels, failures = {}, {}
    for indices, found, heads in probes.as_numpy_iterator():
        for index, shape, head in zip(indices.tolist(), found.tolist(), heads):
            if _is_8bit_bmp(head) and _is_palette_bmp(paths[index]):
                failures[index] = ("unsupported image: 8-bit palette BMP, which TensorFlow's decoder reads "
                                   "without its colours; convert it to PNG")
            else:
                channels[index] = tuple(shape)
    for index in set(range(len(paths))) - set(channels) - set(failures):
        failures[index] = _decode_error(paths[index])
    return channels, failures


def scan_folder(root: Path, strict: bool = False) -> FolderScan:
    """Find and validate the images of `root/<class>/...` (see the module docstring for the rules).

    Args:
        root: the dataset folder.
        strict: raise DataError listing the files that would be skipped, instead of skipping them.

    Example:
        scan = scan_folder(Path("photos")); print(scan.summary())
    """
    if not root.exists():
        raise DataError(f"dataset folder {str(root)!r} does not exist; pass a folder laid out as root/<class>/<image>")
    if not root.is_dir():
        raise DataError(f"dataset path {str(root)!r} is not a folder; pass a folder laid out as root/<class>/<image>")
    start = time.perf_counter()
    candidates, skipped, all_classes, seen = _list_files(root)
    channels, failures = _validate([path for path, _ in candidates])
    skipped += [SkippedFile(str(candidates[i][0]), reason) for i, reason in sorted(failures.items())]
    skipped.sort(key=lambda s: s.path)
    usable = [(str(path), label, channels[i]) for i, (path, label) in enumerate(candidates) if i in channels]
    present = sorted({label for _, label, _ in usable})
    empty_classes = [name for label, name in enumerate(all_classes) if label not in present]
    if strict and (skipped or empty_classes):
        raise DataError(_strict_message(root, skipped, empty_classes))
    if skipped:  # named here, since a run that fails before its run directory exists writes no csv
        named = "; ".join(f"{s.path} ({_reason_kind(s.reason)})" for s in skipped[:SKIPPED_NAMED])
        more = f"; and {len(skipped) - SKIPPED_NAMED} more" if len(skipped) > SKIPPED_NAMED else ""
        log.warning("skipped %d of %d files under %s that are not usable images: %s%s (a run lists them all in "
                    "its %s)", len(skipped), seen, root, named, more, SKIPPED_FILES_CSV)
    for name in empty_classes:
        log.warning("class folder %s has no usable images and is skipped", root / name)
    if not usable:
        raise DataError(f"no usable images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}; "
                        f"expected root/<class>/<image>")
    if len(present) < 2:
        raise DataError(f"{str(root)!r} has images for one class only ({all_classes[present[0]]!r}); a classifier "
                        f"needs at least 2 class folders")
    relabel = {label: new for new, label in enumerate(present)}
    return FolderScan(root=root, paths=[p for p, _, _ in usable],
                      labels=np.asarray([relabel[label] for _, label, _ in usable], np.int64),
                      class_names=[all_classes[label] for label in present],
                      channels=1 if all(shape[2] <= 2 for _, _, shape in usable) else 3,
                      sizes=[shape[:2] for _, _, shape in usable], file_channels=[shape[2] for _, _, shape in usable],
                      skipped=skipped, empty_classes=empty_classes, files_seen=seen,
                      seconds=time.perf_counter() - start)


def _strict_message(root: Path, skipped: list[SkippedFile], empty_classes: list[str]) -> str:
    problems = [f"{s.path} ({s.reason})" for s in skipped[:STRICT_LISTED]]
    if len(skipped) > STRICT_LISTED:
        problems.append(f"and {len(skipped) - STRICT_LISTED} more")
    if empty_classes:
        problems.append(f"class folders without usable images: {', '.join(empty_classes)}")
    return (f"data.strict: {len(skipped)} files under {str(root)!r} are not usable images: {'; '.join(problems)}; "
            f"remove or fix them, or drop --strict to skip them")


def decode_image(path: tf.Tensor, channels: int, image_size: tuple[int, int]) -> tf.Tensor:
    """Read and decode one file to float32 pixels (0..255) of `image_size` x `channels`."""
    return decode_encoded_image(tf.io.read_file(path), channels, image_size)


def file_dataset(paths, labels, channels: int, image_size: tuple[int, int]) -> tf.data.Dataset:
    """(pixels, label) pairs decoded from disk in parallel (files that passed `scan_folder`); labels are
    int32 class indices, or float32 multi-hot rows for multi-label data."""
    labels = np.asarray(labels)
    labels = labels.astype(np.float32 if labels.ndim == 2 else np.int32)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=str), labels))
    return ds.map(lambda p, y: (decode_image(p, channels, image_size), y), num_parallel_calls=tf.data.AUTOTUNE)


def load_folder(root: Path, config: DataConfig, seed: int) -> ImageData:
    """An ImageData over an image folder, split stratified into train/validation/test."""
    return split_scan(scan_folder(root, strict=config.strict), config, seed, str(root))


def split_scan(scan: FolderScan, config: DataConfig, seed: int, name: str):
    """An ImageData over the files of a scan (an image folder's or a label table's), split into
    train/validation/test: stratified for one label per image, at random for multi-label rows.
    With `config.deduplicate`, exact duplicate files (same bytes) are dropped first, keeping the first."""
    multi_label = scan.labels.ndim == 2
    paths = np.asarray(scan.paths)
    labels, class_names = scan.labels, scan.class_names
    if config.deduplicate:
        unique = first_of_each([content_hash(path) for path in paths])
        if not unique.all():
            log.warning("data.deduplicate: dropped %d duplicate files of %s", int((~unique).sum()), name)
        paths, labels = paths[unique], labels[unique]
    if multi_label:
        if config.classes is not None:
            raise DataError("data.classes selects classes of single-label data; drop it for multi-label data")
        strata = None
    else:
        keep, labels, class_names = select_classes(labels, config.classes, class_names)
        paths, labels = paths[keep], labels[keep]
        strata = labels
    train_idx, test_idx = _split(strata, len(paths), config.test_split, seed, "test")
    fit_idx, val_idx = _split(None if strata is None else strata[train_idx], len(train_idx),
                              config.validation_split, seed, "validation")
    if strata is None:
        fit_idx = fit_idx[:config.max_train_examples] if config.max_train_examples else fit_idx
    else:
        fit_idx = fit_idx[cap_examples(strata[train_idx][fit_idx], config.max_train_examples, seed)]
    split_index = {"train": train_idx[fit_idx], "validation": train_idx[val_idx], "test": test_idx}
    image_size = tuple(config.image_size or scan.inferred_size())
    channels = COLOR_MODE_CHANNELS[config.color_mode] or scan.channels
    splits = {split: file_dataset(paths[idx], labels[idx], channels, image_size)
              for split, idx in split_index.items()}
    return ImageData(name=name, class_names=class_names, input_shape=(*image_size, channels),
                     counts={split: len(idx) for split, idx in split_index.items()}, folder_scan=scan,
                     files={split: (paths[idx], labels[idx]) for split, idx in split_index.items()},
                     multi_label=multi_label, **splits)


def _split(strata, count: int, fraction: float, seed: int, what: str):
    """(kept, held out) indices: stratified by `strata`, or seeded at random when it is None."""
    if strata is not None:
        return stratified_split(strata, fraction, seed, what)
    if count < 3:
        raise DataError(f"cannot split off a {what} set from {count} images; add images")
    return train_test_split(np.arange(count), test_size=fraction, random_state=seed)
