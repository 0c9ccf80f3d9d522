"""`kerascnn` command line: train | evaluate | export | predict | serve | tune | lr-find | inspect | autoencode |
gan | style | bench | backbones | datasets | augment-preview | config-reference.

Errors a user can fix are one line on stderr with exit code 2 (1 for a failed export or training);
`--debug` shows the traceback. TensorFlow's, absl's, the TFLite converter's and tf2onnx's chatter is
silenced unless `--verbose` (kerascnn.quiet). `--help`, `--version` and argument errors answer
before TensorFlow is imported.
Exit codes: 0 done, 1 training or export failed, 2 bad input, 130 interrupted (Ctrl-C; a run in
progress prints the `kerascnn train --resume` command that continues it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from kerascnn import __version__, quiet
from kerascnn.errors import KerasCNNError, PartialExport, suggest

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as our one-line error (exit code 2), suggesting the nearest
    subcommand or choice."""

    def error(self, message):
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'([^']*)'", match.group(2)) or [c.strip() for c in match.group(2).split(",")]
            message += suggest(match.group(1), choices)
        raise KerasCNNError(f"{message} (see `{self.prog} --help`)")


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings]


def unrecognized(parser: argparse.ArgumentParser, command: str | None, extras: list[str]) -> KerasCNNError:
    """The error for arguments no parser took: the nearest flag of the subcommand, or where a
    top-level flag (--debug, --verbose) goes."""
    sub = next((action.choices[command] for action in parser._actions
                if isinstance(action, argparse._SubParsersAction) and command in action.choices), parser)
    flag = next((extra.split("=")[0] for extra in extras if extra.startswith("-")), None)
    prog = sub.prog
    if flag in _option_strings(parser) and flag not in _option_strings(sub):
        return KerasCNNError(f"{flag} is an option of kerascnn itself: put it before the command "
                             f"(kerascnn {flag} {command} ...)")
    hint = suggest(flag, _option_strings(sub)) if flag else ""
    return KerasCNNError(f"unrecognized arguments: {' '.join(extras)}{hint} (see `{prog} --help`)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train, evaluate and export one run")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--preset", help="packaged preset name (see kerascnn.config.list_presets)")
    p.add_argument("--dataset", help="dataset name, tfds:<name> or image-folder path (default digits)")
    p.add_argument("--model", help="model builder name (default cnn)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--output", help="root folder of run directories (default saved_models)")
    p.add_argument("--name", help="run directory name (default <dataset>-<model>-<time>)")
    p.add_argument("--seed", type=int)
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run directory")
    p.add_argument("--no-report", dest="report", action="store_false", default=None,
                   help="skip the evaluation report (metrics.json, figures, report.html)")
    p.add_argument("--strategy", help="tf.distribute strategy: auto (default), default, mirrored, multi_worker, tpu")
    p.add_argument("--mixed-precision", action="store_true", default=None,
                   help="train in mixed_float16 (GPUs with tensor cores); artifacts stay float32")
    p.add_argument("--precision", metavar="POLICY", help="dtype policy to train in: auto (default: bfloat16 where "
                                                           "a start-up check finds it faster on this CPU), float32, "
                                                           "mixed_bfloat16, mixed_float16")
    p.add_argument("--jit-compile", action="store_true", default=None, help="compile the training step with XLA")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set train.optimizer=sgd (repeatable)")
    p.add_argument("--backbone", help="pre-trained backbone (see `kerascnn backbones`) instead of --model")
    p.add_argument("--transfer", help="feature_extraction | truncate | fine_tune | from_scratch "
                                      "(default feature_extraction)")
    p.add_argument("--weights", help="imagenet | none | PATH of a weights file or a run's model.keras "
                                     "(default imagenet; none for from_scratch)")
    p.add_argument("--cut-at", type=_layer_ref, metavar="LAYER", help="layer name or index truncate cuts at")
    p.add_argument("--unfreeze", type=int, metavar="N", help="top backbone layers fine_tune unfreezes (default 20)")

    p.add_argument("--strict", action="store_true", default=None,
                   help="image folders: stop with an error listing unusable files instead of skipping them")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or interrupted run with its stored config")
    p.add_argument("--unsafe", action="store_true", help="with --resume: allow code inside its checkpoints to run")


def _layer_ref(text: str) -> int | str:
    """A layer index when the text is an integer, else a layer name."""
    return int(text) if text.lstrip("-").isdigit() else text


# CLI flag -> dotted config key, for the flags that are shortcuts of config values.
TRAIN_FLAGS = {"dataset": "data.dataset", "model": "model.name", "epochs": "train.epochs",
               "batch_size": "train.batch_size", "learning_rate": "train.learning_rate", "output": "run.output",
               "name": "run.name", "seed": "run.seed", "overwrite": "run.overwrite", "report": "evaluate.report",
               "backbone": "model.backbone", "transfer": "model.transfer", "weights": "model.weights",
               "cut_at": "model.cut_at", "unfreeze": "model.unfreeze",
               "strategy": "train.strategy", "mixed_precision": "train.mixed_precision",
               "precision": "train.precision",
               "jit_compile": "train.jit_compile", "strict": "data.strict"}


def config_from_args(args):
    from kerascnn.config import load_config

    values = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    return load_config(args.config, args.preset, args.set, values)


def cmd_train(args) -> int:
    config = None
    if args.resume:
        given = [flag for flag in ("config", "preset", *TRAIN_FLAGS) if getattr(args, flag) is not None] + (
            ["set"] if any(not text.startswith("export.") for text in args.set) else [])
        if given:
            raise KerasCNNError(f"--resume continues a run with its stored config.toml (only --set export.* may "
                                f"change it); drop {', '.join('--' + flag.replace('_', '-') for flag in given)}")
    elif args.unsafe:
        raise KerasCNNError("--unsafe applies to the checkpoints of a resumed run; use it with --resume RUN_DIR")
    else:
        config = config_from_args(args)  # a config error answers before TensorFlow is imported

    from kerascnn.flops import describe as describe_training
    from kerascnn.runner import run

    if args.resume:
        result = run(resume=args.resume, unsafe=args.unsafe, export_overrides=args.set)
    else:
        result = run(config)
    if not result.chief:
        print("worker finished: the chief writes the run directory and the artifacts")
        return EXIT_OK
    print_artifacts(result.manifest["artifacts"], result.manifest.get("dropped_artifacts"))
    print(f"run directory: {result.run_dir}")
    print(f"test accuracy: {result.test_metrics['accuracy']:.4f}")
    if "train_flops" in result.manifest:
        print(describe_training(result.manifest))
    for warning in result.manifest.get("warnings", []):
        quiet.warn_once(warning)
    if result.report:
        print(f"report: {result.report.html_path}")
    return EXIT_OK


MEDIAPIPE_ROW = "  in MediaPipe Tasks"


def print_artifacts(artifacts: dict, dropped: dict | None = None, failed: dict | None = None) -> None:
    """The parity table, one line an artifact (and one for MediaPipe Tasks under each .tflite file, and
    one each for the artifacts dropped or failed, with the reason), then a warning for each check that
    missed its bar (said once, see kerascnn.quiet)."""
    width = max([len("artifact"), len(MEDIAPIPE_ROW), *map(len, artifacts), *map(len, dropped or {}),
                 *map(len, failed or {})]) + 2
    print(f"{'artifact':<{width}}{'bytes':>12}{'vs tflite':>10}{'accuracy':>10}{'top-1 agree':>13}{'max |dp|':>11}"
          f"  check")
    for name, entry in artifacts.items():
        parity = entry["parity"]
        relative = entry.get("size_vs_tflite_float32")
        check = "ok" if parity.get("passed", True) else "FAILED"
        print(f"{name:<{width}}{entry['bytes']:>12}{f'{relative:.2f}x' if relative else '-':>10}"
              f"{parity['accuracy']:>10.4f}{parity['top1_agreement']:>13.4f}{parity['max_abs_diff']:>11.1e}  {check}")
        mediapipe = entry.get("mediapipe_tasks")
        if mediapipe and "skipped" in mediapipe:
            print(f"{MEDIAPIPE_ROW:<{width}}{'-':>12}{'-':>10}{'-':>10}{'-':>13}{'-':>11}  skipped")
        elif mediapipe:
            print(f"{MEDIAPIPE_ROW:<{width}}{'-':>12}{'-':>10}{mediapipe['accuracy']:>10.4f}"
                  f"{mediapipe['top1_agreement']:>13.4f}{mediapipe['max_abs_diff']:>11.1e}  "
                  f"{'ok' if mediapipe['passed'] else 'FAILED'}")
    for label, rows in (("dropped", dropped or {}), ("FAILED", failed or {})):
        for name, reason in rows.items():
            print(f"{name:<{width}}{'-':>12}{'-':>10}{'-':>10}{'-':>13}{'-':>11}  {label}: {reason}")
    for entry in artifacts.values():
        for check in (entry["parity"], entry.get("mediapipe_tasks") or {}):
            if "warning" in check:
                quiet.warn_once(check["warning"])


# `kerascnn evaluate` flag -> dotted config key.
EVALUATE_FLAGS = {"dataset": "data.dataset", "target_sensitivity": "evaluate.target_sensitivity",
                  "positive_class": "evaluate.positive_class"}


def cmd_evaluate(args) -> int:
    from kerascnn.rundir import read_run_config

    values = {key: getattr(args, flag) for flag, key in EVALUATE_FLAGS.items() if getattr(args, flag) is not None}
    config = read_run_config(args.run_dir, args.set, values)  # a bad run directory or value fails before TF loads

    from kerascnn.runner import evaluate_run

    report = evaluate_run(args.run_dir, args.artifact, config, unsafe=args.unsafe)
    metrics = report.metrics
    if args.json:
        print(json.dumps(metrics, indent=2))
        return EXIT_OK
    if metrics.get("multi_label"):
        print(f"{metrics['artifact']} on {metrics['dataset']} ({metrics['n']} test images, multi-label): subset "
              f"accuracy {metrics['subset_accuracy']:.4f}, Hamming loss {metrics['hamming_loss']:.4f}, mAP "
              f"{metrics['mean_average_precision']:.4f}, micro F1 {metrics['micro_f1']:.4f}")
        print(f"report: {report.html_path}")
        return EXIT_OK
    auc = ", ".join(f"{key} {value:.4f}" for key, value in metrics["roc_auc"].items() if value is not None)
    print(f"{metrics['artifact']} on {metrics['dataset']} ({metrics['n']} test images): accuracy "
          f"{metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, ROC AUC {auc or 'n/a'}")
    if metrics["threshold"]:
        threshold = metrics["threshold"]
        point = threshold["at_target"]
        print(f"threshold for {threshold['positive_class']!r} at sensitivity >= {threshold['target_sensitivity']:g}: "
              f"{point['threshold']:.4g} (sensitivity {point['sensitivity']:.4f}, specificity "
              f"{point['specificity']:.4f})")
    for note in report.notes:
        print(f"note: {note}")
    print(f"report: {report.html_path}")
    return EXIT_OK


def cmd_export(args) -> int:
    from kerascnn.rundir import read_run_config

    read_run_config(args.run_dir, args.set)  # a bad run directory or override fails before TensorFlow loads

    from kerascnn.runner import export_run

    print_artifacts(export_run(args.run_dir, args.set, args.serving_root))
    return EXIT_OK


def cmd_predict(args) -> int:
    from kerascnn.predict import image_paths, load

    predictor = load(args.artifact, unsafe=args.unsafe)
    paths = image_paths(args.images)
    if not paths:
        raise KerasCNNError("no images (.png, .jpg, .jpeg, .bmp, .gif) found in the given folders")
    if predictor.multi_label:  # every label over its class's threshold, highest score first
        thresholds = dict(zip(predictor.class_names, predictor.thresholds))
        rows = [{"image": str(path), "labels": [c for c, _ in found],
                 "predictions": [{"class": c, "probability": round(p, 6), "threshold": round(thresholds[c], 6)}
                                 for c, p in found]}
                for path, found in zip(paths, predictor.predict_labels(paths))]
    else:
        rows = [{"image": str(path), "predictions": [{"class": c, "probability": round(p, 6)} for c, p in top]}
                for path, top in zip(paths, predictor.predict(paths, top_k=args.top_k))]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["image", "rank", "class", "probability"])
        writer.writerows([row["image"], rank, p["class"], p["probability"]]
                         for row in rows for rank, p in enumerate(row["predictions"], 1))
    else:
        for row in rows:
            print(row["image"] + "\t" + "\t".join(f"{p['class']}:{p['probability']:.4f}" for p in row["predictions"]))
    return EXIT_OK


def cmd_datasets(args) -> int:
    from kerascnn.data.datasets import describe_sources

    for name, description in describe_sources():
        print(f"{name:<16}{description}")
    return EXIT_OK


def cmd_backbones(args) -> int:
    from kerascnn.models.transfer import list_backbones

    rows = list_backbones()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'name':<22}{'default':>8}{'min':>5}  {'preprocess_input':<22}cut points")
    for row in rows:
        preprocess = (row["preprocess_input"] or "(in the network)").replace("keras.applications.", "")
        print(f"{row['name']:<22}{row['default_size'] or '-':>8}{row['min_size']:>5}  "
              f"{preprocess.replace('.preprocess_input', ''):<22}{', '.join(row['cut_points'])}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from kerascnn.bench import BENCHES

    results = BENCHES[args.bench].run(args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(32, *(len(key) + 2 for key in results))
        for key, value in results.items():
            print(f"{key:<{width}}{value}")
    return EXIT_OK


PREVIEW_FORMATS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def cmd_augment_preview(args) -> int:
    from kerascnn.config import load_config

    out = Path(args.out)
    if out.suffix.lower() not in PREVIEW_FORMATS:
        raise KerasCNNError(f"--out {args.out!r} must end in one of {', '.join(PREVIEW_FORMATS)}")
    if args.images < 1 or args.variants < 1:
        raise KerasCNNError("--images and --variants must be at least 1")
    config = load_config(args.config, args.preset, args.set, {"data.dataset": args.dataset} if args.dataset else None)
    if not config.augment.per_image_enabled:
        print("no per-image augmentation configured: showing the course notes' ImageDataGenerator parameters "
              "(rotation 20, shifts 0.1, shear 10, zoom 0.1, horizontal flip)", file=sys.stderr)
    if config.augment.mixup or config.augment.cutmix:
        print("augment.mixup / cutmix mix pairs of images within each training batch: the preview does not show "
              "them", file=sys.stderr)

    from kerascnn.data.augment import write_preview

    write_preview(config, out, images=args.images, variants=args.variants)
    print(f"augmentation preview: {out}")
    return EXIT_OK


def _add_augment_preview(sub) -> None:
    p = sub.add_parser("augment-preview", help="save a grid of training images beside augmented variants")
    p.add_argument("--out", required=True, help="image file to write (.png, .jpg, .pdf, .svg)")
    p.add_argument("--config", help="TOML config file; its [augment] and [data] sections are used")
    p.add_argument("--preset", help="packaged preset name")
    p.add_argument("--dataset", help="dataset name, tfds:<name> or image-folder path (default digits)")
    p.add_argument("--images", type=int, default=8, help="training images shown, one per row (default 8)")
    p.add_argument("--variants", type=int, default=6, help="augmented versions of each image (default 6)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set augment.rotation_range=30 (repeatable)")


def cmd_serve(args) -> int:
    from kerascnn.serve.models import ServeOptions
    from kerascnn.serve.server import serve

    options = ServeOptions(max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms,
                           keep_versions=args.keep_versions, poll_seconds=args.poll_seconds,
                           max_body_bytes=args.max_body_bytes, max_image_pixels=args.max_image_pixels)
    serve(args.path, args.model_name, args.host, args.port, args.grpc_port, options, access_log=args.access_log)
    return EXIT_OK


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a run's SavedModel versions with TF Serving's REST and gRPC APIs")
    p.add_argument("path", help="run directory (serves its saved_model/<version>/) or serving root (<root>/<version>/)")
    p.add_argument("--model-name", help="name in the URLs and gRPC model_spec (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8501, help="REST port (default 8501, as TF Serving)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default: no gRPC; TF Serving uses 8500)")
    p.add_argument("--max-batch-size", type=int, default=32, help="most rows merged into one model call (default 32)")
    p.add_argument("--batch-timeout-ms", type=float, default=0.0,
                   help="longest wait for more requests to merge (default 0: only those already waiting)")
    p.add_argument("--keep-versions", type=int, default=1, help="newest versions kept loaded (default 1)")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions (default 1)")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024,
                   help="largest request body; bigger ones get 413 (default 16 MiB)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                   help="largest width x height of an encoded image, checked before decoding (default 4096x4096)")
    p.add_argument("--access-log", action="store_true", help="log every HTTP request")


def _add_bench(sub) -> None:
    from kerascnn.bench import load_benches

    p = sub.add_parser("bench", help="benchmarks against a reference, in one run")
    benches = p.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    for name, bench in load_benches().items():
        q = benches.add_parser(name, help=bench.help)
        q.add_argument("--json", action="store_true", help="print the results as JSON")
        bench.add_arguments(q)


def _add_autoencode(sub) -> None:
    p = sub.add_parser("autoencode", help="train a convolutional autoencoder (plain, denoising, compressing)")
    p.add_argument("--dataset", default="digits", help="dataset name, tfds:<name> or image-folder path (default digits)")
    p.add_argument("--noise", type=float, default=0.0, help="noise of a denoising autoencoder: std of 0..1 pixels "
                                                            "(gaussian) or fraction of pixels (salt_pepper); "
                                                            "default 0, a plain autoencoder")
    p.add_argument("--noise-type", default="gaussian", help="gaussian | salt_pepper (default gaussian)")
    p.add_argument("--latent-dim", type=int, help="size of a dense bottleneck (default: the last feature map)")
    p.add_argument("--filters", type=int, nargs="+", default=[32, 64], help="encoder filters (default 32 64)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="resize images to this")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--anomaly-class", help="class name or index left out of training and scored as anomaly")
    p.add_argument("--max-train-examples", type=int, help="cap on training images (default all)")
    p.add_argument("--output", default="saved_models", help="root folder of run directories (default saved_models)")
    p.add_argument("--name", help="run directory name")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-report", dest="report", action="store_false", help="skip report.html and its figures")
    p.add_argument("--verbose", type=int, default=2, help="Keras progress: 0, 1 or 2 (default 2)")


def cmd_autoencode(args) -> int:
    from kerascnn.autoencode import autoencode

    result = autoencode(args.dataset, noise=args.noise, noise_type=args.noise_type, epochs=args.epochs,
                        output=args.output, name=args.name, latent_dim=args.latent_dim, filters=tuple(args.filters),
                        image_size=args.image_size, batch_size=args.batch_size, learning_rate=args.learning_rate,
                        anomaly_class=args.anomaly_class, seed=args.seed, overwrite=args.overwrite,
                        verbose=args.verbose, report=args.report, max_train_examples=args.max_train_examples)
    print_tensor_artifacts(result.manifest["artifacts"])
    print(f"run directory: {result.run_dir}")
    print(" ".join(f"{key} {value:.4f}" for key, value in result.test_metrics.items() if value is not None))
    if result.report:
        print(f"report: {result.report}")
    return EXIT_OK


def _add_gan(sub) -> None:
    p = sub.add_parser("gan", help="train a DCGAN; samples per epoch, Frechet distance, generator artifacts")
    p.add_argument("--dataset", help="dataset name, tfds:<name> or image-folder path (default digits)")
    p.add_argument("--epochs", type=int, help="most epochs (default 20)")
    p.add_argument("--time-budget", type=float, help="seconds of training after which no new epoch starts")
    p.add_argument("--latent-dim", type=int, help="size of the generator's input z (default 100)")
    p.add_argument("--filters", type=int, nargs="+", help="generator widths from the projection down (default 128 64)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="resize images to this")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--learning-rate", type=float, help="Adam step of both nets (default 0.0002)")
    p.add_argument("--classifier", help="kerascnn run directory or .keras classifier of the same dataset for the "
                                        "quality measures (default: train a cnn)")
    p.add_argument("--classifier-epochs", type=int, help="epochs of that cnn (default 3)")
    p.add_argument("--fd-samples", type=int, help="images the Frechet distance compares (default 2000)")
    p.add_argument("--max-train-examples", type=int, help="cap on training images (default all)")
    p.add_argument("--output", help="root folder of run directories (default saved_models)")
    p.add_argument("--name", help="run directory name")
    p.add_argument("--seed", type=int)
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run directory")
    p.add_argument("--verbose", type=int, help="Keras progress: 0, 1 or 2 (default 2)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or interrupted GAN run")
    p.add_argument("--unsafe", action="store_true", help="with --resume: allow code inside its Keras files to run")


GAN_OPTIONS = ("dataset", "epochs", "time_budget", "latent_dim", "filters", "image_size", "batch_size",
               "learning_rate", "classifier", "classifier_epochs", "fd_samples", "max_train_examples", "output",
               "name", "seed", "overwrite", "verbose")


def cmd_gan(args) -> int:
    from kerascnn.gan import gan

    given = {option: getattr(args, option) for option in GAN_OPTIONS if getattr(args, option) is not None}
    if args.resume:
        if given:
            raise KerasCNNError(f"--resume continues a run with its stored settings; drop "
                                f"{', '.join('--' + option.replace('_', '-') for option in given)}")
        result = gan(resume=args.resume, unsafe=args.unsafe)
    elif args.unsafe:
        raise KerasCNNError("--unsafe applies to the files of a resumed run; use it with --resume RUN_DIR")
    else:
        if "filters" in given or "image_size" in given:
            given.update({key: tuple(given[key]) for key in ("filters", "image_size") if key in given})
        result = gan(**given)
    print_tensor_artifacts(result.manifest["artifacts"])
    print(f"run directory: {result.run_dir}")
    metrics = result.test_metrics
    print(f"Frechet distance (classifier features, not Inception FID): epoch 1 {metrics['frechet_distance_epoch_1']:.2f}"
          f", last {metrics['frechet_distance']:.2f}; class entropy {metrics['class_entropy']:.3f} nats "
          f"(max {metrics['max_class_entropy']:.3f})")
    print(f"report: {result.report}")
    return EXIT_OK


def _add_style(sub) -> None:
    p = sub.add_parser("style", help="neural style transfer: paint CONTENT in the style of STYLE (VGG19)")
    p.add_argument("content", help="content image file")
    p.add_argument("style", help="style image file")
    p.add_argument("--out", required=True, help="result image file (.png, .jpg, ...)")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps (default 100)")
    p.add_argument("--size", type=int, default=384, help="longer side of the result in pixels (default 384)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (VGG19 weights from the Keras cache) | none (random) | PATH (default imagenet)")
    p.add_argument("--optimizer", default="adam", help="adam | lbfgs (default adam)")
    p.add_argument("--learning-rate", type=float, default=5.0, help="Adam step in pixel units (default 5)")
    p.add_argument("--content-weight", type=float, default=2.5e-8)
    p.add_argument("--style-weight", type=float, default=1e-6)
    p.add_argument("--tv-weight", type=float, default=1e-6, help="total-variation weight (default 1e-6)")
    p.add_argument("--save-every", type=int, default=0, help="write an intermediate image every N steps")
    p.add_argument("--progress-every", type=int, default=10, help="print the loss every N steps (0: never)")


def cmd_style(args) -> int:
    from kerascnn.style import style_transfer

    def progress(step, loss, parts):
        if args.progress_every and step % args.progress_every == 0:
            print(f"step {step:>5}  loss {loss:.4g}  " + "  ".join(f"{k} {v:.4g}" for k, v in parts.items()))

    result = style_transfer(args.content, args.style, args.out, steps=args.steps, size=args.size,
                            weights=args.weights, optimizer=args.optimizer, learning_rate=args.learning_rate,
                            content_weight=args.content_weight, style_weight=args.style_weight,
                            tv_weight=args.tv_weight, save_every=args.save_every, progress=progress)
    for path in result.intermediates:
        print(f"intermediate: {path}")
    print(f"loss {result.losses[0]:.4g} -> {result.losses[-1]:.4g} in {len(result.losses) - 1} steps "
          f"({result.seconds:.1f} s)")
    print(f"result: {result.output}")
    return EXIT_OK


def print_tensor_artifacts(artifacts: dict) -> None:
    """The output-parity table of a pixel-output model: one line an artifact."""
    width = max([len("artifact"), *map(len, artifacts)]) + 2
    print(f"{'artifact':<{width}}{'bytes':>12}{'max |d|':>11}{'mean |d|':>11}  check")
    for name, entry in artifacts.items():
        parity = entry["parity"]
        print(f"{name:<{width}}{entry['bytes']:>12}{parity['max_abs_diff']:>11.1e}{parity['mean_abs_diff']:>11.1e}  "
              f"{'ok' if parity['passed'] else 'FAILED'}")


# `kerascnn tune` flag -> dotted config key.
TUNE_FLAGS = {"budget": "tune.budget", "max_trials": "tune.max_trials", "tuner": "tune.tuner",
              "objective": "tune.objective", "direction": "tune.direction", "output": "run.output",
              "name": "run.name", "overwrite": "run.overwrite", "final": "tune.final",
              "trial_process": "tune.trial_process"}


def cmd_tune(args) -> int:
    from kerascnn.config import load_config
    from kerascnn.tune import set_distributed_role, tune

    if args.chief or args.worker:
        set_distributed_role("chief" if args.chief else "worker", args.oracle_ip, args.oracle_port, args.worker)
    values = {key: getattr(args, flag) for flag, key in TUNE_FLAGS.items() if getattr(args, flag) is not None}
    if args.resume:
        given = [flag for flag in ("config", "preset", *TUNE_FLAGS) if getattr(args, flag) is not None]
        if given or args.set:
            raise KerasCNNError(f"--resume continues a search with its stored tune.toml; drop "
                                f"{', '.join('--' + flag.replace('_', '-') for flag in given + ['set'] * bool(args.set))}")
        result = tune(resume=args.resume)
    else:
        result = tune(load_config(args.config, args.preset, args.set, values))
    if result.role == "worker":
        print("worker finished: the chief writes trials.csv, best.toml and the final run")
        return EXIT_OK
    counts = result.trials["status"].value_counts().to_dict() if not result.trials.empty else {}
    print(f"tune directory: {result.tune_dir}")
    print(f"trials: {len(result.trials)} ({', '.join(f'{n} {status}' for status, n in counts.items()) or 'none'})")
    if result.best_config is None:
        print("no trial completed: no best.toml")
        return EXIT_FAILURE
    print(f"best config: {result.tune_dir / 'best.toml'}")
    if result.final is not None:
        print(f"final run: {result.final.run_dir} (test accuracy {result.final.test_metrics['accuracy']:.4f})")
    return EXIT_OK


def cmd_lr_find(args) -> int:
    from kerascnn.config import load_config
    from kerascnn.runner import find_learning_rate

    out = Path(args.out)
    if out.suffix.lower() not in PREVIEW_FORMATS:
        raise KerasCNNError(f"--out {args.out!r} must end in one of {', '.join(PREVIEW_FORMATS)}")
    values = {"data.dataset": args.dataset} if args.dataset else None
    result = find_learning_rate(load_config(args.config, args.preset, args.set, values), start_lr=args.start_lr,
                                end_lr=args.end_lr, steps=args.steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.figure().savefig(out, dpi=100)
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    else:
        print(f"suggested learning rate: {result.suggestion:.3g} ({len(result.losses)} steps in "
              f"{result.seconds:.1f} s{', stopped at divergence' if result.stopped_early else ''})")
        print(f"plot: {out}")
    return EXIT_OK


def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="search any config values with KerasTuner, then train the best in full")
    p.add_argument("--config", help="TOML config file with a [tune.space] table")
    p.add_argument("--preset", help="packaged preset name")
    p.add_argument("--budget", help="wall time of the search, e.g. 90s, 30m, 2h (default: none)")
    p.add_argument("--max-trials", type=int, help="trials to run at most (default 10)")
    p.add_argument("--tuner", help="random (default) | bayesian | hyperband")
    p.add_argument("--objective", help="val_accuracy (default) | val_loss | accuracy | loss")
    p.add_argument("--direction", help="max | min (default: min for losses, max otherwise)")
    p.add_argument("--output", help="folder the tune directory goes in (default saved_models)")
    p.add_argument("--name", help="tune directory name (default tune-<dataset>-<time>)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing tune directory")
    p.add_argument("--no-final", dest="final", action="store_false", default=None,
                   help="skip the full run of the best config")
    p.add_argument("--trial-process", action="store_true", default=None,
                   help="run each trial in a fresh process (flat memory; a trial killed for memory is a failed trial)")
    p.add_argument("--resume", metavar="TUNE_DIR", help="continue a killed or interrupted search")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set train.epochs=3 (repeatable)")
    role = p.add_mutually_exclusive_group()
    role.add_argument("--chief", action="store_true", help="serve the search's oracle to workers over gRPC")
    role.add_argument("--worker", metavar="ID", help="run trials the chief hands out (a distinct ID a worker)")
    p.add_argument("--oracle-ip", default="127.0.0.1", help="address of the chief's oracle (default 127.0.0.1)")
    p.add_argument("--oracle-port", type=int, default=8000, help="port of the chief's oracle (default 8000)")


def _add_lr_find(sub) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: suggest a rate and plot loss against rate")
    p.add_argument("--config", help="TOML config file (its data, model and optimizer are tested)")
    p.add_argument("--preset", help="packaged preset name")
    p.add_argument("--dataset", help="dataset name, tfds:<name> or image-folder path (default digits)")
    p.add_argument("--out", default="lr_find.png", help="plot to write (default lr_find.png)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first rate of the ramp (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last rate of the ramp (default 10)")
    p.add_argument("--steps", type=int, default=100, help="steps of the ramp (default 100)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set train.optimizer=sgd (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
def cmd_inspect(args) -> int:
    from kerascnn.audit import inspect, summary_lines

    overrides = list(args.set) + (["data.strict=true"] if args.strict else [])
    audit = inspect(args.dataset, overrides, seed=args.seed, folds=args.folds, label_issues=args.label_issues,
                    near_duplicates=args.near_duplicates)
    if args.output:
        audit.save(args.output)
    if args.json:
        print(json.dumps(audit.result, indent=2))
        return EXIT_OK
    for line in summary_lines(audit.result):
        print(line)
    if args.output:
        print(f"audit: {audit.folder / 'audit.html'}")
    return EXIT_OK


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="audit a dataset: counts, sizes, unreadable files, duplicates and leakage "
                                       "across splits, label-error candidates (cleanlab)")
    p.add_argument("dataset", help="dataset name, image-folder path or label CSV")
    p.add_argument("--json", action="store_true", help="print the audit as one JSON object")
    p.add_argument("--output", metavar="DIR", help="write audit.html, audit.json, duplicates.csv, label_issues.csv, "
                                                   "unreadable.csv and label_issues.png into DIR")
    p.add_argument("--seed", type=int, default=42, help="seed of the splits, as run.seed in training (default 42)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the quick model (default 5)")
    p.add_argument("--no-label-issues", dest="label_issues", action="store_false",
                   help="skip the label-error search")
    p.add_argument("--no-near-duplicates", dest="near_duplicates", action="store_false",
                   help="look for exact duplicates only")
    p.add_argument("--strict", action="store_true", help="stop on unusable files or rows instead of listing them")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a data setting, e.g. --set data.image_root=images (repeatable)")


def cmd_config_reference(args) -> int:
    from kerascnn.config import config_reference

    print(config_reference())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kerascnn", description="Train, evaluate and export CNN image classifiers.")
    parser.add_argument("--version", action="version", version=f"kerascnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's, absl's and converters' own logs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    p = sub.add_parser("evaluate", help="test metrics, figures and report of a run's model or another artifact")
    p.add_argument("run_dir")
    p.add_argument("--artifact", help="artifact inside the run directory (default model.keras); its report goes "
                                      "to reports/<artifact>/")
    p.add_argument("--dataset", help="evaluate on another dataset with the same classes (default: the run's)")
    p.add_argument("--target-sensitivity", type=float, help="sensitivity the reported threshold reaches (default 0.95)")
    p.add_argument("--positive-class", help="class name whose thresholds are reported (default: the second of two)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a value of the run's config, e.g. --set evaluate.tsne_sample=200 (repeatable)")
    p.add_argument("--json", action="store_true", help="print metrics.json instead of a summary")
    p.add_argument("--unsafe", action="store_true", help="allow code inside Keras model files to run")
    p = sub.add_parser("export", help="write and verify a run's artifacts again from model.keras")
    p.add_argument("run_dir")
    p.add_argument("--serving-root", help="folder that gets the SavedModel as its next integer version "
                                          "(default RUN_DIR/saved_model); older versions are kept")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override the run's config, e.g. --set 'export.tflite=[\"int8\"]' (repeatable)")
    p = sub.add_parser("predict", help="classify images with any artifact")
    p.add_argument("artifact")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=1, help="classes to show per image, most likely first (default 1)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of tab-separated lines")
    output.add_argument("--csv", action="store_true", help="print CSV: image,rank,class,probability")
    p.add_argument("--unsafe", action="store_true", help="allow code inside Keras model files to run")
    sub.add_parser("datasets", help="list the dataset sources")
    sub.add_parser("config-reference", help="print every config key with its default and meaning (Markdown)")
    _add_augment_preview(sub)
    p = sub.add_parser("backbones", help="list the pre-trained backbones for --backbone")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects (name, default_size, min_size, ...)")
    _add_bench(sub)
    _add_serve(sub)
    _add_autoencode(sub)
    _add_gan(sub)
    _add_style(sub)
    _add_tune(sub)
    _add_lr_find(sub)
    _add_inspect(sub)
    return parser


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "export": cmd_export, "predict": cmd_predict,
            "datasets": cmd_datasets, "config-reference": cmd_config_reference, "augment-preview": cmd_augment_preview, "backbones": cmd_backbones,
            "bench": cmd_bench, "serve": cmd_serve, "autoencode": cmd_autoencode, "gan": cmd_gan, "style": cmd_style,
            "tune": cmd_tune, "lr-find": cmd_lr_find, "inspect": cmd_inspect}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = False
    try:
        parser = build_parser()
        args, extras = parser.parse_known_args(argv)
        if extras:
            raise unrecognized(parser, args.command, extras)
        debug = args.debug
        quiet.configure(args.verbose)
        return COMMANDS[args.command](args)
    except KerasCNNError as exc:
        if debug:
            raise
        if isinstance(exc, PartialExport):  # what was written, and what was not, before the one-line error
            print_artifacts(exc.artifacts, exc.dropped, exc.failed)
        print(f"kerascnn: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # a RunInterrupted carries the resume command
        print(f"kerascnn: {str(exc) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
