"""`kerascnn tune`: the search space is checked before any trial, a real search on digits writes every
file, a failing trial is recorded and the search goes on, the budget stops a trial, kill -9 then
--resume runs no trial twice, and two workers share a chief oracle over gRPC on loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kerascnn.cli import main
from kerascnn.config import load_config, parse_duration
from kerascnn.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
# Tiny trials: 300 digits, one conv block of 8 filters, one epoch.
PINNED = """
[data]
dataset = "digits"
max_train_examples = 300
[model.options]
filters = [8]
dense = 32
[train]
epochs = 1
optimizer = "sgd"
verbose = 0
early_stopping_patience = 0
"""


def write_config(tmp_path, tune_section: str, pinned: str = PINNED) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(pinned + tune_section, encoding="utf-8")
    return path


def tune_config(space: dict, **values):
    return load_config(values={"tune.space": space, **values})


@pytest.mark.parametrize("space, message", [
    ({"train.learning_rat": {"log_uniform": [1e-4, 1e-2]}}, "did you mean 'train.learning_rate'"),
    ({"train.learning_rate": {"log_uniform": [1e-2, 1e-4]}}, "is empty"),
    ({"augment.rotation_range": {"int": [20, 0]}}, "is empty"),
    ({"train.learning_rate": {"log_unifrom": [1e-4, 1e-2]}}, "did you mean 'log_uniform'"),
    ({"train.learning_rate": {"log_uniform": [0, 1e-2]}}, "needs low > 0"),
    ({"model.options.filters": {"choice": []}}, "needs a list"),
    ({"run.name": {"choice": ["a", "b"]}}, "--output/--name"),
])
def test_space_errors_are_one_line(space, message):
    with pytest.raises(ConfigError, match=message) as info:
        tune_config(space)
    assert "\n" not in str(info.value)


def test_space_parses_every_kind_and_any_key():
    config = tune_config({"train.learning_rate": {"log_uniform": [1e-4, 1e-2]},
                          "augment.rotation_range": {"int": [0, 20, 5]},
                          "train.label_smoothing": {"uniform": [0.0, 0.2]},
                          "model.options.filters": {"choice": [[16, 32], [32, 64]]}})
    kinds = {d.key: (d.kind, d.low, d.high, d.step, d.values) for d in config.tune.dimensions}
    assert kinds["augment.rotation_range"] == ("int", 0, 20, 5, ())
    assert kinds["model.options.filters"][4] == ([16, 32], [32, 64])
    assert config.tune.objective_direction == "max"
    assert load_config(values={"tune.objective": "val_loss"}).tune.objective_direction == "min"
    assert parse_duration("30m") == 1800 and parse_duration("2h") == 7200 and parse_duration("90") == 90


def test_values_the_config_refuses_fail_before_any_trial(tmp_path):
    from kerascnn.tune import tune

    config = tune_config({"augment.rotation_range": {"int": [0, 200]}}, **{"run.output": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"value 200 is not valid: augment.rotation_range must be in \[0, 180\]"):
        tune(config)
    assert not any(tmp_path.iterdir())  # nothing written


def test_search_writes_every_file_records_a_failing_trial_and_runs_the_best(tmp_path, capsys):
    # Two trials, both values of a two-way choice: SGD at 1e12 diverges to NaN, 0.05 trains.
    config = write_config(tmp_path, """
[export]
formats = ["keras", "tflite"]
tflite = ["float32"]
[evaluate]
tsne_sample = 0
[tune.space]
"train.learning_rate" = { choice = [0.05, 1e12] }
""")
    assert main(["tune", "--config", str(config), "--max-trials", "2", "--output", str(tmp_path / "out"),
                 "--name", "search"]) == 0
    tune_dir = tmp_path / "out" / "search"
    trials = pd.read_csv(tune_dir / "trials.csv")
    assert list(trials.columns[:4]) == ["trial_id", "status", "objective", "train.learning_rate"]
    assert sorted(trials["status"]) == ["completed", "failed"]
    failed = trials[trials["status"] == "failed"].iloc[0]
    assert failed["train.learning_rate"] == 1e12 and "NaN" in failed["message"]
    completed = trials[trials["status"] == "completed"].iloc[0]
    for trial_id in trials["trial_id"]:
        for name in ("config.toml", "result.json", "trial.json"):
            assert (tune_dir / f"trial_{trial_id}" / name).is_file()
    history = pd.read_csv(tune_dir / f"trial_{completed['trial_id']}" / "history.csv")
    assert completed["objective"] == pytest.approx(history["val_accuracy"].max())
    for figure in ("objective.png", "parameters.png"):
        assert (tune_dir / figure).stat().st_size > 1000
    best = load_config(tune_dir / "best.toml")  # what `kerascnn train --config best.toml` reads
    assert best.train.learning_rate == 0.05 and best.model.options == {"filters": [8], "dense": 32}
    assert best.tune.space == {} and best.run.name is None
    manifest = json.loads((tune_dir / "final" / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == {"model.keras", "model.tflite"}
    assert all(entry["parity"]["passed"] for entry in manifest["artifacts"].values())
    assert (tune_dir / "final" / "report.html").is_file()
    out = capsys.readouterr().out
    assert "trials: 2 (" in out and "final run:" in out


def test_budget_stops_the_running_trial_and_starts_no_other(tmp_path):
    """In a trial process of its own (tune.trial_process), so that path is checked too."""
    from kerascnn.tune import tune

    config = load_config(write_config(tmp_path, '[tune.space]\n"train.learning_rate" = { uniform = [0.01, 0.1] }\n'),
                         values={"train.epochs": 100000, "train.early_stopping_patience": 0,  # only the budget stops it
                                 "tune.budget": "20s", "tune.final": False, "tune.trial_process": True,
                                 "run.output": str(tmp_path), "run.name": "budget"})
    start = time.perf_counter()
    result = tune(config)
    assert time.perf_counter() - start < 120
    assert list(result.trials["status"]) == ["stopped"]
    assert result.trials["epochs"][0] >= 1
    assert "wall-time budget" in result.trials["message"][0]
    assert result.best_config is None and not (tmp_path / "budget" / "best.toml").exists()


def _cli(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "kerascnn", *args], cwd=ROOT, env={
        **os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_kill_9_then_resume_keeps_finished_trials_and_runs_none_twice(tmp_path):
    config = write_config(tmp_path, """[tune]
final = false
[tune.space]
"train.learning_rate" = { log_uniform = [0.01, 0.1] }
"model.options.dense" = { int = [16, 64, 16] }
""")
    tune_dir = tmp_path / "out" / "killed"
    process = _cli("tune", "--config", str(config), "--max-trials", "3", "--output", str(tmp_path / "out"),
                   "--name", "killed")
    deadline = time.time() + 240
    while not (tune_dir / "trial_1" / "config.toml").is_file():  # trial 0 finished, trial 1 running
        assert process.poll() is None and time.time() < deadline, process.stdout.read() if process.poll() else ""
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = (tune_dir / "trial_0" / "result.json").read_text()
    assert main(["tune", "--resume", str(tune_dir)]) == 0
    trials = pd.read_csv(tune_dir / "trials.csv", dtype={"trial_id": str})
    assert list(trials["trial_id"]) == ["0", "1", "2"] and set(trials["status"]) == {"completed"}
    assert (tune_dir / "trial_0" / "result.json").read_text() == finished  # trial 0 was not run again
    values = trials[["train.learning_rate", "model.options.dense"]].itertuples(index=False)
    assert len(set(values)) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_share_a_chief_oracle_over_grpc(tmp_path):
    config = write_config(tmp_path, """[tune]
final = false
[tune.space]
"train.learning_rate" = { uniform = [0.01, 0.1] }
""")
    port = str(_free_port())
    common = ["tune", "--config", str(config), "--max-trials", "3", "--output", str(tmp_path / "out"),
              "--name", "shared", "--oracle-port", port]
    chief = _cli(*common, "--chief")
    workers = [_cli(*common, "--worker", name) for name in ("a", "b")]
    try:
        for process in workers + [chief]:
            output, _ = process.communicate(timeout=300)
            assert process.returncode == 0, output
    finally:
        for process in workers + [chief]:
            process.kill()
    tune_dir = tmp_path / "out" / "shared"
    trials = pd.read_csv(tune_dir / "trials.csv")
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}
    assert set(trials["tuner_id"]) == {"tuner-a", "tuner-b"}  # both workers ran trials
    assert (tune_dir / "best.toml").is_file()
