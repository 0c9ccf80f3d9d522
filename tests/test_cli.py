"""The CLI: a full train run writes the run directory; bad input is one line, exit code 2, nothing written."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kerascnn.cli import main
from tests.conftest import write_image_folder

def event_tags(folder) -> set[str]:
    """The scalar tags TensorBoard's event files under `folder` hold."""
    import tensorflow as tf

    return {value.tag for path in folder.rglob("*tfevents*") for event in tf.compat.v1.train.summary_iterator(str(path))
            for value in event.summary.value}


def test_default_run_reaches_95_percent_on_digits_and_writes_every_file(default_run):
    import numpy as np
    import pandas as pd

    from kerascnn.predict import load
    from kerascnn.rundir import read_run_config

    run_dir, data = default_run.run_dir, default_run.data
    assert default_run.test_metrics["accuracy"] >= 0.95
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["test_metrics"] == pytest.approx(default_run.test_metrics)
    assert manifest["class_names"] == data.class_names and manifest["input_shape"] == [8, 8, 1]
    config = read_run_config(run_dir)
    assert (config.data.dataset, config.model.name, config.run.name) == ("digits", "cnn", "default")
    assert (run_dir / "labels.txt").read_text().split() == data.class_names
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == list(range(manifest["epochs_run"]))
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.columns)
    assert history["val_accuracy"].max() >= 0.9
    # every artifact predicts what the trained model predicts
    images = data.arrays["test"][0][:32].astype("float32")
    expected = np.asarray(default_run.model(images, training=False))
    for artifact in ("model.keras", "model.h5", "saved_model/1", "saved_model", "model.tflite"):
        np.testing.assert_allclose(load(run_dir / artifact).predict_proba(images), expected, atol=1e-5,
                                   err_msg=artifact)
    # the best checkpoint holds the epoch with the lowest val_loss
    best = load(run_dir / "checkpoints" / "best.keras").runtime.model
    best.compile(loss="categorical_crossentropy")
    x_val, y_val = data.arrays["validation"]
    val_loss = best.evaluate(x_val.astype("float32"), np.eye(data.num_classes)[y_val], verbose=0)
    assert val_loss == pytest.approx(history["val_loss"].min(), rel=1e-3)
    assert {"epoch_loss", "epoch_accuracy"} <= event_tags(run_dir / "logs")
    # CPU time, unlike wall time, does not grow when other jobs share the machine: the whole run (training,
    # evaluation, export and report) within one CPU minute (about 15 s measured on 2026-12-01)
    assert default_run.cpu_seconds < 60
    assert manifest["train_seconds"] > 0
    # training FLOPs: 3 x the layers' forward count, x training images x epochs run; the rate beside train_seconds
    from kerascnn.flops import training_flops_per_image

    assert manifest["flops_per_image"] == training_flops_per_image(default_run.model) > 0
    assert manifest["train_flops"] == manifest["flops_per_image"] * manifest["counts"]["train"] * manifest["epochs_run"]
    assert manifest["gemm_gflops"] > 0 and manifest["conv_gflops"] > 0 and "flops_note" not in manifest
    assert manifest["achieved_gflops"] == pytest.approx(manifest["train_flops"] / manifest["train_seconds"] / 1e9,
                                                        abs=0.05)
    assert manifest["utilisation"] == pytest.approx(manifest["achieved_gflops"] / manifest["conv_gflops"], abs=1e-3)
    assert all(a["parity"]["top1_agreement"] == 1.0 for name, a in manifest["artifacts"].items()
               if a["parity"]["criterion"] == "exact")
    assert all(a["parity"]["passed"] for a in manifest["artifacts"].values())


def test_train_command_prints_run_dir_and_accuracy(tmp_path, capsys):
    code = main(["train", "--epochs", "1", "--model", "mlp", "--output", str(tmp_path), "--name", "r",
                 "--set", "train.verbose=0", "--set", "export.formats=['keras']"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"run directory: {tmp_path / 'r'}" in out and "test accuracy:" in out
    assert re.search(r"^training: \d\.\de\+\d+ FLOPs in \d+ s = [\d.]+ GFLOPS \(\d\.\d\d of the machine's \d+ float32 "
                     r"conv GFLOPS\)$", out, re.MULTILINE)
    assert (tmp_path / "r" / "model.keras").is_file()
    # the same name again is refused unless --overwrite
    assert main(["train", "--epochs", "1", "--output", str(tmp_path), "--name", "r"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_overwrite_replaces_a_run_but_only_once_the_inputs_are_good(tmp_path, capsys):
    tiny = ["--epochs", "1", "--model", "mlp", "--output", str(tmp_path), "--name", "r", "--no-report",
            "--set", "train.verbose=0", "--set", "train.tensorboard=false", "--set", "export.formats=['keras']"]
    assert main(["train", *tiny]) == 0
    old_model = (tmp_path / "r" / "model.keras").read_bytes()
    (tmp_path / "r" / "notes.txt").write_text("from the old run")
    capsys.readouterr()
    assert main(["train", *tiny, "--overwrite", "--set", "data.classes=[0, 42]"]) == 2  # bad input: nothing lost
    assert "data.classes" in capsys.readouterr().err
    assert (tmp_path / "r" / "model.keras").read_bytes() == old_model and (tmp_path / "r" / "notes.txt").is_file()
    assert main(["train", *tiny, "--overwrite", "--set", "model.options.hidden=[7]"]) == 0
    assert not (tmp_path / "r" / "notes.txt").exists()
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["epochs_run"] == 1
    from kerascnn.predict import load

    model = load(tmp_path / "r" / "model.keras").runtime.model
    assert [layer.units for layer in model.layers if hasattr(layer, "units")] == [7, 10]  # the new run's network


def write_wrong_keras(model, path, context):
    """An export writer whose file does not predict what the model predicts (a broken exporter)."""
    import keras

    wrong = keras.models.clone_model(model)
    wrong.set_weights([w * 1.5 for w in model.get_weights()])
    wrong.save(path)


@pytest.fixture
def broken_keras_writer(monkeypatch):
    from kerascnn import export

    monkeypatch.setitem(export.FORMAT_FILES, "keras", {"model.keras": export.ArtifactSpec(write_wrong_keras, True)})


def test_export_failing_its_parity_check_exits_1_and_keeps_what_worked(default_run, tmp_path, capsys,
                                                                       broken_keras_writer):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(default_run.run_dir, run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main(["export", str(run_dir), "--set", "export.formats=['keras', 'tflite']"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kerascnn: error: export failed for model.keras (model.keras: model.keras does not predict "
                          "what the trained model predicts")
    assert f"kerascnn export {run_dir} --set 'export.formats=[\"keras\"]'" in err  # the exact command to redo it
    assert err.count("\n") == 1 and "Traceback" not in err
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after[Path("model.keras")] == before[Path("model.keras")]  # the failed artifact never replaces the old one
    manifest = json.loads(after[Path("manifest.json")])
    assert list(manifest["failed_artifacts"]) == ["model.keras"]
    assert manifest["artifacts"]["model.tflite"]["parity"]["passed"]  # the artifact that worked is written


def test_train_whose_export_fails_exits_1_and_records_the_failure(tmp_path, capsys, broken_keras_writer):
    code = main(["train", "--epochs", "1", "--model", "mlp", "--output", str(tmp_path), "--name", "r", "--no-report",
                 "--set", "train.verbose=0", "--set", "train.tensorboard=false", "--set", "export.formats=['keras']"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "does not predict what the trained model predicts" in err
    run_dir = tmp_path / "r"
    assert not (run_dir / "model.keras").exists()
    assert list(json.loads((run_dir / "manifest.json").read_text())["failed_artifacts"]) == ["model.keras"]
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert (run_dir / "checkpoints" / "trained.keras").is_file()  # `kerascnn train --resume` can export again


@pytest.mark.parametrize("args, fragment", [
    (["train", "--dataset", "digts"], "unknown dataset 'digts' (did you mean 'digits'?)"),
    (["train", "--model", "cnnn"], "unknown model 'cnnn' (did you mean 'cnn'?)"),
    (["train", "--preset", "fashion"], "unknown preset 'fashion'"),
    (["train", "--epochs", "0"], "train.epochs must be positive"),
    (["train", "--set", "data.validation_split=1.2"], "data.validation_split must be between 0 and 1"),
    (["train", "--set", "train.batchsize=8"], "unknown config key 'train.batchsize' (did you mean 'batch_size'?)"),
    (["train", "--config", "missing.toml"], "does not exist"),
    (["train", "--epochs", "many"], "invalid int value"),
    (["train", "--dataset", "no/such/folder"], "does not exist"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, fragment):
    output = tmp_path / "out"
    code = main(args + (["--output", str(output)] if args[0] == "train" else []))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("kerascnn: error: ") and fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not output.exists()


@pytest.mark.parametrize("layout, fragment", [("empty", "no usable images"), ("one_class", "one class only")])
def test_bad_folders_from_the_cli(tmp_path, capsys, layout, fragment):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    if layout == "one_class":
        write_image_folder(root, classes=("a",))
    assert main(["train", "--dataset", str(root), "--output", str(tmp_path / "out")]) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kerascnn", "--debug", "train", "--model", "cnnn",
                             "--output", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_datasets_lists_every_source(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "fashion_mnist", "mnist", "cifar10", "tfds:<name>"):
        assert name in out


def test_predict_and_evaluate_commands(default_run, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    image = default_run.data.arrays["test"][0][0, ..., 0].astype(np.uint8)
    Image.fromarray(image, "L").save(tmp_path / "digit.png")
    expected = default_run.data.class_names[int(default_run.model(image[None, ..., None].astype("float32")).numpy().argmax())]
    assert main(["predict", str(default_run.run_dir / "model.tflite"), str(tmp_path), "--json", "--top-k", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["predictions"][0]["class"] == expected and len(rows[0]["predictions"]) == 2
    assert main(["evaluate", str(default_run.run_dir), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(default_run.test_metrics["accuracy"])
    assert main(["predict", str(tmp_path / "digit.png"), str(tmp_path)]) == 2
    assert "not a model" in capsys.readouterr().err
