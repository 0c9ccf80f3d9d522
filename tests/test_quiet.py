"""A quiet CLI: answers before TensorFlow is imported, native noise filtered, each warning once, did-you-mean."""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kerascnn import cli, quiet

REPO = Path(__file__).resolve().parents[1]
# Runs the CLI in a fresh interpreter and says whether TensorFlow got imported.
PROBE = ("import sys; from kerascnn import cli; code = cli.main(sys.argv[1:]); "
         "print('tensorflow imported:', 'tensorflow' in sys.modules); sys.exit(code)")


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=120)
    return done, time.perf_counter() - start


@pytest.mark.parametrize("args, code, text", [
    (["--version"], 0, "kerascnn 0.1.0"),
    (["trian"], 2, "invalid choice: 'trian'"),
    (["train", "--epohcs", "2"], 2, "unrecognized arguments: --epohcs 2 (did you mean '--epochs'?)"),
    (["train", "--set", "data.color_mode=grey"], 2, "data.color_mode must be one of auto, grayscale, rgb"),
])
def test_arguments_and_config_errors_answer_before_tensorflow_is_imported(args, code, text):
    done, seconds = _cli(*args)
    assert done.returncode == code, done.stderr
    assert text in done.stdout + done.stderr
    assert "tensorflow imported: True" not in done.stdout
    if code:
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("kerascnn: error: ")  # no traceback, no noise


def test_help_is_fast_and_quiet():
    done = subprocess.run([sys.executable, "-m", "kerascnn", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 0 and done.stderr == "" and "--verbose" in done.stdout


def _subparsers(parser):
    """Every parser reachable from `parser` through subcommands (bench's benches included)."""
    yield parser
    for action in parser._actions:  # argparse has no public walk over subparsers
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _subparsers(child)


def test_every_command_has_help_that_formats():
    """A stray % in a help string makes `kerascnn CMD --help` a traceback instead of its usage."""
    parsers = list(_subparsers(cli.build_parser()))
    assert len(parsers) > 20
    for parser in parsers:
        assert parser.format_help().startswith("usage: kerascnn")


def test_a_train_run_with_every_tflite_consumer_prints_no_native_noise(tmp_path):
    """TensorFlow, the TFLite converter, LiteRT and MediaPipe Tasks each print C++ lines; none may reach the user."""
    done = subprocess.run([sys.executable, "-m", "kerascnn", "train", "--epochs", "1", "--output", str(tmp_path),
                           "--name", "quiet", "--no-report", "--set", "train.verbose=0",
                           "--set", 'export.formats=["keras","tflite"]', "--set", 'export.tflite=["float32"]'],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert any("in MediaPipe Tasks" in line for line in lines)  # MediaPipe Tasks did run the file
    assert [line for line in lines if quiet.is_noise(line)] == []


@pytest.mark.parametrize("argv, hint", [
    (["trian"], "(did you mean 'train'?)"),
    (["bench", "backbone"], "(did you mean 'backbones'?)"),
    (["train", "--debug"], "--debug is an option of kerascnn itself: put it before the command"),
    (["train", "--learning-rat", "0.1"], None),  # an unambiguous prefix is argparse's abbreviation: accepted
])
def test_misspellings_get_the_nearest_name_without_a_traceback(argv, hint, capsys, monkeypatch):
    if hint is None:
        args = cli.build_parser().parse_args(argv)
        assert args.learning_rate == 0.1
        return
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert hint in err and "Traceback" not in err and err.count("\n") == 1


def test_native_noise_is_filtered_and_other_lines_kept(capfd):
    with quiet.native_stderr(verbose=False):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1796109077.325591   11385 port.cc:153] oneDNN custom operations are on.\n"
                    b"E0000 00:00:1796109089.605018   11532 cuda_platform.cc:52] failed call to cuInit\n"
                    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
                    b"fully_quantize: 0, inference_type: 6, input_inference_type: UINT8, output_inference_type: UINT8\n"
                    b"a real problem\n")
    assert capfd.readouterr().err == "a real problem\n"
    with quiet.native_stderr(verbose=True):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert capfd.readouterr().err == "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"


def test_each_warning_is_printed_once(capsys):
    quiet.configure(verbose=False)
    for _ in range(3):
        quiet.warn_once("model_int8.tflite agrees with the trained model on 90.00% of test images")
    assert capsys.readouterr().err == "WARNING: model_int8.tflite agrees with the trained model on 90.00% of test images\n"
