"""`run(config)`: the whole path from data to verified artifacts. The only module that knows every stage.

Beside it, the other run-level operations: `check_config` (the checks that need model knowledge,
made before any data is read), `export_run` (write and verify a finished run's artifacts again) and
`evaluate_run` (the report of any artifact of a run).

Order matters for the promise "bad input writes nothing": the config is validated when it is
built, then data are loaded and the model built, the output folder checked for write access and
free space, and only then is the run directory created. A run killed or interrupted before its
manifest is written continues with `run(resume=run_dir)` (see kerascnn.resume). Under a
multi-worker strategy only the chief writes the run directory, evaluates and exports; the other
workers train into a temporary folder that is removed when they finish.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import platform
import shutil
import tempfile
from functools import partial
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from kerascnn import __version__
from kerascnn.config import LR_FIND, RunConfig, config_from_dict, merge, parse_override
from kerascnn.data.augment import make_augment
from kerascnn.data.datasets import ImageData, load_data
from kerascnn.data.duplicates import leaked_test_images
from kerascnn.data.sampling import counts_per_class
from kerascnn.distribute import check_float32_output, is_chief, make_strategy, precision, strategy_name
from kerascnn.errors import ConfigError, ModelLoadError, PartialExport, first_line
from kerascnn.evaluation import (classification_metrics, evaluate, positive_class_index, predict_function,
                                 predict_split, validation_thresholds)
from kerascnn.export import export, unsupported_artifacts
from kerascnn.feature_cache import check_setting as check_cache_setting
from kerascnn.flops import machine_gflops_once, training_record
from kerascnn.lr_find import CSV_FILE as LR_FIND_CSV
from kerascnn.lr_find import PLOT_FILE as LR_FIND_PLOT
from kerascnn.lr_find import LRFindResult, lr_find, resolve_learning_rate
from kerascnn.models.batchnorm import reestimate_batch_norm, stale_batch_norm, trained_batch_norms
from kerascnn.models.heads import sigmoid_head
from kerascnn.models.registry import build_model, check_builder_options
from kerascnn.models.transfer import build_from_config, check_backbone_options, check_transfer
from kerascnn.precision import choose_precision
from kerascnn.predict import load
from kerascnn.report import Report, check_compatible, write_report
from kerascnn.resume import RunInterrupted, check_resumable
from kerascnn.rundir import (CONFIG_FILE, HISTORY_FILE, KERAS_FILE, SKIPPED_FILES_CSV, TRAINED_MODEL, read_manifest,
                             read_run_config, remove_staging, require_run_dir, write_atomically,
                             write_manifest, write_text_atomically)
from kerascnn.quiet import warn_once
from kerascnn.safety import load_keras_model
from kerascnn.sanity import last_value, sanity_warnings
from kerascnn.training import TrainResult, fine_tune, fine_tune_configs, train

# Disk a run needs, in bytes a model parameter: float32 weights in about 12 copies (artifacts, best
# checkpoint and backup with optimizer slots, trained model), plus a margin for logs and history.
BYTES_PER_PARAMETER = 4 * 12
MIN_FREE_BYTES = 16 * 2 ** 20
log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    """What `run` produced: where, the model, its test metrics, the manifest and the evaluation report.

    On a non-chief worker of a multi-worker run, `chief` is False, `run_dir` is None and the
    metrics and manifest are empty: the chief writes them.
    """

    run_dir: Path | None
    model: keras.Model
    data: ImageData
    test_metrics: dict
    manifest: dict
    report: Report | None = None
    chief: bool = True

    def __repr__(self) -> str:  # the dataclass default prints the model, the data and the whole manifest
        accuracy = self.test_metrics.get("accuracy")
        return (f"RunResult(run_dir={str(self.run_dir) if self.run_dir else None!r}, model={self.model.name!r}, "
                f"data={self.data!r}, test_accuracy={accuracy if accuracy is None else round(accuracy, 4)}, "
                f"artifacts={len(self.manifest.get('artifacts', {}))}, warnings={len(self.manifest.get('warnings', []))})")


def run_name(config: RunConfig) -> str:
    if config.run.name:
        return config.run.name
    dataset = Path(config.data.dataset).name if "/" in config.data.dataset else config.data.dataset
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{dataset.replace(':', '-')}-{config.model.backbone or config.model.name}-{stamp}"


def prepare_run_dir(config: RunConfig) -> Path:
    """The run directory path, refusing to clobber an existing run and checking the output is writable."""
    output = Path(config.run.output)
    run_dir = output / run_name(config)
    if run_dir.exists() and not config.run.overwrite:
        raise ConfigError(f"run directory {str(run_dir)!r} already exists; choose another --name or pass --overwrite")
    existing = next((p for p in [output, *output.parents] if p.exists()), Path("."))
    if not existing.is_dir() or not _writable(existing):
        raise ConfigError(f"output folder {str(output)!r} is not writable; pass --output with a writable folder")
    return run_dir


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder`. os.access alone misses virtual and read-only filesystems
    and answers yes to root everywhere, so a temporary file is created (and removed at once) too."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_free_space(run_dir: Path, model: keras.Model) -> None:
    """Raise ConfigError if the disk under `run_dir` cannot hold the run's checkpoints and artifacts."""
    folder = next(p for p in [run_dir, *run_dir.parents] if p.exists())
    needed = model.count_params() * BYTES_PER_PARAMETER + MIN_FREE_BYTES
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConfigError(f"output folder {str(folder)!r} has {free / 2 ** 20:.0f} MiB free but this run needs about "
                          f"{needed / 2 ** 20:.0f} MiB; free some space or pass --output on another disk")


def check_config(config: RunConfig) -> RunConfig:
    """Make the checks of `config` that need model knowledge (builder and backbone options, fine_tune's two
    phases); raise ConfigError naming the key and the fix. `config.py` cannot make them without importing
    TensorFlow, so every run-level operation calls this before reading any data."""
    if config.model.backbone:
        check_backbone_options(config.model.backbone, config.model.options)
        check_transfer(config.model.backbone, config.model.transfer, config.model.weights)
    else:
        check_builder_options(config.model.name, config.model.options)
    check_cache_setting(config)
    if config.model.transfer == "fine_tune":  # its two phases must both be valid TrainConfigs
        fine_tune_configs(config.train if config.train.learning_rate != LR_FIND else
                          dataclasses.replace(config.train, learning_rate=1e-3))  # "find" is a number by then
    return config


def run_manifest(run_dir: Path, config: RunConfig, data: ImageData, test_metrics: dict, train_seconds: float,
                 epochs_run: int, artifacts: dict, distribution: dict | None = None, resumed: bool = False,
                 thresholds: list[float] | None = None, warnings: list[str] = (), dropped: dict | None = None,
                 failed: dict | None = None, flops: dict | None = None) -> dict:
    """Write the run's manifest.json and return it. `thresholds`: a multi-label run's per-class decision
    thresholds; `warnings`: the data, sanity and BatchNormalization notes; `dropped`: artifacts the model
    cannot be stored as, with the reason; `failed`: artifacts whose export failed, with the reason (the
    run can then be resumed to export them again); `flops`: `kerascnn.flops.training_record`'s fields."""
    manifest = {
        "kerascnn_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_name": run_dir.name,
        "dataset": config.data.dataset,
        "model": config.model.backbone or config.model.name,
        **({"transfer": config.model.transfer or "feature_extraction"} if config.model.backbone else {}),
        "class_names": data.class_names,
        "input_shape": list(data.input_shape),
        "counts": data.counts,
        "counts_per_class": counts_per_class(data),
        "multi_label": data.multi_label,
        **({"thresholds": dict(zip(data.class_names, thresholds))} if thresholds is not None else {}),
        "epochs_run": epochs_run,
        "resumed": resumed,
        "train_seconds": round(train_seconds, 3),
        **(flops or {}),
        **(distribution or {}),
        "test_metrics": test_metrics,
        "warnings": list(warnings),
        "artifacts": artifacts,
        "dropped_artifacts": dropped or {},
        "failed_artifacts": failed or {},
    }
    if data.folder_scan is not None:
        manifest["scan"] = data.folder_scan.summary()
    write_manifest(run_dir, manifest)
    return manifest


def run(config: RunConfig | None = None, data: ImageData | None = None, resume: str | Path | None = None,
        unsafe: bool = False, export_overrides: list[str] = ()) -> RunResult:
    """Train, evaluate and export one run described by `config`, then write its report (unless
    `evaluate.report` is false).

    Args:
        config: a RunConfig (default RunConfig(): digits with the default `cnn`).
        data: an ImageData to use instead of loading `config.data.dataset` (e.g. from `from_arrays`).
        resume: the directory of a run that was killed or interrupted before it finished: continue it
            with its stored config.toml (then `config` must be None). Default None: a new run.
        unsafe: on resume, allow the run's checkpoints to run code they carry (default False).
        export_overrides: on resume, `export.key=value` changes to the stored config (e.g. after a failed
            export, `export.formats=["keras","saved_model"]`); written back to config.toml.

    Raises PartialExport (an ExportError) after writing the manifest when some artifacts failed; the
    others are kept and `run(resume=run_dir)` exports again without training.

    Example:
        result = run(load_config(preset="digits")); print(result.run_dir, result.test_metrics)
    """
    if resume is not None:
        if config is not None:
            raise ConfigError("a resumed run uses its stored config.toml; pass either a config or resume, not both")
        run_dir = Path(resume)
        check_resumable(run_dir)
        remove_staging(run_dir)  # what a kill left half-written: staging folders of export, temporary files
        config = read_run_config(run_dir)
        if export_overrides:
            config = _with_export_overrides(run_dir, config, export_overrides)
    else:
        if export_overrides:
            raise ConfigError("export overrides apply to a resumed run; set them in the config of a new run")
        config = config or RunConfig()
    check_config(config)
    # Next: MultiWorkerMirroredStrategy must set up collective ops before TensorFlow runs anything.
    strategy = make_strategy(config.train.strategy)
    chief = is_chief(strategy)
    if resume is None:
        run_dir = prepare_run_dir(config) if chief else None
    keras.utils.set_random_seed(config.run.seed)
    data = data or load_data(config.data, seed=config.run.seed)
    check_data_options(config, data)
    data_warnings = leak_warnings(data)
    inferred = data.folder_scan is not None and config.data.image_size is None
    if inferred:  # config.toml records the size the images were resized to
        config = config.replace("data", image_size=tuple(data.input_shape[:2]))
    if chief and config.train.verbose:
        print(describe_data(data, config.data.color_mode, inferred))
    with strategy.scope(), precision("float32"):
        model = make_model(config, data)
    dtype_policy = choose_precision(config.train, model, partial(make_model, config, data), data,
                                    default_strategy=strategy_name(strategy) == "default")
    if chief and config.train.verbose:
        print(dtype_policy.describe())
    if dtype_policy.policy != "float32":
        keras.utils.set_random_seed(config.run.seed)
        with strategy.scope(), precision(dtype_policy.policy):
            model = make_model(config, data)
            check_float32_output(model, data.input_shape, config.model.name, dtype_policy.policy)
    positive_class_index(data.class_names, config.evaluate.positive_class)  # a typo fails before training
    augment = make_augment(config.augment, seed=config.run.seed, data=data)
    config, finder = resolve_learning_rate(config, model, data, augment)  # train.learning_rate = "find"
    if chief:
        check_free_space(run_dir, model)
        if resume is None:
            if run_dir.exists():  # --overwrite was given: the old run goes only now that inputs are known good
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            write_text_atomically(run_dir / CONFIG_FILE, config.to_toml())  # with the rate lr-find chose
        if finder is not None:
            write_atomically(run_dir / LR_FIND_CSV, lambda path: finder.frame().to_csv(path, index=False))
            write_atomically(run_dir / LR_FIND_PLOT, lambda path: finder.figure().savefig(path, dpi=100))
        if data.folder_scan is not None:
            write_atomically(run_dir / SKIPPED_FILES_CSV, data.folder_scan.write_skipped)
            if data.folder_scan.skipped:
                warn_once(f"{len(data.folder_scan.skipped)} files skipped, listed with the reason in "
                          f"{(run_dir / SKIPPED_FILES_CSV).resolve()}")
    work_dir = run_dir or Path(tempfile.mkdtemp(prefix="kerascnn-worker-"))
    train_config = config.train if chief else dataclasses.replace(config.train, verbose=0)  # the chief reports
    fit = fit_function(config)
    try:
        if resume is not None and (run_dir / TRAINED_MODEL).is_file():  # training had finished: export only
            model = load_keras_model(run_dir / TRAINED_MODEL, unsafe)
            history = pd.read_csv(run_dir / HISTORY_FILE)
            result = TrainResult(history=history, train_seconds=0.0, epochs_run=len(history))
            machine = None
        else:
            machine = machine_gflops_once() if chief else None  # the day's GFLOPS, beside train_seconds
            result = fit(model, data, train_config, work_dir, seed=config.run.seed, cache=config.data.cache,
                         shuffle_buffer=config.data.shuffle_buffer, augment=augment, resume=resume is not None,
                         sampling=config.data.sampling)
        if not chief:
            return RunResult(run_dir=None, model=model, data=data, test_metrics={}, manifest={}, chief=False)
        if dtype_policy.policy != "float32" or strategy_name(strategy) != "default":
            model = deployable_copy(model, config, data)
        notes = refresh_batch_norm(model, data, config, result)
        thresholds = validation_thresholds(model, data, config.evaluate.thresholds, config.evaluate.threshold_target) \
            if data.multi_label else None
        test_metrics, sanity = evaluate_trained(model, data, result.history, bool(notes), thresholds)
        for warning in notes + sanity:  # said now, before the export; the CLI's closing summary does not repeat them
            warn_once(warning)
        warnings = data_warnings + notes + sanity  # the data warnings were logged when the data were read
        dropped = unsupported_artifacts(model, config.export)
        try:
            artifacts, failed = export(model, run_dir, data, config.export, thresholds, dropped), {}
        except PartialExport as exc:
            artifacts, failed, partial_error = exc.artifacts, exc.failed, exc
        distribution = {"strategy": strategy_name(strategy), "num_replicas_in_sync": result.num_replicas_in_sync,
                        "global_batch_size": result.global_batch_size, "precision": dtype_policy.to_dict()}
        if result.feature_cache:
            distribution["feature_cache"] = result.feature_cache
        if finder is not None:
            distribution["learning_rate"] = {"value": config.train.learning_rate, "found_by": finder.summary()}
        manifest = run_manifest(run_dir, config, data, test_metrics, result.train_seconds, result.epochs_run,
                                artifacts, distribution, resumed=resume is not None, thresholds=thresholds,
                                warnings=warnings, dropped=dropped, failed=failed,
                                flops=training_record(model, data.counts["train"], result.epochs_run,
                                                      result.train_seconds, machine, resumed=resume is not None))
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir) from None
    finally:
        if not chief:
            shutil.rmtree(work_dir, ignore_errors=True)
    if failed:  # the trained model stays in checkpoints/: `--resume` exports again without training
        raise PartialExport(f"{partial_error}; or run `kerascnn train --resume {run_dir}` with "
                            f"--set export.formats=... to change what is exported", artifacts, failed, dropped)
    (run_dir / TRAINED_MODEL).unlink(missing_ok=True)  # model.keras holds it now
    report = write_report(run_dir, data, model, config.evaluate, seed=config.run.seed) if config.evaluate.report else None
    return RunResult(run_dir=run_dir, model=model, data=data, test_metrics=test_metrics, manifest=manifest,
                     report=report)


def find_learning_rate(config: RunConfig, **options) -> LRFindResult:
    """The learning-rate range test (`kerascnn lr-find`) on the configured data, model and optimizer;
    `options` go to `kerascnn.lr_find.lr_find` (start_lr, end_lr, steps)."""
    check_config(config)
    keras.utils.set_random_seed(config.run.seed)
    data = load_data(config.data, seed=config.run.seed)
    model = make_model(config, data)
    augment = make_augment(config.augment, seed=config.run.seed, data=data)
    return lr_find(model, data, config.train, seed=config.run.seed, shuffle_buffer=config.data.shuffle_buffer,
                   augment=augment, **options)


def fit_function(config: RunConfig):
    """`train`, or fastai-style two-phase `fine_tune` for model.transfer = fine_tune (same arguments)."""
    return partial(fine_tune, unfreeze=config.model.unfreeze) if config.model.transfer == "fine_tune" else train


def describe_data(data: ImageData, color_mode: str = "auto", inferred_size: bool = False) -> str:
    """One line saying what the model will see: counts, classes, the image shape and, for a folder, where
    its size and channels came from."""
    height, width, channels = data.input_shape
    line = (f"data: {data.name}: {data.counts.get('train', 0)} train / {data.counts.get('validation', 0)} validation "
            f"/ {data.counts.get('test', 0)} test images, {data.num_classes} classes, {height}x{width}x{channels}")
    scan = data.folder_scan
    if scan is None:
        return line
    size = ("the median image size; set data.image_size to change it" if inferred_size else "data.image_size")
    if color_mode != "auto":
        colour = f"data.color_mode = {color_mode}"
    elif channels == 1:
        colour = "grayscale: every image is"
    else:
        colour = f"rgb: {scan.rgb_files()} of {len(scan.paths)} images are in colour; data.color_mode = grayscale " \
                 f"changes it"
    return f"{line} ({size}; {colour})"


def refresh_batch_norm(model: keras.Model, data: ImageData, config: RunConfig, result: TrainResult) -> list[str]:
    """Re-estimate the moving statistics of BatchNormalization layers that training left stale (see
    kerascnn.models.batchnorm); return the note saying so, or [] when none was needed."""
    steps = result.epochs_run * -(-data.counts.get("train", 0) // config.train.batch_size)
    if not stale_batch_norm(model, steps):
        return []
    momentum = max(float(layer.momentum) for layer in trained_batch_norms(model))
    batches = reestimate_batch_norm(model, data.train.batch(config.train.batch_size))
    note = (f"BatchNormalization moving statistics re-estimated over {batches} training batches: with momentum "
            f"{momentum:g}, {steps} training steps had left them near their initial values")
    return [note]


def evaluate_trained(model: keras.Model, data: ImageData, history: pd.DataFrame, reestimated: bool = False,
                     thresholds: list[float] | None = None) -> tuple[dict, list[str]]:
    """The trained model's test metrics and its sanity warnings (kerascnn.sanity). After a BatchNormalization
    re-estimation the history's validation accuracy is stale, so the validation split is predicted again.
    A multi-label model is measured at its `thresholds` (kerascnn.multilabel); the sanity checks, which read
    single-label accuracies, do not apply to it."""
    if data.multi_label:
        return evaluate(model, data, thresholds=thresholds), []
    probabilities, labels = predict_split(predict_function(model), data, "test")
    val_accuracy = last_value(history, "val_accuracy")
    if reestimated and data.counts.get("validation"):
        val_accuracy = classification_metrics(*predict_split(predict_function(model), data, "validation"))["accuracy"]
    warnings = sanity_warnings(probabilities, labels, data.class_names, last_value(history, "accuracy"),
                               val_accuracy)
    return classification_metrics(probabilities, labels), warnings


def _with_export_overrides(run_dir: Path, config: RunConfig, overrides: list[str]) -> RunConfig:
    """The stored config with `export.*` overrides applied (and written back to config.toml)."""
    settings = config.to_dict()
    for text in overrides:
        path, value = parse_override(text)
        if path[0] != "export":
            raise ConfigError(f"--resume accepts --set export.* only (to change what is exported), got "
                              f"{text!r}; the rest of a run's config is fixed once it has trained")
        merge(settings, path, value)
    config = config_from_dict(settings)
    write_text_atomically(run_dir / CONFIG_FILE, config.to_toml())
    return config


def make_model(config: RunConfig, data: ImageData) -> keras.Model:
    """The configured network (a transfer model over a backbone, or a registered builder's model),
    with a sigmoid head for multi-label data; an option value its builder rejects is a ConfigError,
    not a traceback."""
    if config.model.backbone:
        model = build_from_config(config.model, data.input_shape, data.num_classes)
    else:
        try:
            model = build_model(config.model.name, data.input_shape, data.num_classes, **config.model.options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {config.model.name!r} rejected its options {config.model.options}: "
                              f"{first_line(exc)}") from None
    return sigmoid_head(model) if data.multi_label else model


def check_data_options(config: RunConfig, data: ImageData) -> None:
    """Refuse imbalance options the data cannot take, before anything is written."""
    if data.multi_label and (config.train.class_weight is not None or config.data.sampling != "none"):
        raise ConfigError("train.class_weight and data.sampling weigh one class an image; drop them for "
                          "multi-label data")
    if config.augment.backend == "legacy" and (config.train.class_weight is not None or
                                               config.data.sampling != "none" or data.multi_label):
        raise ConfigError("augment.backend = 'legacy' serves its own batches, without class weights, balanced "
                          "sampling or multi-label targets; use augment.backend = 'fast'")


def leak_warnings(data: ImageData) -> list[str]:
    """A warning (logged, and kept for the manifest) when test images duplicate training or validation images."""
    leaked = leaked_test_images(data, ("train", "validation"))
    if not leaked:
        return []
    message = (f"{len(leaked)} of {data.counts['test']} test images are exact copies of training or validation "
               f"images, so test metrics overstate accuracy; set data.deduplicate = true or run `kerascnn inspect`")
    log.warning("%s", message)
    return [message]


def deployable_copy(model: keras.Model, config: RunConfig, data: ImageData) -> keras.Model:
    """The trained weights in a fresh float32 model built outside any strategy scope: what is evaluated
    and exported, so artifacts neither compute in float16 nor hold distributed variables."""
    copy = make_model(config, data)
    copy.set_weights(model.get_weights())
    return copy


def export_run(run_dir: str | Path, overrides: list[str] = (), serving_root: str | None = None) -> dict:
    """Write and verify a run's artifacts again from its model.keras; return the new artifacts' entries.

    Args:
        run_dir: a run directory written by `kerascnn train`.
        overrides: `section.key=value` changes to its stored config (e.g. `export.tflite=["int8"]`).
        serving_root: folder that gets the SavedModel as its next integer version (default: the run's
            saved_model/ or its configured export.serving_root).

    The manifest's `artifacts` are updated with the new entries (others are kept). Example:
        export_run("saved_models/digits-cnn", ["export.formats=['tflite']"])
    """
    run_dir = require_run_dir(run_dir)
    settings = read_run_config(run_dir).to_dict()
    for text in overrides:
        merge(settings, *parse_override(text))
    if serving_root:
        merge(settings, ["export", "serving_root"], serving_root)
    config = check_config(config_from_dict(settings))
    if not (run_dir / KERAS_FILE).is_file():
        raise ModelLoadError(f"{str(run_dir)!r} has no {KERAS_FILE} to export from; finish the run first with "
                             f"`kerascnn train --resume {run_dir}`")
    predictor = load(run_dir / KERAS_FILE)
    model = predictor.runtime.model
    failure = None
    dropped = unsupported_artifacts(model, config.export)
    for name, reason in dropped.items():  # `train` shows them in its table; here they are said as warnings
        warn_once(f"{name} was not written: {reason}")
    try:  # a multi-label run's thresholds are read from its manifest by the Predictor
        artifacts = export(model, run_dir, load_data(config.data, seed=config.run.seed), config.export,
                           predictor.thresholds, dropped)
    except PartialExport as exc:
        artifacts, failure = exc.artifacts, exc
    manifest = read_manifest(run_dir)
    if manifest is not None:
        manifest["artifacts"] = {**manifest.get("artifacts", {}), **artifacts}
        failed = {name: reason for name, reason in manifest.get("failed_artifacts", {}).items() if name not in artifacts}
        manifest["failed_artifacts"] = {**failed, **(failure.failed if failure else {})}
        manifest["dropped_artifacts"] = {**{name: reason for name, reason in manifest.get("dropped_artifacts", {}).items()
                                            if name not in artifacts}, **dropped}
        write_manifest(run_dir, manifest)
    if failure:
        raise failure
    return artifacts


def evaluate_run(run_dir: str | Path, artifact: str | None = None, config: RunConfig | None = None,
                 unsafe: bool = False) -> Report:
    """Evaluate an artifact of a run directory on its dataset's test split and write the report.

    Args:
        run_dir: a run directory written by `kerascnn train`.
        artifact: artifact path relative to the run directory (default model.keras).
        config: the run's config with any overrides (default: the run directory's config.toml).
        unsafe: let a Keras artifact run code it carries (Lambda layers); default False (safe_mode).

    Example:
        evaluate_run("saved_models/digits-cnn", "model.tflite").metrics["per_class"]["3"]["recall"]
    """
    run_dir = require_run_dir(run_dir)
    artifact = artifact or KERAS_FILE
    if not (run_dir / artifact).exists():
        present = sorted(p.name for p in run_dir.iterdir() if p.suffix in (".keras", ".h5", ".tflite"))
        raise ModelLoadError(f"{str(run_dir)!r} has no {artifact}; pass --artifact with one of its models "
                             f"({', '.join(present) or 'none found: train the run first'})")
    config = config or read_run_config(run_dir)
    data = load_data(config.data, seed=config.run.seed)
    predictor = load(run_dir / artifact, unsafe=unsafe)
    check_compatible(predictor, data, artifact)
    return write_report(run_dir, data, predictor, config.evaluate, artifact, seed=config.run.seed)
