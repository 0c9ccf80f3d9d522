"""The config loader: presets, files, overrides, and one-line errors for every bad value."""

import pytest

from kerascnn.config import RunConfig, config_from_dict, list_presets, load_config, parse_override
from kerascnn.errors import ConfigError


def test_defaults_are_the_embedded_digits_run():
    config = RunConfig()
    assert config.data.dataset == "digits"
    assert config.model.name == "cnn"
    assert (config.train.epochs, config.train.batch_size, config.train.optimizer) == (20, 32, "adam")
    assert config.train.learning_rate == 1e-3 and config.train.early_stopping_patience == 5
    assert config.export.formats == ("keras", "h5", "saved_model", "tflite")
    assert config.export.tflite == ("float32", "int8")
    assert config == load_config()  # what `kerascnn train` with no options runs


def test_presets_ship_in_the_package_and_load():
    assert {"digits", "fashion_mnist_quick"} <= set(list_presets())
    assert load_config(preset="fashion_mnist_quick").data.dataset == "fashion_mnist"


def test_later_sources_win(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[train]\nepochs = 7\nbatch_size = 16\n[model]\nname = "mlp"\n')
    config = load_config(path, preset="digits", overrides=["train.epochs=3", "model.options.hidden=[64]"],
                         values={"train.batch_size": 8})
    assert (config.train.epochs, config.train.batch_size, config.model.name) == (3, 8, "mlp")
    assert config.model.options == {"hidden": [64]}


def test_toml_round_trip(tmp_path):
    config = load_config(overrides=["data.image_size=[12, 10]", "train.optimizer=sgd", "run.name=x"])
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config


@pytest.mark.parametrize("mapping, fragment", [
    ({"train": {"epoch": 3}}, "unknown config key 'train.epoch' (did you mean 'epochs'?)"),
    ({"trian": {"epochs": 3}}, "unknown config key 'trian' (did you mean 'train'?)"),
    ({"train": {"epochs": 0}}, "train.epochs must be positive"),
    ({"train": {"epochs": "ten"}}, "train.epochs must be an integer"),
    ({"train": {"epochs": 2.5}}, "train.epochs must be an integer"),
    ({"train": {"optimizer": "adamm"}}, "train.optimizer must be one of"),
    ({"data": {"validation_split": 1.5}}, "data.validation_split must be between 0 and 1"),
    ({"data": {"test_split": 0}}, "data.test_split must be between 0 and 1"),
    ({"data": {"validation_split": 0.6, "test_split": 0.5}}, "must leave training data"),
    ({"data": {"classes": [3]}}, "at least two distinct class indices"),
    ({"data": {"image_size": [0, 8]}}, "data.image_size"),
    ({"export": {"formats": ["tflit"]}}, "unknown format 'tflit' (did you mean 'tflite'?)"),
    ({"run": {"name": "a/b"}}, "run.name must be a plain folder name"),
    ({"train": 3}, "[train] must be a table"),
])
def test_bad_values_name_the_key_and_the_fix(mapping, fragment):
    with pytest.raises(ConfigError) as error:
        config_from_dict(mapping)
    message = str(error.value)
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("mapping, fragment", [
    ({"model": {"name": "cnnn"}}, "unknown model 'cnnn' (did you mean 'cnn'?)"),
    ({"model": {"options": {"filter": [8]}}}, "has no option 'filter' (did you mean 'filters'?)"),
])
def test_model_options_are_checked_where_the_models_are_known(mapping, fragment):
    from kerascnn.runner import check_config  # the runner knows the builders; config.py imports no model code

    config = config_from_dict(mapping)
    with pytest.raises(ConfigError) as error:
        check_config(config)
    message = str(error.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match=r"unknown preset 'digit' \(did you mean 'digits'\?\); presets: "):
        load_config(preset="digit")


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_override_values_are_toml_literals_or_strings():
    assert parse_override("train.epochs=5") == (["train", "epochs"], 5)
    assert parse_override("data.dataset=/tmp/my images") == (["data", "dataset"], "/tmp/my images")
    assert parse_override("data.image_size=[32, 32]") == (["data", "image_size"], [32, 32])
    assert parse_override("run.name=none") == (["run", "name"], None)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("epochs")


def test_docs_config_reference_is_current_and_documents_every_key():
    from pathlib import Path

    from kerascnn.config import config_reference

    text = config_reference()
    assert (Path(__file__).parent.parent / "docs" / "config.md").read_text() == text + "\n", (
        "docs/config.md is stale: run `kerascnn config-reference > docs/config.md`")
    undocumented = [line for line in text.splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not undocumented


def test_none_for_a_field_that_cannot_be_none_is_a_config_error():
    # found by tests/test_fuzz.py: a union field without None (zoom_range: a number or a pair) passed None through
    with pytest.raises(ConfigError, match="augment.zoom_range must be a number, got None"):
        config_from_dict({"augment": {"zoom_range": None}})
    assert config_from_dict({"augment": {"brightness_range": None}}).augment.brightness_range is None
