"""`kerascnn` command line: train | evaluate | export | predict | datasets | augment-preview | bench.

Errors a user can fix are one line on stderr with exit code 2 (1 for a failed export or training);
`--debug` shows the traceback. TensorFlow's start-up chatter is silenced unless `--debug`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kerascnn.errors import KerasCNNError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as our one-line error (exit code 2)."""

    def error(self, message):
        raise KerasCNNError(f"{message} (see `{self.prog} --help`)")


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
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set train.optimizer=sgd (repeatable)")


# CLI flag -> dotted config key, for the flags that are shortcuts of config values.
TRAIN_FLAGS = {"dataset": "data.dataset", "model": "model.name", "epochs": "train.epochs",
               "batch_size": "train.batch_size", "learning_rate": "train.learning_rate", "output": "run.output",
               "name": "run.name", "seed": "run.seed", "overwrite": "run.overwrite"}


def config_from_args(args):
    from kerascnn.config import load_config

    values = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    return load_config(args.config, args.preset, args.set, values)


def cmd_train(args) -> int:
    from kerascnn.runner import run

    result = run(config_from_args(args))
    print_artifacts(result.manifest["artifacts"])
    print(f"run directory: {result.run_dir}")
    print(f"test accuracy: {result.test_metrics['accuracy']:.4f}")
    return EXIT_OK


def print_artifacts(artifacts: dict) -> None:
    """The parity table: one line an artifact."""
    print(f"{'artifact':<28}{'bytes':>12}{'accuracy':>10}{'top-1 agree':>13}{'max |dp|':>11}")
    for name, entry in artifacts.items():
        parity = entry["parity"]
        print(f"{name:<28}{entry['bytes']:>12}{parity['accuracy']:>10.4f}{parity['top1_agreement']:>13.4f}"
              f"{parity['max_abs_diff']:>11.1e}")


def _run_config(run_dir: Path):
    from kerascnn.config import config_from_dict, read_config_file

    if not (run_dir / "config.toml").is_file():
        raise KerasCNNError(f"{str(run_dir)!r} is not a kerascnn run directory (no config.toml); pass a folder "
                            f"written by `kerascnn train`")
    return config_from_dict(read_config_file(run_dir / "config.toml"))


def cmd_evaluate(args) -> int:
    from kerascnn.data.datasets import load_data
    from kerascnn.evaluation import evaluate
    from kerascnn.predict import load

    run_dir = Path(args.run_dir)
    config = _run_config(run_dir)
    predictor = load(run_dir / (args.artifact or "model.keras"))
    metrics = evaluate(predictor, load_data(config.data, seed=config.run.seed))
    print(json.dumps(metrics, indent=2))
    return EXIT_OK


def cmd_export(args) -> int:
    from kerascnn.data.datasets import load_data
    from kerascnn.export import export
    from kerascnn.predict import load

    run_dir = Path(args.run_dir)
    config = _run_config(run_dir)
    model = load(run_dir / "model.keras").runtime.model
    artifacts = export(model, run_dir, load_data(config.data, seed=config.run.seed), config.export)
    manifest_path = run_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["artifacts"] = {**manifest.get("artifacts", {}), **artifacts}
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print_artifacts(artifacts)
    return EXIT_OK


def cmd_predict(args) -> int:
    from kerascnn.predict import image_paths, load

    predictor = load(args.artifact, unsafe=args.unsafe)
    paths = image_paths(args.images)
    if not paths:
        raise KerasCNNError("no images found in the given paths")
    rows = [{"image": str(path), "predictions": [{"class": c, "probability": round(p, 6)} for c, p in top]}
            for path, top in zip(paths, predictor.predict(paths, top_k=args.top_k))]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(row["image"] + "\t" + "\t".join(f"{p['class']}:{p['probability']:.4f}" for p in row["predictions"]))
    return EXIT_OK


def cmd_datasets(args) -> int:
    from kerascnn.data.datasets import describe_sources

    for name, description in describe_sources():
        print(f"{name:<16}{description}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from kerascnn.bench import BENCHES

    results = BENCHES[args.bench].run(args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:<32}{value}")
    return EXIT_OK


PREVIEW_FORMATS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def cmd_augment_preview(args) -> int:
    import dataclasses

    from kerascnn.config import load_config

    out = Path(args.out)
    if out.suffix.lower() not in PREVIEW_FORMATS:
        raise KerasCNNError(f"--out {args.out!r} must end in one of {', '.join(PREVIEW_FORMATS)}")
    if args.images < 1 or args.variants < 1:
        raise KerasCNNError("--images and --variants must be at least 1")
    config = load_config(args.config, args.preset, args.set, {"data.dataset": args.dataset} if args.dataset else None)

    from kerascnn.data.augment import SEED_AUGMENTATION, make_augment, save_preview
    from kerascnn.data.datasets import load_data

    augment_config = config.augment
    if not augment_config.enabled:
        augment_config = dataclasses.replace(SEED_AUGMENTATION, backend=augment_config.backend)
        print("no augmentation configured: showing the seeds' ImageDataGenerator parameters "
              "(rotation 20, shifts 0.1, shear 10, zoom 0.1, horizontal flip)", file=sys.stderr)
    data = load_data(config.data, seed=config.run.seed)
    images, labels = next(data.train.batch(args.images).as_numpy_iterator())
    out.parent.mkdir(parents=True, exist_ok=True)
    save_preview(images, [data.class_names[label] for label in labels], make_augment(augment_config, config.run.seed),
                 out, variants=args.variants)
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


def _add_bench(sub) -> None:
    from kerascnn.bench import load_benches

    p = sub.add_parser("bench", help="benchmarks against a reference, in one run")
    benches = p.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    for name, bench in load_benches().items():
        q = benches.add_parser(name, help=bench.help)
        q.add_argument("--json", action="store_true", help="print the results as JSON")
        bench.add_arguments(q)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kerascnn", description="Train, evaluate and export CNN image classifiers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow logs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    p = sub.add_parser("evaluate", help="test metrics of a run's model or another artifact")
    p.add_argument("run_dir")
    p.add_argument("--artifact", help="artifact inside the run directory (default model.keras)")
    p = sub.add_parser("export", help="write and verify a run's artifacts again from model.keras")
    p.add_argument("run_dir")
    p = sub.add_parser("predict", help="classify images with any artifact")
    p.add_argument("artifact")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print JSON instead of tab-separated lines")
    p.add_argument("--unsafe", action="store_true", help="allow code inside Keras model files to run")
    sub.add_parser("datasets", help="list the dataset sources")
    _add_augment_preview(sub)
    _add_bench(sub)
    return parser


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "export": cmd_export, "predict": cmd_predict,
            "datasets": cmd_datasets, "augment-preview": cmd_augment_preview, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except KerasCNNError as exc:
        if debug:
            raise
        print(f"kerascnn: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kerascnn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
