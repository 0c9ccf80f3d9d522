"""The CLI: a full train run writes the run directory; bad input is one line, exit code 2, nothing written."""

import json
import subprocess
import sys

import pytest

from kerascnn.cli import main
from tests.conftest import write_image_folder

RUN_FILES = ["config.toml", "history.csv", "labels.txt", "manifest.json", "model.h5", "model.keras", "model.tflite",
             "checkpoints/best.keras", "saved_model/1/saved_model.pb"]


def test_default_run_reaches_95_percent_on_digits_and_writes_every_file(default_run):
    assert default_run.test_metrics["accuracy"] >= 0.95
    for relative in RUN_FILES:
        assert (default_run.run_dir / relative).exists(), relative
    assert any((default_run.run_dir / "logs").rglob("*tfevents*"))
    manifest = json.loads((default_run.run_dir / "manifest.json").read_text())
    assert manifest["train_seconds"] < 60
    assert all(a["parity"]["top1_agreement"] == 1.0 for name, a in manifest["artifacts"].items()
               if a["parity"]["criterion"] == "exact")
    assert all(a["parity"]["passed"] for a in manifest["artifacts"].values())


def test_train_command_prints_run_dir_and_accuracy(tmp_path, capsys):
    code = main(["train", "--epochs", "1", "--model", "mlp", "--output", str(tmp_path), "--name", "r",
                 "--set", "train.verbose=0", "--set", "export.formats=['keras']"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"run directory: {tmp_path / 'r'}" in out and "test accuracy:" in out
    assert (tmp_path / "r" / "model.keras").is_file()
    # the same name again is refused unless --overwrite
    assert main(["train", "--epochs", "1", "--output", str(tmp_path), "--name", "r"]) == 2
    assert "already exists" in capsys.readouterr().err


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
