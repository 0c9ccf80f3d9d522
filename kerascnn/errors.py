"""Exceptions that the CLI turns into one line on stderr, and the two helpers every message uses.

`KerasCNNError` and its subclasses mean "the user asked for something that cannot be done":
the CLI prints the message alone and exits with `exit_code`, without a traceback unless `--debug`.
This module imports nothing from kerascnn or TensorFlow: every layer may use it.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class KerasCNNError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(KerasCNNError):
    """An unknown key, a wrong type or an impossible value in the configuration."""


class DataError(KerasCNNError):
    """A dataset that cannot be found, read or split."""


class ModelLoadError(KerasCNNError):
    """A file that is not a model kerascnn can load, or one refused by safe mode."""


class NotARunDirectory(ConfigError):
    """A path given as a run directory that does not exist or was not written by `kerascnn train`."""


class ExportError(KerasCNNError):
    """An artifact that could not be written or does not predict what the trained model predicts."""

    exit_code = 1


class PartialExport(ExportError):
    """Some artifacts failed to export and the others were written: `artifacts` holds the written ones'
    entries (as `kerascnn.export.export` returns them), `failed` each failed artifact's one-line reason,
    `dropped` the artifacts the model cannot be stored as (with the reason)."""

    def __init__(self, message: str, artifacts: dict, failed: dict[str, str], dropped: dict[str, str] | None = None):
        super().__init__(message)
        self.artifacts, self.failed, self.dropped = artifacts, failed, dropped or {}


class TrainingError(KerasCNNError):
    """Training stopped on its own (e.g. a NaN loss); the best checkpoint is kept."""

    exit_code = 1


def suggest(word, choices: Iterable, cutoff: float = 0.5) -> str:
    """` (did you mean 'x'?)` for the choice closest to `word`, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
