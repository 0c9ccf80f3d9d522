"""Model files that carry code are refused on every load path, and their code never runs."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest

import kerascnn
from kerascnn.cli import main
from kerascnn.errors import ModelLoadError
from kerascnn.runner import run

FORMATS = ["keras", "h5"]


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "side_effect_ran"


def lambda_model(marker) -> keras.Model:
    """A digits-shaped classifier with a Lambda layer whose Python lambda writes `marker` when it runs."""
    # The path is baked into the lambda's code: Keras cannot restore a lambda's default arguments.
    payload = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")
    inputs = keras.Input((8, 8, 1), name="images")
    touched = keras.layers.Lambda(payload, name="payload")(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(touched))
    return keras.Model(inputs, outputs)


def named_function_lambda_model(marker) -> keras.Model:
    """A Lambda over a registered named function: Keras' safe_mode lets this one through."""

    @keras.saving.register_keras_serializable(package="kerascnn_tests")
    def touch(x):
        open(marker, "w").close()
        return x

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(keras.layers.Lambda(touch)(inputs)))
    return keras.Model(inputs, outputs)


def saved(model: keras.Model, path, marker):
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the payload once, here, on purpose
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_lambda_model_is_refused_in_one_line_and_never_runs(tmp_path, marker, fmt):
    path = saved(lambda_model(marker), tmp_path / f"model.{fmt}", marker)
    with pytest.raises(ModelLoadError) as error:
        kerascnn.load(path)
    message = str(error.value)
    assert "\n" not in message and "Lambda 'payload'" in message and "--unsafe" in message
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_named_function_lambda_passes_keras_safe_mode_but_not_kerascnn(tmp_path, marker, fmt):
    path = saved(named_function_lambda_model(marker), tmp_path / f"model.{fmt}", marker)
    with pytest.raises(ModelLoadError, match="refusing to load"):
        kerascnn.load(path)
    assert not marker.exists()
    keras.saving.load_model(path, safe_mode=True)  # what a plain safe_mode load would have done
    assert marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_keras_safe_mode_alone_also_refuses_python_lambdas(tmp_path, marker, fmt):
    """Keras 3.15.1 honours safe_mode for .keras and for legacy .h5: the second lock under kerascnn's check."""
    path = saved(lambda_model(marker), tmp_path / f"model.{fmt}", marker)
    with pytest.raises(ValueError, match="Lambda"):
        keras.saving.load_model(path, safe_mode=True)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsafe_loads_it_so_the_refusal_is_what_kept_the_code_from_running(tmp_path, marker, fmt):
    path = saved(lambda_model(marker), tmp_path / f"model.{fmt}", marker)
    predictor = kerascnn.load(path, unsafe=True)
    assert marker.exists()
    assert predictor.predict_proba(np.zeros((2, 8, 8, 1), np.float32)).shape == (2, 10)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unregistered_custom_layer_is_refused_and_its_code_never_runs(tmp_path, marker, fmt):
    @keras.saving.register_keras_serializable(package="elsewhere")
    class Payload(keras.layers.Layer):
        @classmethod
        def from_config(cls, config):
            open(marker, "w").close()
            return cls(**config)

        def call(self, x):
            return x

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(Payload()(inputs))))
    path = saved(model, tmp_path / f"model.{fmt}", marker)
    keras.saving.get_custom_objects().pop("elsewhere>Payload")  # a file from a process that had this class
    with pytest.raises(ModelLoadError, match="cannot load"):
        kerascnn.load(path)
    assert not marker.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished digits run to plant crafted models into."""
    config = kerascnn.load_config(values={
        "run.output": str(tmp_path_factory.mktemp("runs")), "run.name": "digits", "train.epochs": 1,
        "train.verbose": 0, "train.tensorboard": False, "model.options": {"filters": [4], "dense": 16},
        "export.formats": ["keras"]})
    return run(config).run_dir


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_cli_load_paths_refuse_with_exit_2_and_unsafe_opts_in(finished_run, tmp_path, marker, capsys, command):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    saved(lambda_model(marker), run_dir / "model.keras", marker)
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    argv = {"predict": ["predict", str(run_dir / "model.keras"), str(image)],
            "evaluate": ["evaluate", str(run_dir)], "export": ["export", str(run_dir)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to load" in err and "Traceback" not in err
    assert not marker.exists()
    if command != "export":  # export re-loads what it writes in safe mode, so it has no --unsafe
        assert main(argv + ["--unsafe"]) == 0
        assert marker.exists()


def test_resume_refuses_a_planted_checkpoint(finished_run, tmp_path, marker):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "manifest.json").unlink()  # an unfinished run whose training had completed
    saved(lambda_model(marker), run_dir / "checkpoints" / "trained.keras", marker)
    with pytest.raises(ModelLoadError, match="refusing to load"):
        run(resume=run_dir)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_lambda_inside_a_nested_model_is_refused(tmp_path, marker, fmt):
    inner = lambda_model(marker)
    inner.name = "inner"
    inputs = keras.Input((8, 8, 1))
    path = saved(keras.Model(inputs, inner(inputs), name="outer"), tmp_path / f"model.{fmt}", marker)
    with pytest.raises(ModelLoadError) as error:
        kerascnn.load(path)
    assert "Lambda 'payload'" in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def test_a_tfsm_layer_is_refused(tmp_path):
    """A TFSMLayer reloads a SavedModel graph from a path stored in the file: it never passes."""
    graph = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    graph.export(str(tmp_path / "graph"), verbose=False)
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Softmax()(keras.layers.TFSMLayer(str(tmp_path / "graph"), name="graph")(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    with pytest.raises(ModelLoadError, match="TFSMLayer 'graph'"):
        kerascnn.load(tmp_path / "model.keras")


def test_a_lambda_model_as_backbone_weights_is_refused_and_never_runs(tmp_path, marker, capsys):
    path = saved(lambda_model(marker), tmp_path / "pretrained.keras", marker)
    output = tmp_path / "out"
    code = main(["train", "--backbone", "cnn", "--weights", str(path), "--transfer", "truncate", "--cut-at", "pool_0",
                 "--epochs", "1", "--output", str(output), "--name", "r", "--set", "train.verbose=0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Lambda 'payload'" in err and "Traceback" not in err
    assert not marker.exists() and not output.exists()
