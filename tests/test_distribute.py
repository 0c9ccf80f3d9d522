"""tf.distribute strategies, the multi-worker training loop, and the mixed-precision and XLA switches."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerascnn
from kerascnn import distribute
from kerascnn.cli import build_parser, config_from_args, main
from kerascnn.config import DataConfig, ExportConfig, RunConfig, RunSection, TrainConfig, load_config
from kerascnn.data.datasets import load_data
from kerascnn.data.pipeline import batches
from kerascnn.errors import ConfigError
from kerascnn.models import build_model, register_model
from kerascnn.runner import run
from kerascnn.training import CHECKPOINT_FILE, HISTORY_FILE, LOG_DIR, make_callbacks

REPO_ROOT = Path(kerascnn.__file__).resolve().parents[1]
TWO_WORKERS = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}


@pytest.fixture
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"), seed=0)


def small_cnn(data):
    return build_model("cnn", data.input_shape, data.num_classes, filters=(8,), dense=32)


def test_default_strategy_on_a_cpu_machine(no_tf_config):
    assert distribute.resolve_strategy("auto") == "default"
    strategy = distribute.make_strategy("auto")
    assert distribute.strategy_name(strategy) == "default"
    assert distribute.is_chief(strategy) and distribute.worker_task(strategy) is None
    assert distribute.global_batch_size(strategy, 32) == 32
    assert not distribute.needs_custom_loop(strategy)


def test_auto_picks_multi_worker_when_tf_config_names_a_cluster(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(TWO_WORKERS))
    assert distribute.resolve_strategy("auto") == "multi_worker"
    monkeypatch.setenv("TF_CONFIG", json.dumps({**TWO_WORKERS, "cluster": {"worker": ["127.0.0.1:1"]}}))
    assert distribute.resolve_strategy("auto") == "default"


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "must list the cluster's workers"),
    (json.dumps({**TWO_WORKERS, "task": {"type": "worker", "index": 2}}), "task worker:2 is not in its cluster"),
    (json.dumps({**TWO_WORKERS, "task": {"type": "ps", "index": 0}}), "task ps:0 is not in its cluster"),
])
def test_multi_worker_without_a_valid_tf_config_says_what_is_wrong(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=message):
        distribute.make_strategy("multi_worker")


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="this machine has a GPU")
def test_mirrored_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="strategy 'mirrored' needs a GPU"):
        distribute.make_strategy("mirrored")


def test_tpu_without_a_tpu_is_refused():
    with pytest.raises(ConfigError, match="strategy 'tpu' found no TPU"):
        distribute.make_strategy("tpu")


def test_cli_reports_a_strategy_error_in_one_line_and_writes_nothing(no_tf_config, tmp_path, capsys):
    code = main(["train", "--strategy", "multi_worker", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "TF_CONFIG" in err
    assert not (tmp_path / "out").exists()


def test_cli_flags_reach_the_train_config():
    args = build_parser().parse_args(["train", "--strategy", "default", "--mixed-precision", "--jit-compile"])
    train = config_from_args(args).train
    assert (train.strategy, train.mixed_precision, train.jit_compile) == ("default", True, True)
    assert RunConfig().train.strategy == "auto"


def test_config_rejects_an_unknown_strategy_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'mirrored'"):
        load_config(values={"train.strategy": "mirored"})


def _custom_loop_inputs(data, batch_size=64):
    strategy = tf.distribute.get_strategy()
    train = distribute.distribute_dataset(
        strategy, data.train, lambda ds, b: batches(ds, b, data.num_classes, training=True), batch_size, repeat=True)
    validation = distribute.distribute_dataset(
        strategy, data.validation, lambda ds, b: batches(ds, b, data.num_classes), batch_size)
    return train, validation, -(-data.counts["train"] // batch_size)


def _compiled(data):
    keras.utils.set_random_seed(0)  # the weights and the shuffle order, whatever ran before
    model = small_cnn(data)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def test_custom_loop_trains_with_the_runs_callbacks_and_history(digits, tmp_path):
    train, validation, steps = _custom_loop_inputs(digits)
    model = _compiled(digits)
    history = distribute.fit_distributed(model, train, validation, epochs=3, steps_per_epoch=steps, verbose=0,
                                         callbacks=make_callbacks(TrainConfig(epochs=3), tmp_path))
    assert history.epoch == [0, 1, 2]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    accuracy = history.history["val_accuracy"]
    assert accuracy[-1] > max(accuracy[0], 0.5)
    assert len((tmp_path / HISTORY_FILE).read_text().splitlines()) == 4  # header + 3 epochs
    assert (tmp_path / CHECKPOINT_FILE).is_file() and any((tmp_path / LOG_DIR).rglob("*tfevents*"))


def test_custom_loop_stops_early(digits):
    train, validation, steps = _custom_loop_inputs(digits)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)
    history = distribute.fit_distributed(_compiled(digits), train, validation, epochs=6, steps_per_epoch=steps,
                                         verbose=0, callbacks=[stop])
    assert history.epoch == [0, 1]


def test_custom_loop_resumes_from_backup_and_restore(digits, tmp_path):
    train, validation, steps = _custom_loop_inputs(digits)
    first = _compiled(digits)
    backup = str(tmp_path / "backup")
    distribute.fit_distributed(first, train, validation, epochs=2, steps_per_epoch=steps, verbose=0,
                               callbacks=[keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    resumed = _compiled(digits)
    history = distribute.fit_distributed(resumed, train, validation, epochs=4, steps_per_epoch=steps, verbose=0,
                                         callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert history.epoch == [2, 3]
    assert int(resumed.optimizer.iterations.numpy()) == 4 * steps
    assert not Path(backup).exists()  # deleted at the end, as fit does


def test_mixed_precision_trains_in_float16_and_exports_float32(digits, tmp_path):
    config = RunConfig(run=RunSection(name="mixed", output=str(tmp_path)), data=DataConfig(dataset="digits"),
                       train=TrainConfig(epochs=1, strategy="default", mixed_precision=True, verbose=0,
                                         tensorboard=False),
                       export=ExportConfig(formats=("keras", "tflite"), tflite=("float32",)))
    with distribute.precision("mixed_float16"):
        trained = small_cnn(digits)
    assert trained.dtype_policy.name == "mixed_float16"
    assert trained.get_layer("probabilities").compute_dtype == "float32"
    result = run(config.replace("model", options={"filters": [8], "dense": 32}))
    assert result.model.dtype_policy.name == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert all(a["parity"]["top1_agreement"] == 1.0 for a in result.manifest["artifacts"].values())


def test_mixed_precision_refuses_a_float16_output(tmp_path):
    @register_model("test_float16_output")
    def float16_output(input_shape, num_classes):
        return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                                 keras.layers.Dense(num_classes, activation="softmax")])

    config = RunConfig(run=RunSection(output=str(tmp_path)), train=TrainConfig(mixed_precision=True, strategy="default"))
    with pytest.raises(ConfigError, match="computes its probabilities in float16"):
        run(config.replace("model", name="test_float16_output"))
    assert not any(tmp_path.iterdir())


def test_jit_compile_runs_on_cpu(digits):
    model = small_cnn(digits)
    result = kerascnn.train(model, digits, TrainConfig(epochs=1, jit_compile=True, verbose=0))
    assert model.jit_compile is True and result.epochs_run == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs `kerascnn train` and saves the weights of the model `run` returned (argv[1], .npz): the chief's
# deployable copy, the other worker's trained model.
KEEP_WEIGHTS = """
import sys
import numpy as np
from kerascnn import cli, runner

train_and_export = runner.run

def run_and_keep_weights(*args, **kwargs):
    result = train_and_export(*args, **kwargs)
    np.savez(sys.argv[1], *[np.asarray(w) for w in result.model.get_weights()])
    return result

runner.run = run_and_keep_weights
sys.exit(cli.main(sys.argv[2:]))
"""


def test_two_workers_train_one_digits_run_in_sync_and_only_the_chief_writes(tmp_path):
    """resnet_small at tiny widths, so BatchNorm's moving statistics are under the two workers too."""
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    output = tmp_path / "out"
    command = ["train", "--strategy", "multi_worker", "--epochs", "2", "--model", "resnet_small",
               "--set", "model.options.stem=8", "--set", "model.options.widths=[8, 16]",
               "--set", "model.options.blocks=[0, 1]", "--no-report",
               "--batch-size", "32", "--output", str(output), "--name", "together", "--set", "train.verbose=2",
               "--set", "train.tensorboard=false", "--set", 'export.formats=["keras", "tflite"]',
               "--set", 'export.tflite=["float32"]']
    processes, temp_dirs = [], []
    try:
        for index in range(2):
            temp_dirs.append(tmp_path / f"tmp{index}")
            temp_dirs[-1].mkdir()
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(temp_dirs[-1]),
                   "TF_CPP_MIN_LOG_LEVEL": "2",
                   "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
            processes.append(subprocess.Popen([sys.executable, "-c", KEEP_WEIGHTS, str(tmp_path / f"weights{index}.npz"),
                                               *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              text=True, start_new_session=True))
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert "global batch 64 = 32 per replica x 2" in outputs[0]
    assert "worker finished" in outputs[1]
    assert [p.name for p in output.iterdir()] == ["together"]
    manifest = json.loads((output / "together" / "manifest.json").read_text())
    assert manifest["strategy"] == "multi_worker" and manifest["num_replicas_in_sync"] == 2
    assert manifest["global_batch_size"] == 64 and manifest["epochs_run"] == 2
    assert set(manifest["artifacts"]) == {"model.keras", "model.tflite"}
    assert all(a["parity"]["top1_agreement"] == 1.0 for a in manifest["artifacts"].values())
    assert manifest["test_metrics"]["accuracy"] > 0.3
    history = (output / "together" / "history.csv").read_text().splitlines()
    assert len(history) == 3
    assert not list(temp_dirs[1].glob("kerascnn-worker-*"))  # the other worker's files are gone
    # in sync: both workers end with the same weights, BatchNorm's moving mean and variance included
    chief, other = (np.load(tmp_path / f"weights{index}.npz") for index in range(2))
    assert len(chief.files) == len(other.files) > 0
    model = kerascnn.load(output / "together" / "model.keras").runtime.model
    moving = [i for i, w in enumerate(model.weights) if "moving" in w.path]
    assert moving, "the model has no BatchNorm moving statistics"
    for i in range(len(chief.files)):
        np.testing.assert_allclose(other[f"arr_{i}"], chief[f"arr_{i}"], rtol=0, atol=1e-6,
                                   err_msg=model.weights[i].path)
