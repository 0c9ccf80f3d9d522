"""Crash and resume: a run killed at any moment continues to the same epochs, history and artifacts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import kerascnn
from kerascnn import rundir, runner, training
from kerascnn.cli import main
from kerascnn.errors import ConfigError
from kerascnn.predict import load
from kerascnn.resume import (AtomicModelCheckpoint, ResumableEarlyStopping, ResumeState, RunInterrupted,
                             resume_state)
from kerascnn.runner import run
from tests.conftest import InterruptAt

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 2


def assert_complete(run_dir: Path, epochs: int = EPOCHS) -> None:
    """A finished run: every epoch once in history.csv, manifest, verified artifacts, no leftovers."""
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == list(range(epochs))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["epochs_run"] == epochs and manifest["resumed"] is True
    # every epoch's FLOPs, those before the resume included; no rate, since train_seconds covers only the last part
    assert manifest["train_flops"] == manifest["flops_per_image"] * manifest["counts"]["train"] * epochs
    assert "achieved_gflops" not in manifest and manifest["flops_note"].startswith("resumed run")
    assert all(a["parity"]["top1_agreement"] == 1.0 for a in manifest["artifacts"].values())
    assert not (run_dir / "checkpoints" / "backup").exists()
    assert not (run_dir / "checkpoints" / "trained.keras").exists()
    assert not [p for p in run_dir.rglob(".*") if p.name.startswith(rundir.STAGING_PREFIXES)]
    load(run_dir / "checkpoints" / "best.keras")


def test_sigkill_mid_epoch_then_resume_ends_with_the_same_epochs(tmp_path):
    train = [sys.executable, "-m", "kerascnn", "train"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run_dir = tmp_path / "digits"
    proc = subprocess.Popen(train + ["--output", str(tmp_path), "--name", "digits", "--epochs", str(EPOCHS),
                                     "--batch-size", "4", "--set", "data.max_train_examples=600",
                                     "--set", "train.backup_every=5", "--set", "train.verbose=0",
                                     "--set", "train.tensorboard=false", "--set", "model.options.filters=[8]",
                                     "--set", "model.options.dense=32", "--set", "export.formats=['keras']"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metadata = run_dir / "checkpoints" / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            state = json.loads(metadata.read_text())
        except (OSError, ValueError):
            state = {"epoch": 0, "batch": 0}
        if state["epoch"] == EPOCHS - 1 and state["batch"] > 0:  # in the last epoch, after a few batches
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == list(range(EPOCHS - 1))  # killed mid-epoch
    done = subprocess.run(train + ["--resume", str(run_dir)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"run directory: {run_dir}" in done.stdout
    assert_complete(run_dir)


# Runs `kerascnn train` whose float32 TFLite writer dies halfway: it converts, writes half the flatbuffer,
# says so in the file argv[1] and hangs there until the test SIGKILLs the process.
HANGING_EXPORT = """
import sys, time
from pathlib import Path
from kerascnn import cli, export

name, spec = export.TFLITE_FILES["float32"]

def write_tflite_and_hang(model, path, context):
    spec.writer(model, path, context)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    Path(sys.argv[1]).write_text(str(path))
    time.sleep(600)

export.TFLITE_FILES["float32"] = (name, export.ArtifactSpec(write_tflite_and_hang, True))
sys.exit(cli.main(sys.argv[2:]))
"""


def test_sigkill_inside_an_export_writer_then_resume_leaves_no_staging_and_a_complete_run(tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run_dir, ready = tmp_path / "run", tmp_path / "writer_is_hanging"
    proc = subprocess.Popen([sys.executable, "-c", HANGING_EXPORT, str(ready), "train", "--output", str(tmp_path),
                             "--name", "run", "--epochs", "1", "--no-report", "--set", "train.verbose=0",
                             "--set", "data.max_train_examples=400", "--set", "model.options.filters=[4]",
                             "--set", "model.options.dense=16", "--set", "train.tensorboard=false",
                             "--set", "export.formats=['keras', 'saved_model', 'tflite']",
                             "--set", "export.tflite=['float32']"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), f"the export never reached the TFLite writer: {proc.stderr.read().decode()[-2000:]}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    half_written = Path(ready.read_text())
    assert half_written.parent.name.startswith(".export-") and half_written.parent.parent == run_dir
    assert half_written.is_file() and not (run_dir / "manifest.json").exists()
    assert (run_dir / "checkpoints" / "trained.keras").is_file()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert f"run directory: {run_dir}" in capsys.readouterr().out
    assert_complete(run_dir, epochs=1)
    assert not half_written.parent.exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == {"model.keras", "saved_model/1", "model.tflite"}
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(load(run_dir / "model.tflite").predict_proba(images),
                               load(run_dir / "model.keras").predict_proba(images), atol=1e-5)


@pytest.fixture
def ctrl_c(monkeypatch):
    """Make the next fit receive Ctrl-C at batch 7 of its second epoch."""
    interrupt, make_callbacks = InterruptAt(1, 7), training.make_callbacks
    monkeypatch.setattr(training, "make_callbacks", lambda *a, **k: make_callbacks(*a, **k) + [interrupt])


TINY = ["--epochs", str(EPOCHS), "--set", "train.backup_every=3", "--set", "train.verbose=0",
        "--set", "data.max_train_examples=400",
        "--set", "model.options.filters=[4]", "--set", "model.options.dense=16", "--set", "train.tensorboard=false",
        "--set", "export.formats=['keras']"]


def test_ctrl_c_prints_the_resume_command_and_resume_finishes(tmp_path, capsys, ctrl_c):
    assert main(["train", "--output", str(tmp_path), "--name", "run", *TINY]) == 130
    err = capsys.readouterr().err
    assert err.strip() == f"kerascnn: interrupted; continue the run with: kerascnn train --resume {tmp_path / 'run'}"
    assert list(pd.read_csv(tmp_path / "run" / "history.csv")["epoch"]) == [0]
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert_complete(tmp_path / "run")


class StateAtTrainBegin(keras.callbacks.Callback):
    """Records the weights and optimizer variables a resumed fit starts from, and the step count it ends at."""

    def on_train_begin(self, logs=None):  # runs after BackupAndRestore, which comes earlier in the list
        self.weights, seen = {}, {}
        for layer in self.model.layers:  # named as Keras names them in a weights file: conv2d, conv2d_1, ...
            kind = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", type(layer).__name__)
            kind = re.sub("([a-z])([A-Z])", r"\1_\2", kind).lower()
            self.weights[kind if kind not in seen else f"{kind}_{seen[kind]}"] = [np.asarray(w) for w in layer.weights]
            seen[kind] = seen.get(kind, 0) + 1
        self.optimizer = [np.asarray(v) for v in self.model.optimizer.variables]

    def on_train_end(self, logs=None):
        self.iterations = int(self.model.optimizer.iterations)


def backup_contents(path: Path) -> tuple[dict, list]:
    """Layer weights and optimizer variables as Keras' BackupAndRestore wrote them (a .weights.h5 file)."""
    import h5py

    with h5py.File(path, "r") as f:
        layers = {name: [np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"]))]
                  for name, group in f["layers"].items()}
        optimizer = [np.asarray(f["optimizer/vars"][str(i)]) for i in range(len(f["optimizer/vars"]))]
    return layers, optimizer


def test_resume_restores_the_weights_and_optimizer_state_and_keeps_the_history(tmp_path, capsys, ctrl_c,
                                                                               monkeypatch):
    run_dir = tmp_path / "run"
    assert main(["train", "--output", str(tmp_path), "--name", "run", "--no-report", *TINY]) == 130
    history_before = (run_dir / "history.csv").read_text()
    backup = json.loads((run_dir / "checkpoints/backup/training_metadata.json").read_text())
    layers, optimizer = backup_contents(run_dir / "checkpoints/backup/latest.weights.h5")
    steps_done = int(optimizer[0])  # the optimizer's `iterations` when the backup was written
    assert backup["epoch"] == 1 and steps_done > 0
    recorder = StateAtTrainBegin()
    make_callbacks = training.make_callbacks
    monkeypatch.setattr(training, "make_callbacks", lambda *a, **k: make_callbacks(*a, **k) + [recorder])
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert set(recorder.weights) == set(layers)
    for name, weights in layers.items():
        assert len(recorder.weights[name]) == len(weights)
        for restored, stored in zip(recorder.weights[name], weights):
            np.testing.assert_array_equal(restored, stored)
    assert len(recorder.optimizer) == len(optimizer) > 2  # iterations, learning rate and Adam's moments
    for restored, stored in zip(recorder.optimizer, optimizer):
        np.testing.assert_array_equal(restored, stored)
    # Keras restarts the interrupted epoch from its first batch: the step count carries on from the backup's
    steps_per_epoch = -(-json.loads((run_dir / "manifest.json").read_text())["counts"]["train"] // 32)
    assert recorder.iterations == steps_done + steps_per_epoch * (EPOCHS - backup["epoch"])
    assert (run_dir / "history.csv").read_text().startswith(history_before)  # epoch 0's row unchanged
    assert_complete(run_dir)


def test_killed_during_export_resumes_into_export_without_training_again(tmp_path, monkeypatch):
    config = kerascnn.load_config(values={"run.output": str(tmp_path), "run.name": "run", "train.epochs": 2,
                                          "train.verbose": 0, "train.tensorboard": False,
                                          "model.options": {"filters": [4], "dense": 16}, "export.formats": ["keras"]})

    def interrupted_export(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(runner, "export", interrupted_export)
        with pytest.raises(RunInterrupted) as interrupted:
            run(config)
    assert interrupted.value.run_dir == tmp_path / "run"
    assert (tmp_path / "run" / "checkpoints" / "trained.keras").is_file()
    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("training ran again"))
    result = run(resume=tmp_path / "run")
    assert_complete(result.run_dir, epochs=2)


def test_resume_refuses_finished_runs_and_a_second_config(tmp_path):
    config = kerascnn.load_config(values={"run.output": str(tmp_path), "run.name": "run", "train.epochs": 1,
                                          "train.verbose": 0, "train.tensorboard": False,
                                          "model.options": {"filters": [4], "dense": 16}, "export.formats": ["keras"]})
    run_dir = run(config).run_dir
    with pytest.raises(ConfigError, match="already finished"):
        run(resume=run_dir)
    with pytest.raises(ConfigError, match="not both"):
        run(config, resume=run_dir)


def test_history_is_cut_back_to_the_epochs_before_the_backup(tmp_path):
    backup = tmp_path / "checkpoints" / "backup"
    backup.mkdir(parents=True)
    (backup / "latest.weights.h5").write_bytes(b"weights")
    (backup / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    (tmp_path / "history.csv").write_text("epoch,loss,val_loss\n0,1.0,0.9\n1,0.8,0.7\n1,0.8,0.7\n2,0.6,0.8\n3,0.5")
    state = resume_state(tmp_path, "history.csv")
    assert state == ResumeState(start_epoch=2, best_val_loss=0.7, best_epoch=1)
    assert (tmp_path / "history.csv").read_text() == "epoch,loss,val_loss\n0,1.0,0.9\n1,0.8,0.7\n"


def test_a_backup_without_its_metadata_restarts_from_scratch(tmp_path):
    backup = tmp_path / "checkpoints" / "backup"
    backup.mkdir(parents=True)
    (backup / "latest.weights.h5").write_bytes(b"half written")
    (tmp_path / "history.csv").write_text("epoch,loss,val_loss\n")
    assert resume_state(tmp_path, "history.csv") == ResumeState()
    assert not backup.exists()


def tiny_model() -> keras.Model:
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])


def test_a_checkpoint_write_that_dies_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    model = tiny_model()
    path = tmp_path / "best.keras"
    checkpoint = AtomicModelCheckpoint(str(path), monitor="val_loss", save_best_only=True)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_loss": 1.0})
    before = path.read_bytes()

    def dies_halfway(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"PK\x03\x04 partial zip")
        raise OSError("killed")

    monkeypatch.setattr(keras.Model, "save", dies_halfway)
    with pytest.raises(OSError):
        checkpoint.on_epoch_end(1, {"val_loss": 0.5})
    assert path.read_bytes() == before
    monkeypatch.undo()
    checkpoint.on_epoch_end(2, {"val_loss": float("nan")})  # never the best
    assert path.read_bytes() == before
    load(path)


def test_early_stopping_carries_on_patience_and_best_weights_after_resume(tmp_path):
    best_model, model = tiny_model(), tiny_model()
    best_model.save(tmp_path / "best.keras")
    stopper = ResumableEarlyStopping(ResumeState(start_epoch=3, best_val_loss=0.5, best_epoch=0),
                                     tmp_path / "best.keras", monitor="val_loss", patience=3,
                                     restore_best_weights=True)
    stopper.set_model(model)
    stopper.on_train_begin()
    assert stopper.wait == 2 and stopper.best == 0.5
    stopper.on_epoch_end(3, {"val_loss": 0.9})
    assert model.stop_training
    stopper.on_train_end()
    for restored, best in zip(model.get_weights(), best_model.get_weights()):
        np.testing.assert_array_equal(restored, best)
