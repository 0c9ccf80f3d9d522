"""Keep TensorFlow's, absl's, the TFLite converter's and tf2onnx's chatter off the terminal, and say each
warning once.

TensorFlow's C++ code writes to file descriptor 2 directly, some of it ("All log messages before
absl::InitializeLog() is called are written to STDERR", oneDNN, "Could not find cuda drivers",
cuInit) before absl reads `TF_CPP_MIN_LOG_LEVEL`, and the TFLite converter and interpreter print
bare lines ("fully_quantize: 0, ...", "INFO: Created TensorFlow Lite XNNPACK delegate"). Python's
`sys.stderr` cannot catch these, so `native_stderr()` points descriptor 2 at a temporary file for
the duration of a block and then writes back every line that is not known noise (all of them in
verbose mode). Python loggers (absl's HDF5 "legacy" warning, tf2onnx's) are set to ERROR.

`configure(verbose)` is what the CLI calls first; library users may call it too. It also makes the
first `import tensorflow`, wherever it happens, run inside `native_stderr()` together with the
device enumeration that prints the cuInit line, so commands that fail on their arguments or
config never pay for importing TensorFlow. Without `configure` the TFLite blocks are still filtered
(only lines known to be noise are removed) and loggers are untouched.

Example:
    configure(verbose=False)
    with native_stderr():
        import tensorflow
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

# Lines of native code that carry no information for a user of kerascnn.
NOISE = re.compile("|".join([
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"^[IWE]\d{4} [\d:.]+\s+\d+ \S+\.(cc|h):\d+\]",  # absl-format C++ log lines (oneDNN, cuda, cuInit, ...)
    r"^To enable the following instructions: .* rebuild TensorFlow",
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
    r"^INFO: Initialized TensorFlow Lite runtime\.",
    r"^fully_quantize: \d+, inference_type: \d+",
]))
# Python loggers that speak for libraries; kerascnn's own messages are printed by the CLI.
LIBRARY_LOGGERS = ("absl", "tensorflow", "tf2onnx", "h5py", "keras")
KERASCNN_LOGGER = "kerascnn"

_verbose = False


def configure(verbose: bool = False) -> None:
    """Silence TensorFlow and library logging unless `verbose`; print kerascnn's warnings once each.

    Sets TF_CPP_MIN_LOG_LEVEL (read when TensorFlow is imported) and the library loggers' levels,
    and gives the `kerascnn` logger one stderr handler ("WARNING: ...") that drops repeated messages.
    """
    global _verbose
    _verbose = verbose
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    logger = logging.getLogger(KERASCNN_LOGGER)
    if not any(isinstance(handler, _OnceHandler) for handler in logger.handlers):
        logger.addHandler(_OnceHandler())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, as the normal finders do, and runs its import (and the device
    enumeration, which prints the cuInit line) inside `native_stderr()`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            with native_stderr():
                exec_module(module)
                module.config.list_physical_devices()

        spec.loader.exec_module = quiet_exec_module
        return spec


class _OnceHandler(logging.StreamHandler):
    """Writes `WARNING: message` to the current sys.stderr, each distinct message once."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()
        self.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))

    def emit(self, record):
        message = record.getMessage()
        if message in self.seen:
            return
        self.seen.add(message)
        self.stream = sys.stderr  # follow redirections (pytest's capture, contextlib.redirect_stderr)
        super().emit(record)


def warn_once(message: str) -> None:
    """Log a kerascnn warning; with `configure`d output it appears once however often it is said."""
    logging.getLogger(KERASCNN_LOGGER).warning(message)


def is_noise(line: str) -> bool:
    return bool(NOISE.search(line))


@contextlib.contextmanager
def native_stderr(verbose: bool | None = None):
    """Capture file descriptor 2 for the block, then write back the lines that are not noise.

    Everything written to descriptor 2 meanwhile (native code and Python's own sys.stderr) is kept
    in order; in verbose mode (default: as `configure` set it) all of it is written back.
    """
    verbose = _verbose if verbose is None else verbose
    fd = 2  # native code writes to descriptor 2 whatever sys.stderr is
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True) if verbose or not is_noise(line)]
            if kept:
                os.write(fd, "".join(kept).encode("utf-8"))
