"""`kerascnn lr-find` and `train.learning_rate = "find"`: the range test suggests a rate at which
training on digits works, leaves the model's weights as they were, and a run records the rate."""

import json

import numpy as np
import pytest

from kerascnn.cli import main
from kerascnn.config import load_config
from kerascnn.errors import ConfigError, TrainingError
from kerascnn.lr_find import steepest_descent


def test_find_is_the_only_word_a_learning_rate_takes():
    assert load_config(values={"train.learning_rate": "find"}).train.learning_rate == "find"
    with pytest.raises(ConfigError, match="did you mean 'find'"):
        load_config(values={"train.learning_rate": "fnd"})
    with pytest.raises(ConfigError, match="must be positive"):
        load_config(values={"train.learning_rate": -1.0})


def test_steepest_descent_reads_the_steepest_fall_on_the_trimmed_curve():
    rates = np.logspace(-7, 1, 100)
    # Flat, then a fall that is steepest around 1e-3, then divergence.
    losses = 2.0 - 1.5 / (1 + np.exp(-(np.log10(rates) + 3) * 4)) + np.where(rates > 1e-1, 50 * rates, 0)
    assert steepest_descent(rates, losses) == pytest.approx(1e-3, rel=0.3)
    with pytest.raises(TrainingError, match="too few"):
        steepest_descent(rates[:8], np.full(8, np.nan))


def test_lr_find_restores_the_weights(tmp_path):
    from kerascnn.config import TrainConfig
    from kerascnn.data.datasets import load_data
    from kerascnn.lr_find import lr_find
    from kerascnn.models.registry import build_model

    data = load_data(load_config(values={"data.max_train_examples": 200}).data)
    model = build_model("cnn", data.input_shape, data.num_classes, filters=[8], dense=32)
    before = [w.copy() for w in model.get_weights()]
    result = lr_find(model, data, TrainConfig(batch_size=16), steps=30)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert len(result.losses) <= 30 and result.learning_rates[0] == pytest.approx(1e-7)
    assert np.all(np.diff(result.learning_rates) > 0)
    assert 1e-7 <= result.suggestion <= 10


def test_cli_lr_find_writes_the_plot(tmp_path, capsys):
    out = tmp_path / "lr.png"
    assert main(["lr-find", "--out", str(out), "--steps", "40", "--set", "data.max_train_examples=200",
                 "--set", "model.options={filters = [8], dense = 32}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] <= 40 and 1e-7 <= summary["suggestion"] <= 10
    assert out.stat().st_size > 1000


def test_learning_rate_find_trains_at_the_suggestion_and_records_it(tmp_path):
    """The rate lr-find suggests on digits is one at which training works."""
    from kerascnn.runner import run

    config = load_config(values={"run.output": str(tmp_path), "run.name": "found", "train.learning_rate": "find",
                                 "train.epochs": 4, "train.verbose": 0, "train.tensorboard": False,
                                 "export.formats": ["keras"], "evaluate.report": False})
    result = run(config)
    found = result.manifest["learning_rate"]
    assert 1e-7 < found["value"] < 10 and found["found_by"]["steps"] > 10
    assert load_config(result.run_dir / "config.toml").train.learning_rate == found["value"]
    assert (result.run_dir / "lr_find.png").is_file() and (result.run_dir / "lr_find.csv").is_file()
    assert result.test_metrics["accuracy"] > 0.8  # chance is 0.1
