"""Exceptions that the CLI turns into one line on stderr.

`KerasCNNError` and its subclasses mean "the user asked for something that cannot be done":
the CLI prints the message alone and exits with `exit_code`, without a traceback unless `--debug`.
"""


class KerasCNNError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(KerasCNNError):
    """An unknown key, a wrong type or an impossible value in the configuration."""


class DataError(KerasCNNError):
    """A dataset that cannot be found, read or split."""


class ModelLoadError(KerasCNNError):
    """A file that is not a model kerascnn can load, or one refused by safe mode."""


class ExportError(KerasCNNError):
    """An artifact that could not be written or does not predict what the trained model predicts."""

    exit_code = 1


class TrainingError(KerasCNNError):
    """Training stopped on its own (e.g. a NaN loss); the best checkpoint is kept."""

    exit_code = 1
