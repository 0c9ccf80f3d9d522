"""`kerascnn tune`: a hyperparameter search over any config key, with KerasTuner as the engine.

A trial is one training run: the pinned config with the trial's sampled `[tune.space]` values,
trained by `kerascnn.training.train` (or fine_tune) and scored by `tune.objective` at its best epoch.
KerasTuner's oracles (random, Bayesian optimisation, Hyperband) choose the values, keep the trials'
state on disk and, in distributed mode, serve trials to workers over gRPC. kerascnn adds what a
user needs around it:

    <tune dir>/tune.toml            the config the search was started with (for --resume)
    <tune dir>/oracle.json, tuner0.json, trial_<id>/trial.json   KerasTuner's own state
    <tune dir>/trial_<id>/config.toml, history.csv, result.json  each trial's config, history, score
    <tune dir>/trials.csv           one row per finished trial: id, status, objective, searched keys
    <tune dir>/objective.png        objective per trial and the best so far
    <tune dir>/parameters.png       each searched key against the objective
    <tune dir>/best.toml            the best trial's config: `kerascnn train --config best.toml`
    <tune dir>/final/               a full run of best.toml (report, artifacts with parity)

Robustness: the wall-time budget stops the running trial (status "stopped") and starts no new one;
a trial whose training fails (NaN loss, out of memory, options a builder rejects) is recorded as
"failed" and the search goes on (until `tune.max_failures` fail in a row); after `kill -9`,
`tune(resume=tune_dir)` reloads KerasTuner's state: finished trials are kept and never rerun, the
trial that was running starts again. Trials run in this process; the Keras session is cleared and
garbage collected after each one, so memory stays flat (trials.csv records the process's memory).

Example:
    result = tune(load_config("run.toml")); print(result.trials, result.best_config.train.learning_rate)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import pandas as pd
import tensorflow as tf
import tomli_w
from keras_tuner.src import config as keras_tuner_config
from keras_tuner.src.distribute import utils as distribute_utils

from kerascnn.config import (RunConfig, SearchDimension, TuneConfig, config_from_dict, merge, read_config_file)
from kerascnn.data.augment import make_augment
from kerascnn.data.datasets import ImageData, load_data
from kerascnn.errors import ConfigError, KerasCNNError, first_line
from kerascnn.lr_find import resolve_learning_rate
from kerascnn.memory import memory_mib, return_freed_memory
from kerascnn.plots import new_figure
from kerascnn.rundir import (CONFIG_FILE, MANIFEST_FILE, TRAINED_MODEL, write_atomically, write_json_atomically,
                             write_text_atomically)
from kerascnn.runner import RunResult, check_config, fit_function, make_model, run

TUNE_CONFIG = "tune.toml"
TRIALS_CSV, BEST_TOML = "trials.csv", "best.toml"
OBJECTIVE_PNG, PARAMETERS_PNG = "objective.png", "parameters.png"
FINAL_DIR = "final"
SEARCH_STATE = "search.json"  # wall time the search has used, for the budget after a resume
TRIAL_RESULT = "result.json"
CHIEF_ID = "chief"
_ORACLES = {"random": kt.oracles.RandomSearchOracle, "bayesian": kt.oracles.BayesianOptimizationOracle,
            "hyperband": kt.oracles.HyperbandOracle}


@dataclasses.dataclass
class TuneResult:
    """What a search produced: its folder, the trials table, the best config and the final run."""

    tune_dir: Path
    trials: pd.DataFrame
    best_config: RunConfig | None
    final: RunResult | None = None
    role: str = "local"  # local | chief | worker


def tune_dir_for(config: RunConfig) -> Path:
    """`run.output/run.name`, the name defaulting to `tune-<dataset>-<time>`."""
    dataset = Path(config.data.dataset).name.replace(":", "-")
    name = config.run.name or f"tune-{dataset}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(config.run.output) / name


def trial_config(config: RunConfig, values: dict[str, Any]) -> RunConfig:
    """The pinned config with `values` ({"train.learning_rate": 0.01}) set, without the [tune] section
    and run name: what a trial trains and what best.toml holds."""
    settings = config.to_dict()
    settings.pop("tune", None)
    settings.get("run", {}).pop("name", None)
    for key, value in values.items():
        merge(settings, key.split("."), value)
    return config_from_dict(settings)


def check_space(config: RunConfig) -> None:
    """Build a trial config for both ends of every range and every choice, so a value the config
    refuses (e.g. augment.rotation_range above 180) is a one-line error before the first trial."""
    tune_config = config.tune
    if not tune_config.space:
        raise ConfigError("[tune.space] is empty: add the keys to search, e.g. "
                          "\"train.learning_rate\" = { log_uniform = [1e-4, 1e-2] }")
    for dimension in tune_config.dimensions:
        for value in dimension.bounds():
            try:
                check_config(trial_config(config, {dimension.key: value}))
            except ConfigError as exc:
                raise ConfigError(f"tune.space.{dimension.key!r}: value {value!r} is not valid: {exc}") from None
    if tune_config.tuner == "hyperband" and any(d.key == "train.epochs" for d in tune_config.dimensions):
        raise ConfigError("tune.space.'train.epochs': hyperband chooses each trial's epochs itself "
                          "(up to train.epochs); drop it from the space or use another tuner")


def _encoded(dimension: SearchDimension) -> bool:
    """KerasTuner's Choice takes values of one scalar type; other choices travel as JSON strings."""
    kinds = {type(v) for v in dimension.values}
    return dimension.kind == "choice" and not (len(kinds) == 1 and kinds <= {int, float, str, bool})


def hyperparameters(tune_config: TuneConfig) -> kt.HyperParameters:
    """The KerasTuner search space of `[tune.space]`, one hyperparameter per dotted config key."""
    hp = kt.HyperParameters()
    for d in tune_config.dimensions:
        if d.kind in ("log_uniform", "uniform"):
            hp.Float(d.key, d.low, d.high, sampling="log" if d.kind == "log_uniform" else "linear")
        elif d.kind == "int":
            hp.Int(d.key, d.low, d.high, step=d.step)
        else:
            hp.Choice(d.key, [json.dumps(v) for v in d.values] if _encoded(d) else list(d.values))
    return hp


def sampled_values(tune_config: TuneConfig, values: dict) -> dict[str, Any]:
    """A trial's values of the searched keys, choices decoded (KerasTuner's own `tuner/*` keys left out)."""
    return {d.key: json.loads(values[d.key]) if _encoded(d) else values[d.key]
            for d in tune_config.dimensions if d.key in values}


class _BudgetMixin:
    """For KerasTuner oracles: stop handing out trials once the wall-time deadline has passed."""

    deadline: float | None = None  # time.time(), set by `tune`

    def populate_space(self, trial_id):
        if self.deadline is not None and time.time() >= self.deadline:
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        return super().populate_space(trial_id)


def make_oracle(config: RunConfig) -> kt.Oracle:
    tune_config = config.tune
    objective = kt.Objective(tune_config.objective, tune_config.objective_direction)
    common = dict(objective=objective, hyperparameters=hyperparameters(tune_config), allow_new_entries=False,
                  seed=config.run.seed, max_consecutive_failed_trials=tune_config.max_failures)
    base = _ORACLES[tune_config.tuner]
    oracle_class = type(f"Budget{base.__name__}", (_BudgetMixin, base), {})
    if tune_config.tuner == "hyperband":
        oracle = oracle_class(max_epochs=config.train.epochs, factor=tune_config.hyperband_factor, **common)
        oracle.max_trials = tune_config.max_trials  # the base oracle stops at it; Hyperband takes no argument
        return oracle
    return oracle_class(max_trials=tune_config.max_trials, **common)


class _Deadline(keras.callbacks.Callback):
    """Stop training after the batch during which the wall-time budget ran out."""

    def __init__(self, deadline: float | None):
        super().__init__()
        self.deadline, self.hit = deadline, False

    def on_train_batch_end(self, batch, logs=None):
        if self.deadline is not None and time.time() >= self.deadline:
            self.hit = self.model.stop_training = True


class _Search:
    """Runs the trials KerasTuner hands out: builds each trial's config, trains it, records it."""

    def __init__(self, config: RunConfig, tune_dir: Path, deadline: float | None, seconds_used: float = 0.0):
        self.config, self.tune_dir, self.deadline = config, tune_dir, deadline
        self.seconds_used, self.started = seconds_used, time.time()
        self._data: tuple[Any, ImageData] | None = None  # the last DataConfig's data, reused by later trials

    def record_time(self) -> None:
        """Write the wall time used so far (search.json), so a resumed search gets what is left of the budget."""
        write_json_atomically(self.tune_dir / SEARCH_STATE,
                              {"seconds_used": round(self.seconds_used + time.time() - self.started, 3)})

    def data_for(self, config: RunConfig) -> ImageData:
        if self._data is None or self._data[0] != (config.data, config.run.seed):
            self._data = None  # release the old splits before loading others
            self._data = ((config.data, config.run.seed), load_data(config.data, seed=config.run.seed))
        return self._data[1]

    def run_trial(self, trial, trial_dir: Path) -> dict:
        """Train one trial (in this process, or in a fresh one with `tune.trial_process`); return its
        objective for KerasTuner, or raise FailedTrialError with the reason."""
        for name in (CONFIG_FILE, "history.csv", TRIAL_RESULT, "checkpoints"):  # a rerun after a kill starts clean
            path = trial_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        values = dict(trial.hyperparameters.values)
        if self.config.tune.trial_process:
            record = self._train_in_process(trial.trial_id, values, trial_dir)
        else:
            record = self.train_trial(trial.trial_id, values, trial_dir)
        print(f"trial {trial.trial_id}: {record['status']}"
              + (f", {self.config.tune.objective} {record['objective']:.4f}" if record["objective"] is not None
                 else f" ({record.get('message', '')})") + f" in {record['seconds']:.1f} s")
        if record["status"] != "completed":
            raise kt.errors.FailedTrialError(record["message"])
        return {self.config.tune.objective: record["objective"]}

    def _train_in_process(self, trial_id: str, values: dict, trial_dir: Path) -> dict:
        """`train_trial` in a fresh Python process: nothing of the trial stays in this one, and a trial
        the system kills (e.g. for memory) is a failed trial, not the end of the search."""
        start = time.perf_counter()
        process = multiprocessing.get_context("spawn").Process(
            target=_train_trial_process, args=(self.config.to_dict(), str(self.tune_dir), self.deadline, trial_id,
                                               values, str(trial_dir)))
        process.start()
        process.join()
        path = trial_dir / TRIAL_RESULT
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            record["trial_peak_rss_mib"] = record["peak_rss_mib"]
        else:
            record = {"trial_id": trial_id, "status": "failed", "objective": None, "epochs": 0,
                      "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0"),
                      "message": f"the trial's process ended with exit code {process.exitcode} before recording "
                                 f"a result (a negative code is the signal that killed it, e.g. -9 for memory)"}
        record["seconds"] = round(time.perf_counter() - start, 3)  # the process's start-up included
        record["rss_mib"], record["peak_rss_mib"] = memory_mib()  # this (the tune) process's
        write_json_atomically(path, record)
        return record

    def train_trial(self, trial_id: str, values: dict, trial_dir: Path) -> dict:
        """Train the pinned config with a trial's `values`; write and return its record (status,
        objective at the best epoch, epochs, seconds, memory, message). Never raises for a failed trial."""
        config = trial_config(self.config, sampled_values(self.config.tune, values))
        if "tuner/epochs" in values:  # Hyperband: this round's epochs, continuing an earlier trial's weights
            config = config.replace("train", epochs=max(1, values["tuner/epochs"] - values["tuner/initial_epoch"]))
        write_text_atomically(trial_dir / CONFIG_FILE, config.to_toml())
        record = {"trial_id": trial_id, "status": "failed", "objective": None, "epochs": 0,
                  "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0")}
        start = time.perf_counter()
        deadline = _Deadline(self.deadline)
        model = None
        try:
            data = self.data_for(config)
            keras.utils.set_random_seed(config.run.seed)
            model = make_model(config, data)
            if values.get("tuner/trial_id"):
                model.load_weights(self.tune_dir / f"trial_{values['tuner/trial_id']}" / TRAINED_MODEL)
            augment = make_augment(config.augment, seed=config.run.seed, data=data)
            config, finder = resolve_learning_rate(config, model, data, augment)
            if finder is not None:
                record["learning_rate_found"] = finder.suggestion
            train_config = dataclasses.replace(config.train, tensorboard=False, backup_every=0, verbose=0)
            result = fit_function(config)(model, data, train_config, trial_dir, seed=config.run.seed,
                                          cache=config.data.cache, shuffle_buffer=config.data.shuffle_buffer,
                                          augment=augment, sampling=config.data.sampling, extra_callbacks=[deadline])
            record["epochs"] = result.epochs_run
            column = result.history[self.config.tune.objective]
            best = column.max() if self.config.tune.objective_direction == "max" else column.min()
            if deadline.hit:
                record.update(status="stopped", message=f"stopped by the wall-time budget after "
                                                        f"{result.epochs_run} epoch(s)")
            elif not math.isfinite(best):
                record["message"] = f"objective {self.config.tune.objective} is not finite ({best})"
            else:
                record.update(status="completed", objective=float(best))
        except tf.errors.ResourceExhaustedError as exc:
            record["message"] = f"out of memory: {first_line(exc)}"
        except Exception as exc:  # noqa: BLE001  (any failure of one trial is recorded; the search goes on)
            record["message"] = first_line(exc) if isinstance(exc, KerasCNNError) else \
                f"{type(exc).__name__}: {first_line(exc)}"
        finally:
            del model
            keras.backend.clear_session()  # free the trial's graph and variables before the next trial
            return_freed_memory()
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["rss_mib"], record["peak_rss_mib"] = memory_mib()
        write_json_atomically(trial_dir / TRIAL_RESULT, record)
        return record


def _train_trial_process(settings: dict, tune_dir: str, deadline: float | None, trial_id: str, values: dict,
                         trial_dir: str) -> None:
    """The body of a trial's own process (`tune.trial_process`)."""
    _Search(config_from_dict(settings), Path(tune_dir), deadline).train_trial(trial_id, values, Path(trial_dir))


class _Tuner(kt.engine.base_tuner.BaseTuner):
    """KerasTuner's search loop (trial creation, saving, reloading, distribution) around `_Search`."""

    def __init__(self, oracle, search: _Search, **kwargs):
        self.search_runner = search
        keras_tuner_config.DEBUG = False  # no traceback per failed trial: trials.csv has the reason
        super().__init__(oracle, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        return self.search_runner.run_trial(trial, Path(self.get_trial_dir(trial.trial_id)))

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if not self._is_worker():
            self.search_runner.record_time()
            write_outputs(self.search_runner.config, self.search_runner.tune_dir, self.oracle)


def trials_table(config: RunConfig, tune_dir: Path, oracle) -> pd.DataFrame:
    """One row per finished trial, in trial order: id, status, objective, searched keys, time, memory."""
    keys = [d.key for d in config.tune.dimensions]
    rows = []
    for trial_id, trial in sorted(oracle.trials.items()):
        if trial.status not in (kt.engine.trial.TrialStatus.COMPLETED, kt.engine.trial.TrialStatus.FAILED):
            continue
        path = tune_dir / f"trial_{trial_id}" / TRIAL_RESULT
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        values = sampled_values(config.tune, trial.hyperparameters.values)
        completed = trial.status == kt.engine.trial.TrialStatus.COMPLETED
        rows.append({"trial_id": trial_id, "status": record.get("status", "completed" if completed else "failed"),
                     "objective": trial.score if completed else None,
                     **{key: json.dumps(v) if isinstance(v, (list, dict)) else v for key, v in values.items()},
                     **{k: record.get(k) for k in ("epochs", "seconds", "tuner_id", "rss_mib", "peak_rss_mib")},
                     "message": record.get("message", "" if completed else first_line(Exception(trial.message or "")))})
    return pd.DataFrame(rows, columns=["trial_id", "status", "objective", *keys, "epochs", "seconds", "tuner_id",
                                       "rss_mib", "peak_rss_mib", "message"])


def best_trial(config: RunConfig, trials: pd.DataFrame) -> pd.Series | None:
    completed = trials[trials["status"] == "completed"]
    if completed.empty:
        return None
    index = completed["objective"].idxmax() if config.tune.objective_direction == "max" else \
        completed["objective"].idxmin()
    return completed.loc[index]


def objective_figure(config: RunConfig, trials: pd.DataFrame):
    """The objective of each finished trial and the best so far; failed and stopped trials marked."""
    figure = new_figure(7, 4)
    ax = figure.add_subplot()
    position = np.arange(len(trials))
    done = trials["status"] == "completed"
    scores = trials["objective"].astype(float)
    ax.plot(position[done], scores[done], "o", label="trial")
    best = scores.where(done).cummax() if config.tune.objective_direction == "max" else scores.where(done).cummin()
    ax.step(position, best, where="post", label="best so far")
    for status, marker in (("failed", "x"), ("stopped", "s")):
        hit = (trials["status"] == status).to_numpy()
        if hit.any():
            low = np.nanmin(scores[done]) if done.any() else 0.0
            ax.plot(position[hit], np.full(hit.sum(), low), marker, color="tab:red", label=status)
    ax.set_xticks(position, trials["trial_id"], rotation=90 if len(trials) > 20 else 0)
    ax.set_xlabel("trial")
    ax.set_ylabel(config.tune.objective)
    ax.legend()
    return figure


def parameters_figure(config: RunConfig, trials: pd.DataFrame):
    """One panel per searched key: its value against the objective (completed trials)."""
    dimensions = config.tune.dimensions
    columns = min(3, len(dimensions))
    rows = math.ceil(len(dimensions) / columns)
    figure = new_figure(4 * columns, 3.2 * rows)
    done = trials[trials["status"] == "completed"]
    for i, d in enumerate(dimensions):
        ax = figure.add_subplot(rows, columns, i + 1)
        if d.kind == "choice":
            labels = [json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in d.values]
            shown = [json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in done[d.key]] \
                if not done.empty else []
            ax.plot([labels.index(s) if s in labels else len(labels) for s in shown], done["objective"], "o")
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0)
        else:
            ax.plot(done[d.key].astype(float), done["objective"], "o")
            if d.kind == "log_uniform":
                ax.set_xscale("log")
        ax.set_xlabel(d.key)
        ax.set_ylabel(config.tune.objective)
    return figure


def write_outputs(config: RunConfig, tune_dir: Path, oracle) -> tuple[pd.DataFrame, RunConfig | None]:
    """trials.csv, the figures and best.toml, from the trials finished so far (rewritten after each)."""
    trials = trials_table(config, tune_dir, oracle)
    write_atomically(tune_dir / TRIALS_CSV, lambda path: trials.to_csv(path, index=False))
    if trials.empty:
        return trials, None
    write_atomically(tune_dir / OBJECTIVE_PNG, lambda path: objective_figure(config, trials).savefig(path, dpi=100))
    write_atomically(tune_dir / PARAMETERS_PNG, lambda path: parameters_figure(config, trials).savefig(path, dpi=100))
    best = best_trial(config, trials)
    if best is None:
        return trials, None
    trial = oracle.trials[best["trial_id"]]
    best_config = trial_config(config, sampled_values(config.tune, trial.hyperparameters.values))
    header = (f"# Best of {len(trials)} trials of `kerascnn tune` in {tune_dir}: trial {best['trial_id']}, "
              f"{config.tune.objective} {best['objective']:.4f}.\n# Rerun it with: kerascnn train --config "
              f"{tune_dir / BEST_TOML}\n")
    settings = best_config.to_dict()
    settings.pop("tune")  # best.toml is a plain run config
    write_text_atomically(tune_dir / BEST_TOML, header + tomli_w.dumps(settings))
    return trials, best_config


def _seconds_used(tune_dir: Path) -> float:
    path = tune_dir / SEARCH_STATE
    return float(json.loads(path.read_text(encoding="utf-8"))["seconds_used"]) if path.is_file() else 0.0


def set_distributed_role(role: str, oracle_ip: str = "127.0.0.1", oracle_port: int = 8000,
                         worker_id: str | None = None) -> None:
    """Set KerasTuner's distribution variables for this process: the chief serves the oracle over gRPC
    at `oracle_ip:oracle_port`, each worker (a distinct `worker_id`) asks it for trials."""
    if role not in ("chief", "worker"):
        raise ConfigError(f"distributed role must be chief or worker, got {role!r}")
    if not 0 < oracle_port < 65536:
        raise ConfigError(f"--oracle-port must be a TCP port (1-65535), got {oracle_port}")
    tuner_id = CHIEF_ID if role == "chief" else f"tuner-{worker_id or os.getpid()}"
    if role == "worker" and CHIEF_ID in tuner_id:
        raise ConfigError(f"worker id {worker_id!r} must not contain {CHIEF_ID!r} (KerasTuner takes it for the chief)")
    os.environ.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=oracle_ip,
                      KERASTUNER_ORACLE_PORT=str(oracle_port))


def distributed_role() -> str:
    """local, or chief / worker as KerasTuner's KERASTUNER_* environment variables say."""
    try:
        if not distribute_utils.has_chief_oracle():
            return "local"
    except RuntimeError as exc:  # KERASTUNER_ORACLE_IP without its port or tuner id
        raise ConfigError(f"{first_line(exc)}") from None
    return "chief" if distribute_utils.is_chief_oracle() else "worker"


def tune(config: RunConfig | None = None, resume: str | Path | None = None) -> TuneResult:
    """Search `config.tune.space`, write the tune directory, then train the best config in full.

    Args:
        config: the config to search, with its `[tune]` section; `run.output/run.name` is the tune
            directory. None with `resume`.
        resume: a tune directory whose search was interrupted or killed: continue it with its stored
            tune.toml; finished trials are kept and not run again.

    In distributed mode (KERASTUNER_* variables, see `set_distributed_role`) the chief serves trials
    and writes the outputs and the final run; workers only run trials.

    Example:
        result = tune(load_config("run.toml", values={"tune.max_trials": 5}))
    """
    role = distributed_role()
    if resume is not None:
        if config is not None:
            raise ConfigError("a resumed search uses its stored tune.toml; pass either a config or resume, not both")
        tune_dir = Path(resume)
        if not (tune_dir / TUNE_CONFIG).is_file():
            raise ConfigError(f"cannot resume {str(tune_dir)!r}: it is not a tune directory (no {TUNE_CONFIG}); "
                              f"pass the folder `kerascnn tune` wrote (--output/--name)")
        config = config_from_dict(read_config_file(tune_dir / TUNE_CONFIG))
    elif config is None:
        raise ConfigError("tune needs a config with a [tune.space] table (or resume=<tune dir>)")
    else:
        tune_dir = tune_dir_for(config)
    check_space(config)
    if resume is None and role != "worker":
        if tune_dir.exists() and any(tune_dir.iterdir()):
            if not config.run.overwrite:
                raise ConfigError(f"tune directory {str(tune_dir)!r} already exists; continue it with --resume "
                                  f"{tune_dir}, or choose another --name, or pass --overwrite")
            shutil.rmtree(tune_dir)
        tune_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(tune_dir / TUNE_CONFIG, config.to_toml())
    budget = config.tune.budget_seconds
    used = _seconds_used(tune_dir) if role != "worker" else 0.0
    deadline = None if budget is None else time.time() + max(0.0, budget - used)
    oracle = make_oracle(config)
    oracle.deadline = deadline
    search = _Search(config, tune_dir, deadline, used)
    tuner = _Tuner(oracle, search, directory=str(tune_dir.parent), project_name=tune_dir.name, overwrite=False)
    try:
        tuner.search(verbose=0)
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        print(f"search stopped: {config.tune.max_failures} trials failed in a row "
              f"(tune.max_failures); the last: {first_line(Exception(str(exc).splitlines()[-1]))}")
    finally:
        if role != "worker":
            search.record_time()
    if role == "worker":
        return TuneResult(tune_dir, pd.DataFrame(), None, role=role)
    trials, best_config = write_outputs(config, tune_dir, tuner.oracle)
    final = None
    if best_config is not None and config.tune.final:
        final_dir = tune_dir / FINAL_DIR
        if (final_dir / MANIFEST_FILE).is_file():
            print(f"final run already finished: {final_dir}")
        else:
            final = run(best_config.replace("run", output=str(tune_dir), name=FINAL_DIR, overwrite=True))
    return TuneResult(tune_dir, trials, best_config, final, role=role)

