"""Crash-safe training: atomic checkpoint writes and backups that `kerascnn train --resume` continues from.

Keras' `BackupAndRestore` does the backing up (weights with optimizer state, plus the epoch in
progress) into `checkpoints/backup`. This module adds what a killed run needs to come back whole:

- every checkpoint is written under a temporary name and renamed into place (`os.replace`), so a
  kill never leaves a file that looks complete but is not;
- a backup at each epoch end as well as every `save_freq` batches, and the right epoch recorded
  during the first epoch after a resume (Keras' own counter starts again at 0 there);
- on resume, `history.csv` is cut back to the epochs before the one the backup restarts, so the
  appended history has no gaps or duplicates; the best checkpoint and early stopping carry on from
  the best `val_loss` already reached;
- `checkpoints/trained.keras`, written when fitting ends (before the backup is deleted), marks a
  run whose training is done, so a run killed during export resumes straight into export.

Keras restarts an interrupted epoch from its first batch, with the weights of the latest backup.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
from pathlib import Path

import keras

from kerascnn.errors import ConfigError
from kerascnn.rundir import (BACKUP_DIR, MANIFEST_FILE, TRAINED_MODEL, read_manifest, require_run_dir,
                             temporary_path, write_atomically, write_text_atomically)

BACKUP_METADATA = "training_metadata.json"  # the names Keras' BackupAndRestore uses
BACKUP_WEIGHTS = "latest.weights.h5"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run whose directory `kerascnn train --resume` can continue."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        super().__init__(f"interrupted; continue the run with: kerascnn train --resume {run_dir}")


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes its file under a temporary name and renames it into place, and never
    takes a NaN/Inf monitored value for the best (Keras saves any first value, NaN included)."""

    def _save_model(self, epoch, batch, logs):  # Keras' hook around `model.save`; our path has no placeholders
        current = (logs or {}).get(self.monitor)
        if self.save_best_only and current is not None and not math.isfinite(float(current)):
            return
        final = Path(self.filepath)
        temporary = temporary_path(final)
        temporary.unlink(missing_ok=True)  # a leftover of a killed write must not be renamed below
        self.filepath = str(temporary)
        try:
            super()._save_model(epoch, batch, logs)
        finally:
            self.filepath = str(final)
        if temporary.exists():
            os.replace(temporary, final)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore with atomic writes, a backup at each epoch end too, and the right epoch after a resume."""

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch  # Keras only updates it at epoch end, so it reads 0 after a resume

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":  # the parent saves at epoch ends only with save_freq="epoch"
            self._save_model()

    def _save_model(self):
        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        write_atomically(Path(self._weights_path), lambda temporary: self.model.save_weights(temporary))
        write_text_atomically(Path(self._training_metadata_path),
                              json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))


class TrainedModelSaver(keras.callbacks.Callback):
    """Write `path` (atomically) when fitting ends without a NaN/Inf loss: the mark of a finished training."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.last_loss = None

    def on_epoch_end(self, epoch, logs=None):
        self.last_loss = (logs or {}).get("loss")

    def on_train_end(self, logs=None):
        if self.last_loss is None or math.isfinite(self.last_loss):  # None: no epoch left to run after a resume
            write_atomically(self.path, lambda temporary: self.model.save(temporary))


@dataclasses.dataclass(frozen=True)
class ResumeState:
    """Where a resumed fit restarts, and the best `val_loss` the interrupted run had reached.

    Attributes:
        start_epoch: the first epoch to run (0-based); earlier epochs are done and in history.csv.
        best_val_loss: lowest val_loss of the finished epochs (None if none finished).
        best_epoch: the epoch that reached it (None if none finished).
    """

    start_epoch: int = 0
    best_val_loss: float | None = None
    best_epoch: int | None = None

    @property
    def epochs_since_best(self) -> int:
        return 0 if self.best_epoch is None else self.start_epoch - 1 - self.best_epoch


def resume_state(run_dir: Path, history_file: str) -> ResumeState:
    """Read the backup's epoch and cut `history_file` back to the epochs before it (rewritten atomically).

    A backup without its metadata (a kill between the two writes of the very first backup) cannot
    say where it stands, so it is removed and training starts again from epoch 0.
    """
    backup = run_dir / BACKUP_DIR
    start = 0
    if (backup / BACKUP_METADATA).is_file() and (backup / BACKUP_WEIGHTS).is_file():
        start = int(json.loads((backup / BACKUP_METADATA).read_text(encoding="utf-8"))["epoch"])
    elif backup.exists():
        shutil.rmtree(backup)
    rows, header = _finished_epochs(run_dir / history_file, start)
    if header:
        text = io.StringIO()
        writer = csv.DictWriter(text, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomically(run_dir / history_file, text.getvalue())
    losses = [(float(row["val_loss"]), int(row["epoch"])) for row in rows
              if row.get("val_loss") not in (None, "") and math.isfinite(float(row["val_loss"]))]
    best = min(losses, default=None)
    return ResumeState(start, *(best if best else (None, None)))


def _finished_epochs(history: Path, start: int) -> tuple[list[dict], list[str]]:
    """Complete rows of epochs < `start` (the last row of an epoch if logged twice) and the header."""
    if not history.is_file():
        return [], []
    with open(history, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        by_epoch = {}
        for row in reader:
            if None in row or None in row.values() or not str(row.get("epoch", "")).isdigit():
                continue  # a line cut short by the kill
            if int(row["epoch"]) < start:
                by_epoch[int(row["epoch"])] = row
    return [by_epoch[e] for e in sorted(by_epoch)], header


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that carries on a resumed run's best val_loss and patience count.

    Its best weights so far are read from `checkpoint` (the best checkpoint) on a resume that has
    a best epoch.
    """

    def __init__(self, resume: ResumeState | None = None, checkpoint: Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.resume = resume
        self.checkpoint = checkpoint

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume is None or self.resume.best_val_loss is None:
            return
        self.best, self.best_epoch = self.resume.best_val_loss, self.resume.best_epoch
        self.wait = self.resume.epochs_since_best
        if self.restore_best_weights and self.checkpoint is not None and Path(self.checkpoint).is_file():
            self.best_weights = checkpoint_weights(self.model, Path(self.checkpoint))


def checkpoint_weights(model: keras.Model, path: Path) -> list:
    """The weights a `.keras` checkpoint of `model` holds, read into a clone: only weights are read from
    the file, no architecture is deserialized from it, so nothing in it can run."""
    clone = keras.models.clone_model(model)
    clone.load_weights(path)
    return clone.get_weights()


def check_resumable(run_dir: Path) -> None:
    """Raise NotARunDirectory/ConfigError unless `run_dir` is a kerascnn run directory whose run has not finished
    (a run whose export partly failed has not: its trained model waits in checkpoints/ to be exported again)."""
    require_run_dir(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is not None and not (manifest.get("failed_artifacts") and (run_dir / TRAINED_MODEL).is_file()):
        raise ConfigError(f"cannot resume {str(run_dir)!r}: the run already finished ({MANIFEST_FILE} is written); "
                          f"re-export it with `kerascnn export {run_dir}`")
