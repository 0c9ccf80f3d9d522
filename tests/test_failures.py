"""Loud failures: NaN loss, unwritable or full output, bad option values; one line and the documented exit code."""

from __future__ import annotations

import collections

import keras
import numpy as np
import pytest

import kerascnn
from kerascnn import training
from kerascnn.cli import main
from kerascnn.errors import ConfigError, TrainingError
from kerascnn.predict import load
from kerascnn.runner import run

TINY = ["--set", "model.options.filters=[4]", "--set", "model.options.dense=16", "--set", "train.verbose=0",
        "--set", "train.tensorboard=false", "--set", "export.formats=['keras']"]


def tiny_config(output, **values):
    return kerascnn.load_config(values={"run.output": str(output), "run.name": "run", "train.verbose": 0,
                                        "train.tensorboard": False, "model.options": {"filters": [4], "dense": 16},
                                        "export.formats": ["keras"], **values})


def test_nan_from_the_first_batch_exits_1_naming_the_learning_rate(tmp_path, capsys):
    code = main(["train", "--output", str(tmp_path), "--name", "nan", "--epochs", "2", "--learning-rate", "1e30",
                 "--set", "train.optimizer=sgd", *TINY])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "NaN" in err and "learning rate 1e+30" in err and "--learning-rate" in err
    assert "no checkpoint was saved" in err  # a NaN val_loss is never taken for the best
    assert not (tmp_path / "nan" / "checkpoints" / "best.keras").exists()
    assert not (tmp_path / "nan" / "manifest.json").exists()


def test_nan_later_keeps_the_best_checkpoint_from_before(tmp_path, monkeypatch):
    class BlowUpInSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.optimizer.learning_rate.assign(1e30)

    make_callbacks = training.make_callbacks
    monkeypatch.setattr(training, "make_callbacks", lambda *a, **k: make_callbacks(*a, **k) + [BlowUpInSecondEpoch()])
    with pytest.raises(TrainingError, match="in epoch 2 .* the best checkpoint so far is kept"):
        run(tiny_config(tmp_path, **{"train.epochs": 3, "train.optimizer": "sgd", "train.learning_rate": 0.01}))
    best = load(tmp_path / "run" / "checkpoints" / "best.keras")
    assert np.isfinite(best.predict_proba(np.full((4, 8, 8, 1), 100.0, np.float32))).all()
    assert not (tmp_path / "run" / "checkpoints" / "backup").exists()  # nothing to resume into a NaN


@pytest.mark.parametrize("output", ["/proc/kerascnn-test-runs", "FILE/runs"])
def test_unwritable_output_fails_before_anything_is_done(tmp_path, capsys, monkeypatch, output):
    """/proc: os.access says yes to root, creating a file there fails. FILE: a path under a regular file."""
    (tmp_path / "FILE").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(kerascnn.runner, "load_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    assert main(["train", "--output", output, "--epochs", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not writable" in err


def test_full_disk_fails_before_training(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(kerascnn.runner.shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9 - 2 ** 20, 2 ** 20))
    monkeypatch.setattr(kerascnn.runner, "train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ConfigError, match="1 MiB free but this run needs about"):
        run(tiny_config(tmp_path))
    assert not (tmp_path / "run").exists()


def test_option_value_a_builder_rejects_is_one_line_exit_2(tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path), "--set", "model.options.filters=['wide']", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model 'cnn' rejected its options" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--set", "train.epoch=3"], "did you mean 'epochs'"),
    (["train", "--set", "train.epochs=0"], "train.epochs must be positive"),
    (["train", "--set", "train.learning_rate='fast'"], "must be a number"),
    (["train", "--set", "train.warmup_epochs=30"], "warmup_epochs must be in [0, epochs)"),
    (["train", "--set", "data.strict=1"], "must be true or false"),
    (["train", "--resume", "nowhere"], "not a kerascnn run directory"),
    (["train", "--resume", "x", "--epochs", "3"], "drop --epochs"),
    (["train", "--bogus"], "unrecognized arguments"),
    (["train", "--unsafe"], "use it with --resume"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        main(["--debug", "train", "--set", "train.epochs=0"])
