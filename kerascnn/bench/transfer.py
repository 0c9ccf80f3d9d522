"""Transfer-learning benchmarks: the course notes' four cases without ImageNet, and a check of the backbone table.

`kerascnn bench transfer` pre-trains kerascnn's `cnn` on Fashion-MNIST classes 0-4 (T-shirt/top,
Trouser, Pullover, Dress, Coat), saves it as a backbone, then learns classes 5-9 (Sandal, Shirt,
Sneaker, Bag, Ankle boot) with each strategy on a small and a large training subset, reporting test
accuracy and training seconds. The reference inside the run is `from_scratch`: the same architecture
with random weights, so the table shows where reusing frozen features beats training from nothing.

`kerascnn bench backbones` builds every backbone of the table at its minimum input size (at least
32, random weights) and checks that its named cut points exist: too slow for the test suite, cheap enough here.
With `--train` it also trains each one (from_scratch, one epoch on a small generated set at that size)
and exports every default format with parity, reporting seconds, the largest float |delta p|, the
formats dropped for the backbone (with the reason) and any that failed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from kerascnn.bench import register_bench
from kerascnn.config import TRANSFER_STRATEGIES, DataConfig, TrainConfig

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)


def add_transfer_arguments(parser) -> None:
    parser.add_argument("--pretrain-epochs", type=int, default=5, help="epochs of the cnn on classes 0-4 (default 5)")
    parser.add_argument("--small", type=int, default=500, help="training images of the small subset (default 500)")
    parser.add_argument("--small-epochs", type=int, default=20, help="epochs on the small subset (default 20)")
    parser.add_argument("--large", type=int, default=None, help="training images of the large subset (default all)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs on the large subset (default 5)")
    parser.add_argument("--cut-at", default="pool_1", help="layer truncate cuts the cnn at (default pool_1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)


def _train_config(args, epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=args.batch_size, verbose=0, tensorboard=False)


@register_bench("transfer", help="Fashion-MNIST 0-4 -> 5-9 with the four transfer strategies, small and large subsets",
                add_arguments=add_transfer_arguments)
def run_transfer(args) -> dict:
    """Accuracy and training seconds of each strategy on each subset, after pre-training the cnn."""
    import keras

    from kerascnn.data.datasets import load_data
    from kerascnn.evaluation import evaluate
    from kerascnn.models import build_model
    from kerascnn.models.transfer import build_transfer_model
    from kerascnn.training import fine_tune, train

    keras.utils.set_random_seed(args.seed)
    source = load_data(DataConfig(dataset="fashion_mnist", classes=SOURCE_CLASSES), seed=args.seed)
    pretrained = build_model("cnn", source.input_shape, source.num_classes)
    pretraining = train(pretrained, source, _train_config(args, args.pretrain_epochs), seed=args.seed)
    results = {"pretrain.train_images": source.counts["train"],
               "pretrain.accuracy": round(evaluate(pretrained, source)["accuracy"], 4),
               "pretrain.seconds": round(pretraining.train_seconds, 1)}
    with tempfile.TemporaryDirectory() as workdir:
        weights = str(Path(workdir) / "pretrained.keras")
        pretrained.save(weights)
        for subset, limit, epochs in (("small", args.small, args.small_epochs), ("large", args.large, args.epochs)):
            data = load_data(DataConfig(dataset="fashion_mnist", classes=TARGET_CLASSES, max_train_examples=limit),
                             seed=args.seed)
            results[f"{subset}.train_images"] = data.counts["train"]
            results[f"{subset}.epochs"] = epochs
            for strategy in TRANSFER_STRATEGIES:
                keras.utils.set_random_seed(args.seed)
                model = build_transfer_model("cnn", data.input_shape, data.num_classes, strategy,
                                             weights="none" if strategy == "from_scratch" else weights,
                                             cut_at=args.cut_at if strategy == "truncate" else None)
                fit = fine_tune if strategy == "fine_tune" else train
                result = fit(model, data, _train_config(args, epochs), seed=args.seed)
                results[f"{subset}.{strategy}.accuracy"] = round(evaluate(model, data)["accuracy"], 4)
                results[f"{subset}.{strategy}.seconds"] = round(result.train_seconds, 1)
    return results


def add_backbones_arguments(parser) -> None:
    parser.add_argument("--train", action="store_true",
                        help="also train each backbone one epoch and export every default format with parity")
    parser.add_argument("--only", metavar="NAMES", help="comma-separated backbone names (default: all)")
    parser.add_argument("--images", type=int, default=32, help="generated images for --train (default 32)")


def generated_images(n: int, size: int, seed: int = 0):
    """`n` size x size RGB images in 2 classes (dark and bright, with noise): learnable in one epoch."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = 70 + 110 * labels[:, None, None, None] + rng.normal(0, 30, (n, size, size, 3))
    return np.clip(images, 0, 255).astype("uint8"), labels


def train_and_export(name: str, size: int, images: int, seed: int = 42) -> dict:
    """Train backbone `name` from scratch for one epoch at `size` and export the default formats."""
    import keras

    from kerascnn.config import ExportConfig
    from kerascnn.data.datasets import from_arrays
    from kerascnn.errors import PartialExport
    from kerascnn.export import export, unsupported_artifacts
    from kerascnn.models.transfer import build_transfer_model
    from kerascnn.training import train

    keras.utils.set_random_seed(seed)
    x, y = generated_images(images, size)
    data = from_arrays(x, y, class_names=["dark", "bright"], seed=seed)
    model = build_transfer_model(name, (size, size, 3), 2, "from_scratch")
    start = time.perf_counter()
    train(model, data, TrainConfig(epochs=1, batch_size=8, verbose=0, tensorboard=False), seed=seed)
    trained = time.perf_counter()
    config = ExportConfig()
    result = {"parameters": model.count_params(), "train_seconds": round(trained - start, 1)}
    dropped = unsupported_artifacts(model, config)
    with tempfile.TemporaryDirectory() as run_dir:
        try:
            artifacts, failed = export(model, run_dir, data, config, dropped=dropped), {}
        except PartialExport as exc:
            artifacts, failed = exc.artifacts, exc.failed
    exact = [entry["parity"]["max_abs_diff"] for entry in artifacts.values() if entry["parity"]["criterion"] == "exact"]
    result.update({"export_seconds": round(time.perf_counter() - trained, 1), "artifacts": len(artifacts),
                   "float_max_abs_diff": float(f"{max(exact):.1e}") if exact else None,
                   "int8_top1_agreement": artifacts.get("model_int8.tflite", {}).get("parity", {}).get("top1_agreement"),
                   "dropped": "; ".join(f"{k} ({v})" for k, v in dropped.items()) or "-",
                   "failed": "; ".join(f"{k} ({v})" for k, v in failed.items()) or "-"})
    return result


@register_bench("backbones", help="build every backbone at its minimum size and check its cut points; with --train, "
                                  "train and export each", add_arguments=add_backbones_arguments)
def run_backbones(args) -> dict:
    """Seconds to build each backbone (random weights, minimum input of at least 32) and its layer count; fails on a
    missing cut point, so the table cannot drift from keras.applications. `--train`: see `train_and_export`."""
    import keras

    from kerascnn.errors import ConfigError, KerasCNNError, suggest
    from kerascnn.models.transfer import BACKBONES, build_backbone

    names = list(BACKBONES)
    if getattr(args, "only", None):
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        for name in names:
            if name not in BACKBONES:
                raise ConfigError(f"--only: unknown backbone {name!r}{suggest(name, BACKBONES)}; run `kerascnn "
                                  f"backbones` for the {len(BACKBONES)} names")
    results = {}
    for name in names:
        row = BACKBONES[name]
        start = time.perf_counter()
        size = max(row.min_size, 32)  # the cnn pools (and so has its cut points) only on inputs of 4x4 and up
        network = build_backbone(name, (size, size, row.channels or 1))
        missing = [cut for cut in row.cut_points if cut not in {layer.name for layer in network.layers}]
        if missing:
            raise KerasCNNError(f"backbone {name!r} has no layer {', '.join(missing)}: fix its cut points")
        results[f"{name}.layers"] = len(network.layers)
        results[f"{name}.build_seconds"] = round(time.perf_counter() - start, 2)
        del network
        keras.backend.clear_session()
        if getattr(args, "train", False):
            for key, value in train_and_export(name, size, args.images).items():
                results[f"{name}.{key}"] = value
            keras.backend.clear_session()
    return results
